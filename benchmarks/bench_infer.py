"""bts-infer against the MONAI reference pipeline: wall time, peak RSS, their ratios, Dice agreement.

Both run as fresh processes on the same BraTS case with the same weights (one checkpoint file),
alternating, so both see the same load from whatever else runs on the machine; wall time is end
to end (interpreter start, imports, loading the checkpoint and the four modalities, inference,
writing the segmentation) and peak RSS is the process's own (``wait4``).

The reference is the textbook MONAI chain: LoadImaged, EnsureChannelFirstd, Orientationd (RAS),
NormalizeIntensityd (non-zero, channel-wise), SlidingWindowInferer (the checkpoint's roi, 128 for
the DynUNet; overlap 0.5, gaussian, batch 1) on the whole volume, sigmoid, Invertd, threshold 0.5,
SaveImaged; for a checkpoint trained at another voxel size, Spacingd follows Orientationd.

Weights: ``--ckpt`` (a trained checkpoint of the DynUNet in configs/brats21.yaml), or, without
one, that DynUNet with random weights whose 1x1x1 output layer is fitted (logistic regression,
seconds) to the tumour of another real case, so the segmentation is tumour-shaped rather than
noise and the Dice agreement means something.

    .venv/bin/python benchmarks/bench_infer.py                                # $BTS_REAL_DATA/brats2018
    .venv/bin/python benchmarks/bench_infer.py --ckpt runs/x/last.ckpt --repeats 2 --precision 32 bf16
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _env import describe  # noqa: E402

from bts_monai.data.discovery import BRATS_MODALITIES  # noqa: E402
from bts_monai.labels import get_scheme  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
ROI = (128, 128, 128)
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


# ---- weights ---------------------------------------------------------------------------------------
def _dynunet_spec() -> dict[str, Any]:
    import yaml

    cfg = yaml.safe_load((REPO / "configs" / "brats21.yaml").read_text())
    return cfg["model"]["net"]


def _fit_head(net: torch.nn.Module, fit_case: Path, scheme_name: str) -> None:
    """Fit DynUNet's output 1x1x1 convolution to a real case's regions on its random features."""
    from bts_monai.data.transforms import deterministic_transforms

    t = deterministic_transforms(scheme_name, "nifti", "zscore", "regions")
    files = {m: str(next(fit_case.glob(f"*_{m}.nii.gz"))) for m in BRATS_MODALITIES}
    d = t({"image": [files[m] for m in BRATS_MODALITIES], "label": str(next(fit_case.glob("*_seg.nii.gz")))})
    image, target = d["image"].as_tensor(), d["label"].as_tensor()
    # One window centred on the tumour (padded where the box is smaller).
    centre = [int(i.float().mean()) for i in torch.nonzero(target[1] > 0, as_tuple=True)]
    sl = []
    for c, size, r in zip(centre, image.shape[1:], ROI):
        start = max(0, min(c - r // 2, size - r))
        sl.append(slice(start, start + r))
    x, y = image[:, sl[0], sl[1], sl[2]], target[:, sl[0], sl[1], sl[2]]
    pad = [p for s in reversed(x.shape[1:]) for p in (0, max(0, ROI[0] - s))]
    x, y = torch.nn.functional.pad(x, pad), torch.nn.functional.pad(y, pad)
    feats: dict[str, torch.Tensor] = {}
    hook = net.output_block.register_forward_pre_hook(lambda m, a: feats.setdefault("f", a[0].detach()))
    with torch.inference_mode():
        net(x[None])
    hook.remove()
    f = feats["f"][0].reshape(feats["f"].shape[1], -1).T.clone()
    yy = y.reshape(y.shape[0], -1).T.float()
    rng = np.random.default_rng(0)
    tumour = np.nonzero(yy[:, 1].numpy() > 0)[0]
    other = np.nonzero(yy[:, 1].numpy() == 0)[0]
    idx = np.concatenate([rng.choice(tumour, min(len(tumour), 60000), replace=False), rng.choice(other, 120000)])
    f, yy = f[idx], yy[idx]
    mean, std = f.mean(0), f.std(0) + 1e-6
    lin = torch.nn.Linear(f.shape[1], yy.shape[1])
    opt = torch.optim.Adam(lin.parameters(), lr=0.05)
    fz = (f - mean) / std
    for _ in range(300):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(lin(fz), yy)
        loss.backward()
        opt.step()
    conv = net.output_block.conv.conv
    with torch.no_grad():
        w = lin.weight / std  # fold the feature standardisation into the convolution
        conv.weight.copy_(w.reshape(conv.weight.shape))
        conv.bias.copy_(lin.bias - (w * mean).sum(1))
    print(f"fitted the output layer on {fit_case.name} (BCE {loss.item():.3f})", flush=True)


def make_checkpoint(path: Path, fit_case: Path) -> Path:
    """A project checkpoint of configs/brats21.yaml's DynUNet, random weights + fitted output layer."""
    from bts_monai.model.module import BratsSegModule, build_network, default_data_config

    spec = _dynunet_spec()
    torch.manual_seed(0)
    net = build_network(spec["class_path"], spec["init_args"]).eval()
    _fit_head(net, fit_case, "brats2021")
    module = BratsSegModule(net, data_config=default_data_config(3) | {"roi_size": list(ROI), "dataset": "brats2018"})
    ckpt: dict[str, Any] = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return path


# ---- the MONAI reference pipeline (run as a worker process) ----------------------------------------
def reference_worker(case: Path, ckpt: Path, out_dir: Path, result: Path) -> None:
    """LoadImaged -> ... -> SaveImaged, timed; writes its timings as JSON to ``result``."""
    from monai.data import MetaTensor
    from monai.inferers import SlidingWindowInferer
    from monai.transforms import (
        Activationsd,
        AsDiscreted,
        Compose,
        EnsureChannelFirstd,
        Invertd,
        Lambdad,
        LoadImaged,
        NormalizeIntensityd,
        Orientationd,
        SaveImaged,
        Spacingd,
    )

    from bts_monai.model.checkpoint import load_checkpoint

    t0 = time.perf_counter()
    net, cfg = load_checkpoint(ckpt)
    scheme = get_scheme(cfg["scheme"])
    steps = [
        LoadImaged(keys="image"),
        EnsureChannelFirstd(keys="image"),
        Orientationd(keys="image", axcodes="RAS", labels=RAS_LABELS),
    ]
    if cfg.get("spacing"):
        steps.append(Spacingd(keys="image", pixdim=cfg["spacing"], mode="bilinear"))
    pre = Compose([*steps, NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True)])
    post = Compose(
        [
            Activationsd(keys="pred", sigmoid=True),
            Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True),
            AsDiscreted(keys="pred", threshold=0.5),
            Lambdad(
                keys="pred",
                func=lambda p: MetaTensor(torch.from_numpy(scheme.from_regions(p.numpy() > 0))[None], meta=p.meta),
            ),
            SaveImaged(
                keys="pred",
                output_dir=str(out_dir),
                output_postfix="seg",
                output_dtype=np.uint8,
                separate_folder=False,
                resample=False,
                print_log=False,
            ),
        ]
    )
    inferer = SlidingWindowInferer(roi_size=cfg["roi_size"], sw_batch_size=1, overlap=0.5, mode="gaussian")
    t1 = time.perf_counter()
    data = pre({"image": [str(next(case.glob(f"*_{m}.nii.gz"))) for m in cfg["modalities"]]})
    t2 = time.perf_counter()
    with torch.no_grad():
        data["pred"] = inferer(data["image"][None], net)[0]
    t3 = time.perf_counter()
    post(data)
    t4 = time.perf_counter()
    result.write_text(
        json.dumps({"model_load_s": t1 - t0, "load_s": t2 - t1, "infer_s": t3 - t2, "post_save_s": t4 - t3})
    )


# ---- running and comparing -------------------------------------------------------------------------
def _run(cmd: list[str]) -> tuple[float, float, int, float]:
    """(wall seconds, peak RSS MB, exit status, CPU seconds) of a child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        print(err[-3000:], file=sys.stderr)
    return wall, usage.ru_maxrss / 1024, proc.returncode, usage.ru_utime + usage.ru_stime


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    sa, sb = int(a.sum()), int(b.sum())
    return 1.0 if sa + sb == 0 else 2.0 * int((a & b).sum()) / (sa + sb)


def _agreement(ours: Path, ref: Path, scheme_name: str) -> dict[str, float]:
    import nibabel as nib

    scheme = get_scheme(scheme_name)
    a = scheme.to_regions(np.asarray(nib.load(ours).dataobj))
    b = scheme.to_regions(np.asarray(nib.load(ref).dataobj))
    return {name: _dice(a[i], b[i]) for i, name in enumerate(scheme.region_names)}


def main() -> None:
    default_data = Path(os.environ.get("BTS_REAL_DATA", "/work/shared/data")) / "brats2018"
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", type=Path, default=default_data / "Brats18_CBICA_ABM_1", help="default: %(default)s")
    p.add_argument("--ckpt", type=Path, help="a trained checkpoint (default: the fitted-head DynUNet, see above)")
    p.add_argument("--fit-case", type=Path, default=default_data / "Brats18_2013_11_1", help="for the fitted head")
    p.add_argument("--repeats", type=int, default=1, help="alternating rounds (default %(default)s)")
    p.add_argument("--precision", nargs="+", default=["32"], choices=["32", "bf16"], help="bts-infer precisions")
    p.add_argument("--workdir", type=Path, help="keep checkpoint and outputs here (default: a temporary folder)")
    p.add_argument("--reference-worker", nargs=4, metavar=("CASE", "CKPT", "OUT_DIR", "RESULT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    if args.reference_worker:
        case, ckpt, out_dir, result = (Path(a) for a in args.reference_worker)
        reference_worker(case, ckpt, out_dir, result)
        return

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bts_bench_infer_"))
    work.mkdir(parents=True, exist_ok=True)
    env_line = describe()
    print(env_line, flush=True)
    if args.ckpt:
        ckpt, weights = args.ckpt, f"checkpoint {args.ckpt}"
    else:
        ckpt = work / "dynunet_fitted_head.ckpt"
        if not ckpt.exists():
            make_checkpoint(ckpt, args.fit_case)
        weights = f"configs/brats21.yaml DynUNet, random weights, output layer fitted on {args.fit_case.name}"
    print(f"case {args.case.name}; weights: {weights}", flush=True)
    py = sys.executable
    rows: list[dict[str, Any]] = []
    for r in range(args.repeats):
        for prec in args.precision:
            out = work / f"ours_{prec}_{r}.nii.gz"
            cmd = [py, "-m", "bts_monai.cli.infer", str(args.case), "--ckpt", str(ckpt), "-o", str(out), "-q"]
            rows.append(_timed(f"bts-infer --precision {prec}", [*cmd, "--precision", prec], out))
        ref_dir = work / f"reference_{r}"
        ref_dir.mkdir(exist_ok=True)
        result = work / f"reference_{r}.json"
        cmd = [py, __file__, "--reference-worker", str(args.case), str(ckpt), str(ref_dir), str(result)]
        row = _timed(REFERENCE, cmd, None, lambda d=ref_dir: next(d.glob("*_seg.nii.gz"), None))
        row["parts"] = json.loads(result.read_text()) if result.exists() else {}
        rows.append(row)
    print()
    print(env_line)
    print(f"case {args.case.name}; weights: {weights}; repeats {args.repeats} (medians)")
    print(summary_table(rows, [f"bts-infer --precision {p}" for p in args.precision]))
    parts = next((x["parts"] for x in reversed(rows) if x.get("parts")), {})
    if parts:
        print("reference breakdown (s): " + ", ".join(f"{k} {v:.1f}" for k, v in parts.items()))
    print(f"cpu capability: {torch.backends.cpu.get_cpu_capability()}; outputs in {work}")


REFERENCE = "MONAI reference (fp32)"


def _timed(name: str, cmd: list[str], out: Path | None, find_out: Any = None) -> dict[str, Any]:
    wall, rss, code, cpu = _run(cmd)
    out = find_out() if find_out is not None else out
    ok = code == 0 and out is not None and Path(out).exists()
    print(
        f"  {name}: wall {wall:.1f} s, CPU {cpu:.1f} s, peak RSS {rss:.0f} MB"
        f"{'' if ok else ' FAILED'} [torch cpu capability {torch.backends.cpu.get_cpu_capability()}]",
        flush=True,
    )
    return {"pipeline": name, "wall_s": wall, "cpu_s": cpu, "rss_mb": rss, "ok": ok, "out": out}


def summary_table(rows: list[dict[str, Any]], ours: list[str]) -> str:
    """Markdown table: medians per pipeline, ratios against the reference, Dice agreement."""

    def med(name: str, key: str) -> float | None:
        vals = [x[key] for x in rows if x["pipeline"] == name and x["ok"]]
        return float(np.median(vals)) if vals else None

    ref_out = next((x["out"] for x in reversed(rows) if x["pipeline"] == REFERENCE and x["ok"]), None)
    if ref_out is None:
        raise SystemExit("the reference pipeline failed")
    rw, rc, rr = med(REFERENCE, "wall_s"), med(REFERENCE, "cpu_s"), med(REFERENCE, "rss_mb")
    lines = [
        "| pipeline | wall (s) | CPU (s) | peak RSS (MB) | speed-up, wall | speed-up, CPU | RSS ratio "
        "| Dice vs reference TC / WT / ET |",
        "|---|---|---|---|---|---|---|---|",
        f"| {REFERENCE} | {rw:.1f} | {rc:.1f} | {rr:.0f} | 1.00x | 1.00x | 1.00 | - |",
    ]
    for name in ours:
        w, c, m = med(name, "wall_s"), med(name, "cpu_s"), med(name, "rss_mb")
        if w is None:
            lines.append(f"| {name} | failed | | | | | | |")
            continue
        out = next(x["out"] for x in reversed(rows) if x["pipeline"] == name and x["ok"])
        dice = " / ".join(f"{d:.4f}" for d in _agreement(out, ref_out, "brats2021").values())
        lines.append(
            f"| {name} | {w:.1f} | {c:.1f} | {m:.0f} | {rw / w:.2f}x | {rc / c:.2f}x | {m / rr:.2f} | {dice} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
