"""What every benchmark prints beside its figures: the machine, the libraries, the settings that matter."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or what platform knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_flags(wanted: tuple[str, ...] = ("avx512_bf16", "amx_bf16", "amx_tile", "avx512f", "avx2")) -> list[str]:
    """Which of ``wanted`` the CPU advertises."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in wanted if f in have]
    except OSError:
        pass
    return []


def rss_mb() -> float:
    """Resident memory of this process in MB (Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def describe() -> str:
    """One line: CPU, its torch capability and flags, usable cores, library versions, malloc settings."""
    import monai
    import torch

    malloc = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"CPU: {cpu_model()} | torch cpu capability: {torch.backends.cpu.get_cpu_capability()} | "
        f"flags: {' '.join(cpu_flags()) or '-'} | cores usable: {cores} | torch threads: {torch.get_num_threads()} | "
        f"torch {torch.__version__}, monai {monai.__version__}"
        + (f" | {' '.join(f'{k}={v}' for k, v in sorted(malloc.items()))}" if malloc else "")
    )
