"""Training step time per sample on this CPU, fp32 vs bf16 autocast, for the default 3D network.

The network is ``model.net`` of ``configs/brats21.yaml`` (DynUNet, filters 32..320, deep
supervision), the loss DiceCE with sigmoid over the deep-supervision heads, the optimiser SGD with
Nesterov momentum: one step = forward, loss, backward, optimiser step, on random 4-channel
patches. Both precisions run in this process on fresh copies of the same initial weights.

    .venv/bin/python benchmarks/bench_train_step.py                 # 128^3, batch 1, 3 timed steps
    .venv/bin/python benchmarks/bench_train_step.py --quick         # 64^3, 1 timed step: a smoke test
"""

from __future__ import annotations

import argparse
import copy
import importlib
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _env import cpu_model, describe  # noqa: E402
from monai.losses import DeepSupervisionLoss, DiceCELoss  # noqa: E402
from torch import nn  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FALLBACK_NET: dict[str, Any] = {
    "class_path": "monai.networks.nets.DynUNet",
    "init_args": {
        "spatial_dims": 3,
        "in_channels": 4,
        "out_channels": 3,
        "kernel_size": [3, 3, 3, 3, 3, 3],
        "strides": [1, 2, 2, 2, 2, 2],
        "upsample_kernel_size": [2, 2, 2, 2, 2],
        "filters": [32, 64, 128, 256, 320, 320],
        "norm_name": "INSTANCE",
        "act_name": ["LEAKYRELU", {"negative_slope": 0.01, "inplace": True}],
        "deep_supervision": True,
        "deep_supr_num": 3,
        "res_block": False,
    },
}


def net_spec(config: Path | None) -> tuple[dict[str, Any], str]:
    """``model.net`` of a LightningCLI config (class_path + init_args), or the fallback DynUNet."""
    if config is not None and config.is_file():
        import yaml

        spec = yaml.safe_load(config.read_text())["model"]["net"]
        return spec, str(config.relative_to(REPO) if config.is_relative_to(REPO) else config)
    return FALLBACK_NET, "built-in DynUNet (configs/brats21.yaml not found)"


def build(spec: dict[str, Any]) -> nn.Module:
    """Instantiate a ``class_path``/``init_args`` network."""
    module, _, name = spec["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    args = dict(spec.get("init_args", {}))
    if isinstance(args.get("act_name"), list):  # YAML list -> MONAI's (name, kwargs) tuple
        args["act_name"] = tuple(args["act_name"])
    return cls(**args)


def heads(out: torch.Tensor | list | tuple) -> list[torch.Tensor]:
    """Network output -> list of full-resolution heads (DynUNet stacks them on dim 1 in training)."""
    if isinstance(out, (list, tuple)):
        return list(out)
    return list(torch.unbind(out, dim=1)) if out.ndim == 6 else [out]


def time_steps(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool, warmup: int, steps: int
) -> tuple[list[float], float]:
    """Seconds of each timed step, and the last loss."""
    loss_fn = DeepSupervisionLoss(DiceCELoss(sigmoid=True), weight_mode="exp")
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True, weight_decay=3e-5)
    net.train()
    times, loss = [], torch.tensor(float("nan"))
    for i in range(warmup + steps):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = heads(net(x))
        loss = loss_fn([o.float() for o in out], y)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return times, float(loss.detach())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=REPO / "configs" / "brats21.yaml")
    p.add_argument("--roi", type=int, default=128)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=3, help="timed steps per precision")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true", help="64^3, one timed step")
    args = p.parse_args()
    if args.quick:
        args.roi, args.steps, args.warmup = 64, 1, 1
    if args.threads:
        torch.set_num_threads(args.threads)

    spec, source = net_spec(args.config)
    torch.manual_seed(0)
    net0 = build(spec)
    n_params = sum(p.numel() for p in net0.parameters())
    cin = spec["init_args"].get("in_channels", 4)
    cout = spec["init_args"].get("out_channels", 3)
    x = torch.randn(args.batch, cin, *(args.roi,) * 3)
    y = (torch.rand(args.batch, cout, *(args.roi,) * 3) > 0.9).float()
    print(describe())
    print(f"network: {spec['class_path']} from {source}, {n_params / 1e6:.1f} M parameters")
    print(f"patch {args.roi}^3, batch {args.batch}, {args.warmup} warm-up + {args.steps} timed steps per precision")
    tag = f"[{torch.backends.cpu.get_cpu_capability()}, {cpu_model()}, {torch.get_num_threads()} threads]"
    per_sample = {}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        times, loss = time_steps(copy.deepcopy(net0), x, y, bf16, args.warmup, args.steps)
        per_sample[name] = statistics.median(times) / args.batch
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        steps = ", ".join(f"{t:.2f}" for t in times)
        print(
            f"{name}: {per_sample[name]:.2f} s/sample (median of {len(times)}; steps {steps} s; "
            f"loss {loss:.3f}; peak RSS so far {peak:.0f} MB) {tag}"
        )
    print(f"RATIO fp32/bf16 step time: {per_sample['fp32'] / per_sample['bf16']:.2f}x {tag}")


if __name__ == "__main__":
    main()
