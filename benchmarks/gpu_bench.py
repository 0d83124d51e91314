"""GPU figures in a few minutes: training samples/s at 128^3 and end-to-end inference seconds per BraTS case.

Self-contained: synthetic BraTS-sized cases (240x240x155, four modalities and a label, written as
.nii.gz) stand in for a dataset, so it runs on a freshly lent machine with nothing downloaded.

1. preprocessing into the cache (``bts_monai.data.cache``), seconds per case;
2. loader: training samples/s the DataLoader delivers from the cache (128^3, augmentation, W workers);
3. model: training samples/s of the default network (``configs/brats21.yaml``) on batches already
   on the device, bf16 autocast (fp16 + GradScaler where bf16 is missing) and fp32;
4. training end to end: loader + step together, samples/s;
5. inference end to end, seconds per case: read the four .nii.gz, preprocess, sliding-window
   prediction (128^3, overlap 0.5, gaussian), regions -> labels, back to the original grid,
   write the .nii.gz;
6. with ``--devices N``: DDP training end to end (torch DistributedDataParallel, one process per
   GPU, NCCL; each process loads its DistributedSampler share of the cache), samples/s summed over
   the processes with 1 and with N processes, the scaling ratio and the efficiency (ratio / N).

    python benchmarks/gpu_bench.py                         # on the GPU machine (a few minutes)
    python benchmarks/gpu_bench.py --devices 4             # and DDP over 4 GPUs
    python benchmarks/gpu_bench.py --devices 4 --ddp-only  # preprocessing and the DDP section only
    python benchmarks/gpu_bench.py --device cpu --quick    # smoke test anywhere (~1-2 minutes)
    python benchmarks/gpu_bench.py --device cpu --quick --devices 2 --ddp-only   # DDP code path on CPU (gloo)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _env import cpu_model  # noqa: E402
from bench_train_step import build, heads, net_spec  # noqa: E402
from monai.data import DataLoader  # noqa: E402
from monai.inferers import sliding_window_inference  # noqa: E402
from monai.losses import DeepSupervisionLoss, DiceCELoss  # noqa: E402

from bts_monai.data.cache import (  # noqa: E402
    CacheSettings,
    PreprocessedDataset,
    build_cache,
    preprocessed_train_transforms,
    to_original_grid,
)
from bts_monai.data.discovery import BRATS_MODALITIES, discover  # noqa: E402
from bts_monai.data.synthetic import make_brats_case  # noqa: E402
from bts_monai.data.transforms import deterministic_transforms  # noqa: E402
from bts_monai.labels import get_scheme  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
warnings.filterwarnings("ignore", message="Num foregrounds 0")


def device_name(device: torch.device) -> str:
    """GPU model (or CPU model) and the library versions."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        what = f"GPU: {props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    else:
        what = f"CPU: {cpu_model()} ({torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads)"
    return f"{what} | torch {torch.__version__} | python {platform.python_version()}"


def sync(device: torch.device) -> None:
    """Wait for the device, so wall-clock times are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_cases(root: Path, n: int, shape: tuple[int, int, int], workers: int) -> list[dict]:
    """``n`` synthetic BraTS-like cases under ``root`` (in parallel), as datalist entries."""
    with ProcessPoolExecutor(max_workers=max(1, min(workers, n))) as pool:
        list(pool.map(make_brats_case, [root] * n, [f"BraTS2021_{i:05d}" for i in range(n)], [shape] * n, range(n)))
    return discover(root)


def amp_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the device has it, else fp16."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def train_steps(net, batches, device, dtype: torch.dtype | None, steps: int, warmup: int) -> float:
    """Samples/s over ``steps`` timed steps on batches from the iterator ``batches``."""
    loss_fn = DeepSupervisionLoss(DiceCELoss(sigmoid=True), weight_mode="exp")
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    net.train()
    n, t0 = 0, 0.0
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            t0, n = time.perf_counter(), 0
        batch = next(batches)
        x = batch["image"].to(device, non_blocking=True)
        y = batch["label"].to(device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = heads(net(x))
        loss = loss_fn([o.float() for o in out], y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        n += x.shape[0]
    sync(device)
    return n / (time.perf_counter() - t0)


def forever(loader):
    """Batches from ``loader``, epoch after epoch (a distributed sampler reshuffled each epoch)."""
    epoch = 0
    while True:
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ddp_rank(rank: int, world: int, port: int, device_type: str, cache, spec: dict, opts: dict, out: str) -> None:
    """One DDP process (``torch.multiprocessing.spawn``): train on its share, write its samples/s."""
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DistributedSampler

    warnings.filterwarnings("ignore", message="Num foregrounds 0")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    backend = "nccl" if device_type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend, rank=rank, world_size=world)
    try:
        if device_type == "cuda":
            torch.cuda.set_device(rank)
            torch.backends.cudnn.benchmark = True
            device = torch.device("cuda", rank)
        else:
            torch.set_num_threads(max(1, opts["cpu_threads"] // world))
            device = torch.device("cpu")
        roi = opts["roi"]
        ds = PreprocessedDataset(cache, None, preprocessed_train_transforms((roi,) * 3, num_samples=1))
        sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=0)
        workers = max(1, opts["workers"] // world)
        loader = DataLoader(
            ds, batch_size=opts["batch"], sampler=sampler, num_workers=workers, persistent_workers=True,
            pin_memory=device.type == "cuda",
        )
        torch.manual_seed(0)  # the same initial weights everywhere (DDP also broadcasts rank 0's)
        net = DistributedDataParallel(build(spec).to(device), device_ids=[rank] if device.type == "cuda" else None)
        dtype = amp_dtype(device) if opts["amp"] else None
        rate = train_steps(net, forever(loader), device, dtype, opts["steps"], opts["warmup"])
        Path(f"{out}.rank{rank}").write_text(json.dumps({"rate": rate, "backend": backend}))
    finally:
        torch.distributed.destroy_process_group()


def ddp_training(world: int, device_type: str, cache, spec: dict, opts: dict, work: Path) -> tuple[float, str]:
    """Samples/s of ``world`` DDP processes together (the sum of theirs: the all-reduce keeps them in step)."""
    out = work / f"ddp{world}"
    torch.multiprocessing.spawn(
        ddp_rank, args=(world, _free_port(), device_type, cache, spec, opts, str(out)), nprocs=world, join=True
    )
    ranks = [json.loads(Path(f"{out}.rank{r}").read_text()) for r in range(world)]
    return sum(r["rate"] for r in ranks), ranks[0]["backend"]


def check_devices(requested: int, device: torch.device) -> str | None:
    """Why ``--devices requested`` cannot run on ``device`` (None when it can)."""
    if requested < 2:
        return None
    if device.type == "cuda" and torch.cuda.device_count() < requested:
        return f"--devices {requested} needs {requested} CUDA GPUs; torch sees {torch.cuda.device_count()} here"
    if device.type not in ("cuda", "cpu"):
        return f"--devices runs DDP on cuda (or on cpu with gloo, as a smoke test), not on {device.type}"
    return None


def infer_case(net, entry: dict, out_dir: Path, device, roi: int, dtype: torch.dtype | None, sw_batch: int) -> float:
    """Seconds for one case: .nii.gz in -> label .nii.gz out on the original grid."""
    scheme = get_scheme("brats2021")
    sync(device)
    t = time.perf_counter()
    d = deterministic_transforms(scheme, with_label=False)({"image": [entry[m] for m in BRATS_MODALITIES]})
    image = d["image"]
    x = image.as_tensor()[None].to(device)
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        logits = sliding_window_inference(x, (roi,) * 3, sw_batch, net, overlap=0.5, mode="gaussian")
    regions = (torch.sigmoid(logits.float())[0] > 0.5).cpu().numpy()
    crop = next(op for op in image.applied_operations if op["class"] == "CropForeground")
    meta = {
        "oriented_shape": list(crop["orig_size"]),
        "foreground_start_coord": list(d["foreground_start_coord"]),
        "foreground_end_coord": list(d["foreground_end_coord"]),
        "original_affine": np.asarray(image.meta["original_affine"]),
    }
    label = scheme.from_regions(to_original_grid(regions, meta))
    if label.shape != nib.load(entry["flair"]).shape:
        raise RuntimeError(f"prediction {label.shape} is not on the source grid")
    affine = np.asarray(image.meta["original_affine"])
    nib.save(nib.Nifti1Image(label, affine), out_dir / f"{entry['case_id']}_pred.nii.gz")
    sync(device)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", help="cuda or cpu (default: cuda where torch sees a GPU, else cpu)")
    p.add_argument("--devices", type=int, default=1, help="N > 1: also DDP training over N GPUs (section 6)")
    p.add_argument("--ddp-only", action="store_true", help="with --devices: skip sections 2-5")
    p.add_argument("--quick", action="store_true", help="small cases and patches, few steps: a smoke test")
    p.add_argument("--cases", type=int, default=4)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=10, help="timed training steps per measurement")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="loader/preprocess processes")
    p.add_argument("--config", type=Path, default=REPO / "configs" / "brats21.yaml")
    p.add_argument("--workdir", type=Path, help="keep cases and cache here (default: a temporary folder)")
    args = p.parse_args()
    if args.devices > 1 and args.device is None and not torch.cuda.is_available():
        # No GPU here: a multi-GPU figure cannot be measured; say so instead of a traceback.
        # (--device cpu --devices N runs the same DDP code over gloo, as a smoke test.)
        print(
            f"gpu_bench: --devices {args.devices} needs {args.devices} CUDA GPUs and torch sees none on this "
            "machine (torch.cuda.is_available() is False); nothing measured. "
            f"For the DDP code path on CPU (gloo): --device cpu --devices {args.devices} --quick",
            file=sys.stderr,
        )
        raise SystemExit(2)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    problem = check_devices(args.devices, device)
    if problem:
        print(f"gpu_bench: {problem}; nothing measured", file=sys.stderr)
        raise SystemExit(2)
    shape, roi, warmup = (240, 240, 155), 128, 3
    if args.quick:
        # 64^3 is the smallest patch the 5-level DynUNet trains on (instance norm needs a 2^3 bottleneck).
        shape, roi, warmup, args.steps, args.cases = (64, 64, 48), 64, 0, 1, 2
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bts_gpu_bench_"))
    tag = f"[{device_name(device)}]"
    print(tag)
    print(f"synthetic cases {shape}, patch {roi}^3, batch {args.batch}, {args.workers} workers", flush=True)

    t = time.perf_counter()
    entries = make_cases(work / "data", args.cases, shape, args.workers)
    print(f"made {len(entries)} synthetic cases in {time.perf_counter() - t:.1f} s", flush=True)
    t = time.perf_counter()
    cache = build_cache(entries, work / "cache", CacheSettings(), workers=args.workers, progress=False)
    t_pre = (time.perf_counter() - t) / len(entries)
    print(f"preprocessing: {t_pre:.2f} s/case wall with {args.workers} processes {tag}", flush=True)

    spec, source = net_spec(args.config)
    if args.devices > 1:
        opts = {
            "roi": roi, "batch": args.batch, "workers": args.workers, "steps": args.steps, "warmup": warmup,
            "amp": True, "cpu_threads": torch.get_num_threads(),
        }  # fmt: skip
        rates = {}
        for world in (1, args.devices):
            rates[world], backend = ddp_training(world, device.type, cache, spec, opts, work)
            print(
                f"DDP training end to end ({source}, {world} process{'es' if world > 1 else ''}, {backend}, "
                f"{str(amp_dtype(device)).replace('torch.', '')}): {rates[world]:.2f} samples/s {tag}",
                flush=True,
            )
        ratio = rates[args.devices] / rates[1]
        print(
            f"DDP scaling: {args.devices} processes give {ratio:.2f}x the samples/s of 1 "
            f"(efficiency {ratio / args.devices:.0%}) {tag}",
            flush=True,
        )
        if args.ddp_only:
            return

    ds = PreprocessedDataset(cache, None, preprocessed_train_transforms((roi,) * 3, num_samples=1))
    loader = DataLoader(
        ds,
        batch_size=args.batch,
        shuffle=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
        pin_memory=device.type == "cuda",
    )
    batches = forever(loader)
    for _ in range(warmup):
        next(batches)
    t, n = time.perf_counter(), 0
    for _ in range(args.steps):
        n += next(batches)["image"].shape[0]
    print(f"loader: {n / (time.perf_counter() - t):.1f} samples/s from the cache {tag}", flush=True)

    torch.manual_seed(0)
    net = build(spec).to(device)
    fixed = next(batches)
    fixed = {k: fixed[k].to(device) for k in ("image", "label")}
    dtype = amp_dtype(device)
    results = {}
    for name, dt in ((str(dtype).replace("torch.", ""), dtype), ("fp32", None)):
        results[name] = train_steps(net, iter(lambda: fixed, None), device, dt, args.steps, warmup)
        print(f"model ({source}, {name}): {results[name]:.2f} samples/s, data on device {tag}", flush=True)
    e2e = train_steps(net, batches, device, dtype, args.steps, warmup)
    print(f"training end to end (loader + {str(dtype).replace('torch.', '')} step): {e2e:.2f} samples/s {tag}")

    net.eval()
    out_dir = work / "pred"
    out_dir.mkdir(exist_ok=True)
    times = [infer_case(net, e, out_dir, device, roi, dtype, 4) for e in entries]
    steady = times[1:] or times
    print(
        f"inference end to end: {statistics.mean(steady):.2f} s/case (mean of {len(steady)} after a warm-up case; "
        f"first {times[0]:.2f} s) {tag}"
    )


if __name__ == "__main__":
    main()
