"""Training samples/s with 1 and 2 DDP processes on this CPU (gloo), through the project's Lightning training.

Each setting is a fresh ``torchrun --standalone --nproc_per_node P`` launch (the documented torchrun
route) of this script's worker: ``BratsSegModule`` + ``BratsDataModule`` with the network and data
settings of ``configs/demo.yaml`` (3D U-Net 8/16/32, 32^3 patches, batch 2 cases x 4 patches,
``cache: memory``, no loader workers) on a synthetic sample, ``Trainer(strategy="ddp",
accelerator="cpu", precision="32-true")``, no validation, checkpoints or loggers. Every process
counts the patches it trains after the warm-up steps and times them; samples/s is their sum over
the longest process's time (the gradient all-reduce keeps the processes in step).

Settings, in alternating rounds so that each sees the same machine load:

* ``1 proc x 1 thread``: the baseline (DDP with one process);
* ``2 proc x 1 thread``: two DDP processes, gloo all-reduce;
* ``1 proc x 2 threads``: what the same two cores give without DDP (intra-op threads).

    .venv/bin/python benchmarks/bench_ddp.py                    # 2 rounds, 30 timed steps (~4 min here)
    .venv/bin/python benchmarks/bench_ddp.py --rounds 1 --steps 5 --warmup 2   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

REPO = Path(__file__).resolve().parents[1]
SETTINGS = ((1, 1), (2, 1), (1, 2))  # (processes, threads per process); the first is the baseline


class StepTimer:
    """Lightning callback (built lazily: the parent process never imports Lightning): counts and
    times the patches this process trains after ``warmup`` steps."""

    @staticmethod
    def make(warmup: int) -> Any:
        import pytorch_lightning as pl

        class _Timer(pl.Callback):
            def __init__(self) -> None:
                self.t0: float | None = None
                self.t1: float | None = None
                self.samples = 0

            def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
                if trainer.global_step == warmup:
                    self.t0 = time.perf_counter()
                elif trainer.global_step > warmup:
                    self.samples += int(batch["image"].shape[0])
                    self.t1 = time.perf_counter()

        return _Timer()


def worker(args: argparse.Namespace) -> None:
    """One process of a DDP launch: train ``warmup + steps`` steps and write this rank's count and time."""
    import pytorch_lightning as pl
    import torch
    import yaml

    from bts_monai.data.datamodule import BratsDataModule
    from bts_monai.model.module import BratsSegModule, build_network

    warnings.filterwarnings("ignore")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    config = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    data = {k: v for k, v in config["data"].items() if k not in ("synthetic", "data_root")}
    data.update(data_root=args.data, split_file=str(Path(args.data).parent / "split.json"), val_fraction=0.1)
    pl.seed_everything(0, verbose=False)
    net = config["model"]["net"]
    module = BratsSegModule(build_network(net["class_path"], net["init_args"]), sw_batch_size=4)
    timer = StepTimer.make(args.warmup)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
        strategy="ddp",
        precision="32-true",
        max_steps=args.warmup + args.steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        default_root_dir=str(Path(args.out).parent),
    )
    trainer.fit(module, BratsDataModule(**data))
    result = {
        "rank": trainer.global_rank,
        "world": trainer.world_size,
        "threads": torch.get_num_threads(),
        "backend": getattr(trainer.strategy, "process_group_backend", None),
        "samples": timer.samples,
        "seconds": (timer.t1 or 0.0) - (timer.t0 or 0.0),
    }
    Path(f"{args.out}.rank{trainer.global_rank}").write_text(json.dumps(result))


def launch(procs: int, threads: int, args: argparse.Namespace, work: Path, tag: str) -> dict[str, Any]:
    """One torchrun launch of ``procs`` workers with ``threads`` threads each; the summed result."""
    out = work / f"{tag}.json"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
        __file__, "--worker", "--out", str(out), "--data", str(args.data),
        "--steps", str(args.steps), "--warmup", str(args.warmup),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0:
        raise SystemExit(f"{procs} x {threads}: torchrun failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    ranks = [json.loads(Path(f"{out}.rank{r}").read_text()) for r in range(procs)]
    samples = sum(r["samples"] for r in ranks)
    seconds = max(r["seconds"] for r in ranks)
    return {"samples": samples, "seconds": seconds, "rate": samples / seconds, "backend": ranks[0]["backend"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of the three settings")
    p.add_argument("--steps", type=int, default=30, help="timed training steps per launch")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--timeout", type=float, default=600, help="seconds before a launch is abandoned")
    p.add_argument("--data", type=Path, help="synthetic sample folder (default: a temporary one)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return

    import torch
    from _env import describe

    work = Path(tempfile.mkdtemp(prefix="bts_bench_ddp_"))
    if args.data is None:
        from bts_monai.data.synthetic import make_brats_dataset

        # The demo config's sample: 64x64x48 cases; 9 of them leave 8 to train (4 per process).
        args.data = make_brats_dataset(work / "brats2021", n_cases=9, shape=(64, 64, 48))
    print(describe())
    print(f"torch cpu capability: {torch.backends.cpu.get_cpu_capability()} | load average before: "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"configs/demo.yaml network and data, {args.steps} timed steps after {args.warmup}, {args.rounds} rounds")
    results: dict[tuple[int, int], list[float]] = {s: [] for s in SETTINGS}
    for rnd in range(args.rounds):
        for procs, threads in SETTINGS:
            r = launch(procs, threads, args, work, f"r{rnd}_{procs}x{threads}")
            results[(procs, threads)].append(r["rate"])
            base = results[SETTINGS[0]][rnd]
            print(
                f"round {rnd + 1}: {procs} proc x {threads} thread{'s' if threads > 1 else ''}: "
                f"{r['rate']:.2f} samples/s ({r['samples']} patches in {r['seconds']:.1f} s, {r['backend']}) "
                f"-> {r['rate'] / base:.2f}x the 1-process baseline of this round",
                flush=True,
            )
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    base = statistics.median(results[SETTINGS[0]])
    for (procs, threads), rates in results.items():
        print(
            f"median {procs} proc x {threads} thread(s): {statistics.median(rates):.2f} samples/s, "
            f"{statistics.median(rates) / base:.2f}x (rounds: {', '.join(f'{x:.2f}' for x in rates)})"
        )


if __name__ == "__main__":
    main()
