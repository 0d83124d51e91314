"""Automatic precision: bf16 only where the hardware has it natively, and the choice is logged."""

from __future__ import annotations

import logging

import pytest
import torch

from bts_monai.model import precision


@pytest.fixture
def cpu_only(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return monkeypatch


def _cpu(monkeypatch: pytest.MonkeyPatch, capability: str, flags: tuple[str, ...]) -> None:
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: flags)


def test_avx2_only_cpu_trains_in_fp32(cpu_only, caplog) -> None:
    _cpu(cpu_only, "AVX2", ())
    with caplog.at_level(logging.INFO, logger="bts_monai.model.precision"):
        assert precision.auto_precision("cpu") == "32-true"
    assert "32-true" in caplog.text and "AVX2" in caplog.text


def test_avx512_without_bf16_extension_is_fp32(cpu_only) -> None:
    _cpu(cpu_only, "AVX512", ())
    assert precision.auto_precision("auto") == "32-true"


@pytest.mark.parametrize("flags", [("avx512_bf16",), ("amx_bf16", "avx512_bf16"), ("bf16",)])
def test_native_bf16_cpu_uses_bf16(cpu_only, caplog, flags) -> None:
    _cpu(cpu_only, "AVX512", flags)
    with caplog.at_level(logging.INFO, logger="bts_monai.model.precision"):
        assert precision.auto_precision("cpu") == "bf16-mixed"
    assert "bf16-mixed" in caplog.text


def test_amx_capability_alone_is_enough(cpu_only) -> None:
    _cpu(cpu_only, "AMX", ())
    assert precision.cpu_has_native_bf16()


def test_gpu_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "FakeGPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert precision.auto_precision("gpu") == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert precision.auto_precision("auto") == "16-mixed"


def test_explicit_precision_wins(cpu_only) -> None:
    _cpu(cpu_only, "AVX2", ())
    assert precision.resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"
    assert precision.resolve_precision(None, "cpu") == "32-true"
    assert precision.resolve_precision("auto", "cpu") == "32-true"


def test_flags_of_this_machine_are_readable() -> None:
    flags = precision.cpu_bf16_flags()
    assert isinstance(flags, tuple)
    assert all(f in ("avx512_bf16", "amx_bf16", "avx_ne_convert", "bf16") for f in flags)
