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
   write the .nii.gz.

    python benchmarks/gpu_bench.py                         # on the GPU machine (a few minutes)
    python benchmarks/gpu_bench.py --device cpu --quick    # smoke test anywhere (~1-2 minutes)
"""

from __future__ import annotations

import argparse
import os
import platform
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
    """Batches from ``loader``, epoch after epoch."""
    while True:
        yield from loader


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
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="small cases and patches, few steps: a smoke test")
    p.add_argument("--cases", type=int, default=4)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=10, help="timed training steps per measurement")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="loader/preprocess processes")
    p.add_argument("--config", type=Path, default=REPO / "configs" / "brats21.yaml")
    p.add_argument("--workdir", type=Path, help="keep cases and cache here (default: a temporary folder)")
    args = p.parse_args()
    device = torch.device(args.device)
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

    spec, source = net_spec(args.config)
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
