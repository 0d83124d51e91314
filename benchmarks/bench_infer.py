"""bts-infer against a textbook MONAI pipeline with the same weights: speed, peak memory, Dice.

Every pipeline runs as a fresh process (``bts-infer`` exactly as a user runs it; the reference as
this script's ``--reference-worker``), alternating ours and the reference within each round, so
both see the same load from whatever else runs on the machine. Wall time is end to end:
interpreter start, imports, loading the model, reading the four ``.nii.gz``, inference, writing
the segmentation. Peak RSS is the child's own ``ru_maxrss`` (``os.wait4``). Every case's files
are read once before the first timed run, so no pipeline pays for reading from disk.

The reference is the chain a MONAI tutorial writes, with nothing of bts_monai in it but the
conversion of regions to label values: ``LoadImaged`` (the four modalities), ``EnsureChannelFirstd``,
``Orientationd`` (RAS), ``Spacingd`` to the model's voxel size (bilinear; left out for a model
without one, which reads BraTS's own 1 mm grid), ``NormalizeIntensityd`` (non-zero, channel-wise),
``SlidingWindowInferer`` (the model's roi, overlap 0.5, gaussian, one window per batch) on the
whole volume under ``torch.no_grad``, sigmoid, ``Invertd``, threshold 0.5, ``nibabel`` save with
the input's header. Its network is MONAI's class built from the model's spec, loaded with the very
same weights file ``bts-infer`` reads.

Models (``--models``):
  default  the packaged default BraTS model (``bts_monai/models/brats_unet_2mm``: safetensors +
           its ONNX export), ``bts-infer`` with no model flag;
  dynunet  ``configs/brats21.yaml``'s DynUNet (128³ windows, 1 mm) with **random initial weights**
           saved to a project checkpoint (``--ckpt``): for speed and memory only — its Dice means
           nothing. ``bts-infer`` exports it to ONNX on first use (into a cache in the work
           folder); that first run is timed apart, the timed runs find the export cached.

Sections, per model:
  1. one case, fresh processes, ``--repeats`` alternating rounds (target: ours >= 2.5x);
  2. ``--cases`` cases in one ``bts-infer`` call against the reference over the same cases in one
     process, per case (target: >= 5x);
  3. peak RSS of each run above (target: ours no higher);
  4. backends: every backend/precision ``bts-infer`` offers here, and ``--one-pass``, each one call
     over the cases (for ``dynunet``: one case), Dice against the ground truth per region, its
     difference from the torch backend's (target: within 0.005), and label agreement with torch.

    BTS_REAL_DATA=/work/shared/data .venv/bin/python benchmarks/bench_infer.py          # full run
    .venv/bin/python benchmarks/bench_infer.py --quick                                  # smoke run
    .venv/bin/python benchmarks/bench_infer.py --models default --cases 10 --repeats 3 --profile
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

# Nothing heavy at the top: the reference worker is this file, and its imports are part of what
# it measures (they must be the textbook pipeline's, not bts_monai's).
REPO = Path(__file__).resolve().parent.parent
DEFAULT_CASE = "Brats18_CBICA_ABM_1"
REFERENCE = "MONAI reference"
OURS = "bts-infer (defaults)"
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))
"""MONAI's default axis labels, spelled out: Orientationd warns when it has to assume them."""

TARGET_ONE_CASE, TARGET_MANY, TARGET_DICE = 2.5, 5.0, 0.005


# ---- machine ---------------------------------------------------------------------------------------
def versions() -> dict[str, str]:
    """Installed versions of the libraries the figures depend on ("-" when absent)."""
    out = {}
    for name in ("torch", "monai", "onnxruntime", "openvino", "nibabel", "isal", "indexed_gzip"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "-"
    return out


def machine_line() -> str:
    """CPU model, torch CPU capability, flags, cores, threads and library versions, on one line."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _env import describe

    extra = {k: v for k, v in versions().items() if k not in ("torch", "monai")}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    threads = f" | OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}" if "OMP_NUM_THREADS" in os.environ else ""
    return f"{describe()} | {', '.join(f'{k} {v}' for k, v in extra.items())} | load average {load:.1f}{threads}"


# ---- models -----------------------------------------------------------------------------------------
def make_dynunet_checkpoint(path: Path, small: bool = False, roi: list[int] | None = None) -> Path:
    """A project checkpoint of configs/brats21.yaml's DynUNet with random initial weights (seed 0).

    ``small`` (``--quick``, tests): a quarter of the filters; ``roi``: other windows than the config's.
    """
    import torch
    import yaml

    from bts_monai.model.module import BratsSegModule, build_network, default_data_config
    from bts_monai.model.spec import INFERENCE_KEY

    cfg = yaml.safe_load((REPO / "configs" / "brats21.yaml").read_text())
    spec = cfg["model"]["net"]
    init = dict(spec["init_args"])
    roi = list(roi or cfg["data"]["roi_size"])
    if small:
        init["filters"] = [max(4, f // 4) for f in init["filters"]]
    torch.manual_seed(0)
    net = build_network(spec["class_path"], init).eval()
    data = default_data_config(3) | {"roi_size": roi, "dataset": cfg["data"]["dataset"]}
    module = BratsSegModule(
        net, data_config=data, sw_overlap=cfg["model"]["sw_overlap"], sw_mode=cfg["model"]["sw_mode"]
    )
    torch.save({"state_dict": module.state_dict(), INFERENCE_KEY: module.inference_config()}, path)
    return path


def model_source(name: str, work: Path, quick: bool) -> tuple[Path, list[str], str]:
    """(weights path for the reference, bts-infer's model arguments, description) of a model."""
    if name == "default":
        from bts_monai.inference.predictor import default_model_path

        folder = default_model_path("brats")
        if folder is None:
            raise SystemExit("no packaged default BraTS model is installed")
        meta = json.loads((folder / "metadata.json").read_text())
        return folder, [], f"packaged default {meta['name']} {meta['version']} (trained weights)"
    ckpt = work / ("dynunet_small_random.ckpt" if quick else "dynunet_random.ckpt")
    if not ckpt.exists():
        make_dynunet_checkpoint(ckpt, small=quick)
    what = "quarter-width DynUNet, 128³ windows" if quick else "configs/brats21.yaml DynUNet, 128³ windows"
    return ckpt, ["--ckpt", str(ckpt)], f"{what}, RANDOM initial weights (seed 0): speed and memory only"


# ---- the MONAI reference pipeline (this file run as a worker) ---------------------------------------
def _reference_model(source: Path) -> tuple[Any, dict[str, Any]]:
    """MONAI's network class from the model's spec, with the weights file bts-infer reads."""
    import torch
    from monai.networks import nets

    if source.is_dir():  # a packaged model: metadata.json + safetensors
        from safetensors.torch import load_file

        meta = json.loads((source / "metadata.json").read_text())
        spec, cfg = meta["network"], meta["inference"]
        state = load_file(str(source / meta["weights"]["file"]))
    else:  # a project checkpoint: Lightning's state dict, the network under "net."
        ckpt = torch.load(source, map_location="cpu", weights_only=True)
        cfg = ckpt["bts_inference"]
        spec = cfg["net"]
        state = {k[len("net.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    net = getattr(nets, spec["class_path"].rsplit(".", 1)[1])(**spec["init_args"])
    # A packaged model stores a tensor the network registers under two names once (DynUNet's
    # skip_layers): give every name of the same tensor its stored value, then load strictly.
    names: dict[int, list[str]] = {}
    for key, tensor in net.state_dict(keep_vars=True).items():
        names.setdefault(id(tensor), []).append(key)
    for group in names.values():
        stored = next((state[k] for k in group if k in state), None)
        if stored is not None:
            state = {**{k: stored for k in group}, **state}
    net.load_state_dict({k: v.float() for k, v in state.items()})
    return net.eval(), cfg


def reference_worker(source: Path, cases: list[Path], out_dir: Path, result: Path) -> None:
    """The textbook MONAI chain over ``cases`` in this process; stage timings as JSON to ``result``."""
    t0 = time.perf_counter()
    import nibabel as nib
    import numpy as np
    import torch
    from monai.inferers import SlidingWindowInferer
    from monai.transforms import (
        Activationsd,
        AsDiscreted,
        Compose,
        EnsureChannelFirstd,
        Invertd,
        LoadImaged,
        NormalizeIntensityd,
        Orientationd,
        Spacingd,
    )

    from bts_monai.labels import get_scheme  # regions -> the dataset's label values

    t1 = time.perf_counter()
    net, cfg = _reference_model(source)
    scheme = get_scheme(cfg["scheme"])
    steps: list[Any] = [
        LoadImaged(keys="image"),
        EnsureChannelFirstd(keys="image"),
        Orientationd(keys="image", axcodes="RAS", labels=RAS_LABELS),
    ]
    if cfg.get("spacing"):
        steps.append(Spacingd(keys="image", pixdim=cfg["spacing"], mode="bilinear"))
    steps.append(NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True))
    pre = Compose(steps)
    post = Compose(
        [
            Activationsd(keys="pred", sigmoid=True),
            Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False),
            AsDiscreted(keys="pred", threshold=0.5),
        ]
    )
    inferer = SlidingWindowInferer(roi_size=cfg["roi_size"], sw_batch_size=1, overlap=0.5, mode="gaussian")
    t2 = time.perf_counter()
    parts = {"import_s": t1 - t0, "model_s": t2 - t1, "read_preprocess_s": 0.0, "network_s": 0.0, "post_save_s": 0.0}
    for case in cases:
        files = [str(next(case.glob(f"*_{m}.nii.gz"))) for m in cfg["modalities"]]
        a = time.perf_counter()
        data = pre({"image": files})
        b = time.perf_counter()
        with torch.no_grad():
            data["pred"] = inferer(data["image"][None], net)[0]
        c = time.perf_counter()
        regions = post(data)["pred"].numpy() > 0
        ref = nib.load(files[0])
        img = nib.Nifti1Image(scheme.from_regions(regions).astype(np.uint8), ref.affine, ref.header)
        img.set_data_dtype(np.uint8)
        nib.save(img, out_dir / f"{case.name}_seg.nii.gz")
        d = time.perf_counter()
        parts["read_preprocess_s"] += b - a
        parts["network_s"] += c - b
        parts["post_save_s"] += d - c
    result.write_text(json.dumps(parts))


# ---- running children -------------------------------------------------------------------------------
def run_child(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd`` from the repository root: wall s, CPU s (user + system), peak RSS MB, exit status."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # Read stderr while waiting: a child that logs more than a pipe holds must not block.
    err = proc.stderr.read() if proc.stderr else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        print(f"FAILED ({proc.returncode}): {' '.join(cmd)}\n{err[-3000:]}", file=sys.stderr, flush=True)
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "rss_mb": usage.ru_maxrss / 1024,
        "ok": proc.returncode == 0,
    }


def bts_infer_cmd() -> list[str]:
    """``bts-infer`` as installed beside this interpreter (else ``python -m bts_monai.cli.infer``)."""
    script = Path(sys.executable).parent / "bts-infer"
    return [str(script)] if script.exists() else [sys.executable, "-m", "bts_monai.cli.infer"]


class Bench:
    """One model's runs: commands, environment, where outputs go, the rows measured."""

    def __init__(self, model: str, work: Path, quick: bool) -> None:
        self.model, self.work = model, work / model
        self.work.mkdir(parents=True, exist_ok=True)
        self.source, self.model_args, self.description = model_source(model, work, quick)
        # Exports of checkpoints go to the work folder's cache, so the first-use export is timed
        # apart (warm_up) and the user's own cache is left alone.
        self.env = {**os.environ, "BTS_ONNX_CACHE": str(work / "onnx_cache")}
        self.rows: list[dict[str, Any]] = []
        self.variant_cases: list[Path] = []
        self.profile_text = ""

    def ours(self, cases: list[Path], out: Path, extra: tuple[str, ...] = ()) -> dict[str, Any]:
        """One ``bts-infer`` call over ``cases`` into folder ``out``."""
        out.mkdir(parents=True, exist_ok=True)
        cmd = [*bts_infer_cmd(), *map(str, cases), *self.model_args, "-o", f"{out}{os.sep}", "-q", "--overwrite"]
        return run_child([*cmd, *extra], self.env)

    def reference(self, cases: list[Path], out: Path) -> dict[str, Any]:
        """The reference worker over ``cases`` into folder ``out``, with its stage timings."""
        out.mkdir(parents=True, exist_ok=True)
        result = out / "timings.json"
        result.unlink(missing_ok=True)
        cmd = [sys.executable, __file__, "--reference-worker", str(self.source), str(out), str(result)]
        row = run_child([*cmd, *map(str, cases)], self.env)
        row["parts"] = json.loads(result.read_text()) if result.exists() else {}
        return row

    def record(self, section: str, pipeline: str, row: dict[str, Any], n_cases: int, **extra: Any) -> dict[str, Any]:
        row = {"model": self.model, "section": section, "pipeline": pipeline, "cases": n_cases, **row, **extra}
        self.rows.append(row)
        per = f", {row['wall_s'] / n_cases:.1f} s/case" if n_cases > 1 else ""
        print(
            f"  [{self.model}] {section}: {pipeline}: wall {row['wall_s']:.1f} s{per}, CPU {row['cpu_s']:.1f} s, "
            f"peak RSS {row['rss_mb']:.0f} MB{'' if row['ok'] else ' FAILED'}",
            flush=True,
        )
        return row


# ---- Dice --------------------------------------------------------------------------------------------
def _dice(a: Any, b: Any) -> float:
    sa, sb = int(a.sum()), int(b.sum())
    return 1.0 if sa + sb == 0 else 2.0 * int((a & b).sum()) / (sa + sb)


def dice_table(pred_dir: Path, cases: list[Path], scheme_name: str = "brats2021") -> dict[str, Any]:
    """Per-region mean Dice of ``<case>_seg.nii.gz`` in ``pred_dir`` against each case's ground truth."""
    import nibabel as nib
    import numpy as np

    from bts_monai.labels import get_scheme

    scheme = get_scheme(scheme_name)
    per_case = {}
    for case in cases:
        pred = pred_dir / f"{case.name}_seg.nii.gz"
        gt = next(case.glob("*_seg.nii.gz"), None)
        if not pred.exists() or gt is None:
            continue
        a = scheme.to_regions(np.asarray(nib.load(pred).dataobj))
        b = scheme.to_regions(np.asarray(nib.load(gt).dataobj))
        per_case[case.name] = [_dice(a[i], b[i]) for i in range(len(scheme.region_names))]
    if not per_case:
        return {}
    mean = np.mean(list(per_case.values()), axis=0)
    return {"regions": scheme.region_names, "mean": [float(m) for m in mean], "per_case": per_case}


def label_agreement(dir_a: Path, dir_b: Path, cases: list[Path]) -> float | None:
    """Fraction of voxels with the same label in both folders' segmentations, over ``cases``."""
    import nibabel as nib
    import numpy as np

    same = total = 0
    for case in cases:
        a, b = dir_a / f"{case.name}_seg.nii.gz", dir_b / f"{case.name}_seg.nii.gz"
        if a.exists() and b.exists():
            la, lb = np.asarray(nib.load(a).dataobj), np.asarray(nib.load(b).dataobj)
            same, total = same + int((la == lb).sum()), total + la.size
    return same / total if total else None


# ---- the sections ------------------------------------------------------------------------------------
def variants(default_backend: str) -> list[tuple[str, tuple[str, ...]]]:
    """(name, bts-infer flags) of every backend and precision installed here, and one pass."""
    from bts_monai.inference.backends import runtime_installed

    out: list[tuple[str, tuple[str, ...]]] = [
        ("torch f32", ("--backend", "torch", "--precision", "32")),
        ("torch bf16", ("--backend", "torch", "--precision", "bf16")),
    ]
    if runtime_installed("onnxruntime"):
        out.append(("onnxruntime f32", ("--backend", "onnxruntime")))
    if runtime_installed("openvino"):
        out += [
            ("openvino f32", ("--backend", "openvino", "--precision", "32")),
            ("openvino bf16", ("--backend", "openvino", "--precision", "bf16")),
        ]
    out.append((f"defaults + --one-pass ({default_backend})", ("--one-pass",)))
    return out


def run_model(
    bench: Bench,
    one_case: Path,
    cases: list[Path],
    repeats: int,
    many_repeats: int,
    variant_cases: list[Path],
    backends: bool = True,
) -> None:
    """Sections 1-4 for one model (see the module docstring); section 4 only with ``backends``."""
    from bts_monai.inference.backends import choose_backend, resolve_precision

    default_backend = choose_backend("auto", "cpu")
    precision = resolve_precision("auto", default_backend, "cpu")
    default_backend += " bf16" if precision == "bf16" else " f32"
    bench.description += f"; bts-infer's default backend here: {default_backend} (--precision auto)"
    w = bench.work
    print(f"\n== {bench.model}: {bench.description}", flush=True)
    for case in {one_case, *cases, *variant_cases}:  # every input in the page cache: no run reads from disk
        for f in case.iterdir():
            f.read_bytes()
    first = bench.ours([one_case], w / "warm_up")
    bench.record("first use", OURS + " first run", first, 1, note="includes any ONNX export into the cache")
    for r in range(repeats):
        bench.record("one case", OURS, bench.ours([one_case], w / f"one_ours_{r}"), 1, round=r)
        bench.record("one case", REFERENCE, bench.reference([one_case], w / f"one_ref_{r}"), 1, round=r)
    for r in range(many_repeats if len(cases) > 1 else 0):
        bench.record("many cases", OURS, bench.ours(cases, w / f"many_ours_{r}"), len(cases), round=r)
        bench.record("many cases", REFERENCE, bench.reference(cases, w / f"many_ref_{r}"), len(cases), round=r)
    for name, flags in variants(default_backend) if backends else []:
        out = w / ("var_" + "".join(c if c.isalnum() else "_" for c in name))
        row = bench.record("backends", name, bench.ours(variant_cases, out, flags), len(variant_cases))
        row["out"] = str(out)
    # The reference's last outputs over the backends' cases, for their Dice row.
    same = variant_cases == cases and len(cases) > 1
    ref_out = w / (f"many_ref_{many_repeats - 1}" if same else f"one_ref_{repeats - 1}")
    bench.rows.append({"model": bench.model, "section": "reference outputs", "out": str(ref_out)})


# ---- reporting ---------------------------------------------------------------------------------------
def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = sorted(r[key] for r in rows if r.get("ok"))
    if not vals:
        return None
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2


def speed_table(rows: list[dict[str, Any]], section: str, target: float) -> list[str]:
    """Markdown rows: median wall (per case), CPU, RSS of ours and the reference, ratios, targets."""
    sel = [r for r in rows if r.get("section") == section]
    if not sel:
        return []
    n = sel[0]["cases"]
    ours = [r for r in sel if r["pipeline"] == OURS]
    ref = [r for r in sel if r["pipeline"] == REFERENCE]
    ow, rw = _median(ours, "wall_s"), _median(ref, "wall_s")
    oc, rc = _median(ours, "cpu_s"), _median(ref, "cpu_s")
    om, rm = _median(ours, "rss_mb"), _median(ref, "rss_mb")
    if None in (ow, rw, oc, rc, om, rm):
        return [f"| {section} | failed | | | | | |"]

    def walls(rs: list[dict[str, Any]]) -> str:
        return ", ".join(f"{r['wall_s'] / n:.1f}" for r in rs)

    speed, mem = rw / ow, om / rm
    return [
        f"| {section} ({n} case{'s' if n > 1 else ''}), {REFERENCE} | {walls(ref)} | {rw / n:.1f} | {rc / n:.1f} "
        f"| {rm:.0f} | 1.00x | 1.00 |",
        f"| {section} ({n} case{'s' if n > 1 else ''}), {OURS} | {walls(ours)} | {ow / n:.1f} | {oc / n:.1f} "
        f"| {om:.0f} | **{speed:.2f}x** ({'met' if speed >= target else 'NOT met'}, target {target}x; "
        f"CPU {rc / oc:.2f}x) | {mem:.2f} ({'met' if mem <= 1.0 else 'NOT met'}) |",
    ]


def report(rows: list[dict[str, Any]], model: str, description: str, variant_cases: list[Path]) -> str:
    """The Markdown summary of one model's rows."""
    mine = [r for r in rows if r["model"] == model]
    lines = [f"### {model}: {description}", ""]
    first = next((r for r in mine if r["section"] == "first use"), None)
    if first:
        lines.append(f"First run (untimed below; any ONNX export happens here): {first['wall_s']:.1f} s wall.")
        lines.append("")
    lines += [
        "| section, pipeline | wall per case (s), rounds | median wall per case (s) | CPU per case (s) "
        "| peak RSS (MB) | speed-up | RSS ratio |",
        "|---|---|---|---|---|---|---|",
        *speed_table(mine, "one case", TARGET_ONE_CASE),
        *speed_table(mine, "many cases", TARGET_MANY),
    ]
    for section in ("one case", "many cases"):
        parts = [r["parts"] for r in mine if r["section"] == section and r["pipeline"] == REFERENCE and r.get("parts")]
        if parts:
            p = parts[-1]
            lines.append("")
            lines.append(
                f"Reference stages ({section}, last round): "
                + ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in p.items())
                + "; network per round: "
                + ", ".join(f"{q['network_s']:.1f}" for q in parts)
                + " s"
            )
    var = [r for r in mine if r["section"] == "backends"]
    ref_out = next((Path(r["out"]) for r in mine if r["section"] == "reference outputs"), None)
    if var:
        torch_row = next((r for r in var if r["pipeline"] == "torch f32"), None)
        torch_dir = Path(torch_row["out"]) if torch_row else None
        torch_dice = dice_table(torch_dir, variant_cases) if torch_dir else {}
        names = torch_dice.get("regions", ["TC", "WT", "ET"])
        n = len(variant_cases)
        lines += [
            "",
            f"Backends, one `bts-infer` call over {n} case{'s' if n > 1 else ''}"
            + (" (random weights: Dice is not meaningful, only the agreement)" if model == "dynunet" else ""),
            "",
            f"| backend | wall per case (s) | peak RSS (MB) | Dice vs ground truth {' / '.join(names)} (mean) "
            f"| minus torch f32's | within {TARGET_DICE} | voxels as torch f32 |",
            "|---|---|---|---|---|---|---|",
        ]
        rows_dirs = [(r["pipeline"], Path(r["out"]), r) for r in var]
        if ref_out is not None:
            rows_dirs.append((REFERENCE + " (same cases, last run)", ref_out, None))
        for name, out, r in rows_dirs:
            d = dice_table(out, variant_cases)
            cases_here = [c for c in variant_cases if (out / f"{c.name}_seg.nii.gz").exists()]
            if not d:
                lines.append(f"| {name} | {'failed' if r else '-'} | | | | | |")
                continue
            diff = [a - b for a, b in zip(d["mean"], torch_dice.get("mean", d["mean"]))]
            ok = ("yes" if all(abs(x) <= TARGET_DICE for x in diff) else "NO") if r else "-"  # a target of backends
            agree = label_agreement(out, torch_dir, cases_here) if torch_dir else None
            speed = f"{r['wall_s'] / r['cases']:.1f}" if r else "-"
            rss = f"{r['rss_mb']:.0f}" if r else "-"
            lines.append(
                f"| {name} | {speed} | {rss} | {' / '.join(f'{x:.4f}' for x in d['mean'])} "
                f"| {' / '.join(f'{x:+.4f}' for x in diff)} | {ok} "
                f"| {'-' if agree is None else f'{agree:.5f}'} |"
            )
    return "\n".join(lines)


# ---- profile -----------------------------------------------------------------------------------------
STAGES = (
    ("imports (all, incl. lazy ones inside the stages)", "", "_find_and_load"),
    ("model: load, build, backend compile", "inference/predictor.py", "from_checkpoint"),
    ("reading and checks", "inference/io.py", "load_case"),
    # On a CPU the engine's functions run (bts_monai.inference.engine); on a GPU, MONAI's (geometry).
    ("to model space (RAS, resample, crop, z-score)", "inference/engine.py", "to_model_space"),
    ("network (sliding windows)", "inference/predictor.py", "numpy_logits"),
    ("back to the input grid", "inference/engine.py", "to_input_grid"),
    ("writing", "inference/predictor.py", "save"),
)


def profile(bench: Bench, case: Path) -> str:
    """cProfile of one ``bts-infer`` run on ``case``: cumulative seconds of its stages."""
    import pstats

    out = bench.work / "profile"
    out.mkdir(exist_ok=True)
    prof = out / "bts_infer.prof"
    cmd = [sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "bts_monai.cli.infer", str(case)]
    row = run_child([*cmd, *bench.model_args, "-o", f"{out}{os.sep}", "-q", "--overwrite"], bench.env)
    if not row["ok"]:
        return "profile failed"
    stats = pstats.Stats(str(prof)).stats  # type: ignore[attr-defined]
    total = max(v[3] for v in stats.values())
    lines = [f"cProfile of one `bts-infer` run ({bench.model}, {case.name}; profiler overhead included):", ""]
    lines += ["| stage | cumulative s | share |", "|---|---|---|"]
    lines.append(f"| whole run (wall {row['wall_s']:.1f} s, CPU {row['cpu_s']:.1f} s) | {total:.1f} | 100% |")
    for label, file_end, func in STAGES:
        cum = sum(v[3] for (f, _, fn), v in stats.items() if fn == func and f.endswith(file_end))
        if func == "_find_and_load":
            cum = max((v[3] for (f, _, fn), v in stats.items() if fn == func), default=0.0)
        lines.append(f"| {label} | {cum:.1f} | {100 * cum / total:.0f}% |")
    return "\n".join(lines)


# ---- main --------------------------------------------------------------------------------------------
def main() -> None:
    default_data = Path(os.environ.get("BTS_REAL_DATA", str(REPO.parent / "shared" / "data"))) / "brats2018"
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=default_data, help="folder of BraTS cases (default: %(default)s)")
    p.add_argument("--models", nargs="+", choices=["default", "dynunet"], default=["default", "dynunet"])
    p.add_argument("--cases", type=int, default=10, help="cases of the many-case and Dice sections (default 10)")
    p.add_argument("--dynunet-cases", type=int, help="cases of the DynUNet's many-case section (default: --cases)")
    p.add_argument("--repeats", type=int, default=3, help="alternating rounds of the one-case section (default 3)")
    p.add_argument(
        "--many-repeats", type=int, default=1, help="alternating rounds of the many-case section (default 1)"
    )
    p.add_argument("--case", default=DEFAULT_CASE, help="the one-case section's case (default %(default)s)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 cases, 1 round, a small DynUNet")
    p.add_argument("--profile", action="store_true", help="also cProfile one bts-infer run per model")
    p.add_argument("--no-backends", action="store_true", help="leave out section 4 (every backend and precision)")
    p.add_argument("--workdir", type=Path, help="keep checkpoints and outputs here (default: a temporary folder)")
    p.add_argument("--reference-worker", nargs=3, metavar=("MODEL", "OUT_DIR", "RESULT"), help=argparse.SUPPRESS)
    args, rest = p.parse_known_args()
    if args.reference_worker:
        source, out_dir, result = (Path(a) for a in args.reference_worker)
        reference_worker(source, [Path(c) for c in rest], out_dir, result)
        return
    if rest:
        p.error(f"unrecognised arguments: {' '.join(rest)}")
    if args.quick:
        args.cases, args.repeats, args.many_repeats = min(args.cases, 2), 1, 1
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bts_bench_infer_"))
    work.mkdir(parents=True, exist_ok=True)
    all_cases = sorted(c for c in args.data.iterdir() if c.is_dir() and any(c.glob("*_flair.nii.gz")))
    if not all_cases:
        raise SystemExit(f"no BraTS cases in {args.data}")
    one = next((c for c in all_cases if c.name == args.case), all_cases[0])
    cases = all_cases[: args.cases]
    header = machine_line()
    print(header, flush=True)
    print(
        f"cases: {len(cases)} of {args.data}; one-case: {one.name}; "
        f"rounds: {args.repeats} (one case), {args.many_repeats} (many); work folder {work}",
        flush=True,
    )
    started = time.time()
    benches = []
    for model in args.models:
        bench = Bench(model, work, args.quick)
        benches.append(bench)
        many = cases if model == "default" else cases[: args.dynunet_cases or args.cases]
        # The DynUNet's backends run on one case: its torch windows take ~20 s each on a 2-core CPU.
        variant_cases = cases if model == "default" else [one]
        run_model(bench, one, many, args.repeats, args.many_repeats, variant_cases, not args.no_backends)
        bench.variant_cases = variant_cases
        if args.profile:
            bench.profile_text = profile(bench, one)
    rows = [r for b in benches for r in b.rows]
    (work / "results.json").write_text(json.dumps({"machine": header, "rows": rows}, indent=1, default=str))
    print("\n" + "=" * 100)
    print(header)
    print(f"finished in {(time.time() - started) / 60:.1f} min; load average now {os.getloadavg()[0]:.1f}\n")
    for b in benches:
        print(report(rows, b.model, b.description, b.variant_cases))
        if b.profile_text:
            print("\n" + b.profile_text)
        print()
    import torch

    print(f"torch.backends.cpu.get_cpu_capability(): {torch.backends.cpu.get_cpu_capability()}; outputs in {work}")


if __name__ == "__main__":
    main()
