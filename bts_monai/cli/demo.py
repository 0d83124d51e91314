"""``bts-demo``: the main job on the embedded default sample, needing no download.

Generates the synthetic BraTS-like sample, discovers it, pushes a case through the training
transforms, then segments a case with the packaged default model (a synthetic case, or the real
one given with ``--case``), writing the segmentation, the volume report and the overlay PNG.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from bts_monai.cli._common import exits_on_bad_input, setup_logging


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    p = argparse.ArgumentParser(prog="bts-demo", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--workdir", default="bts_demo", help="folder for the sample and outputs (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--case", help="a real case to segment at the end (BraTS case folder, 4D NIfTI or LGG patient)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


@exits_on_bad_input
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``bts-demo``."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    import torch

    from bts_monai.data.discovery import make_datalist, write_datalist
    from bts_monai.data.synthetic import make_sample
    from bts_monai.data.transforms import train_transforms

    work = Path(args.workdir)
    t0 = time.perf_counter()
    roots = make_sample(work / "sample", seed=args.seed)
    print(f"[1/4] synthetic sample written to {work / 'sample'} in {time.perf_counter() - t0:.1f} s")
    for name, root in roots.items():
        dl = make_datalist(root, seed=args.seed, full_check=True)
        out = work / f"datalist_{name}.json"
        write_datalist(dl, out)
        for ds, s in dl["datasets"].items():
            extra = f", {s['slices']} slices" if s["slices"] else ""
            print(f"[2/4] discovered {ds}: {s['cases']} cases, {s['labelled']} labelled{extra} -> {out}")
    dl = make_datalist(roots["brats"], seed=args.seed)
    case = dl["training"][0]
    item = {"image": [case[m] for m in ("flair", "t1", "t1ce", "t2")], "label": case["label"]}
    t0 = time.perf_counter()
    samples = train_transforms("brats2021", roi_size=(32, 32, 32), num_samples=2)(item)
    dt = time.perf_counter() - t0
    s = samples[0]
    regions = ", ".join(f"{n}={int(v)}" for n, v in zip(("TC", "WT", "ET"), s["label"].sum(dim=(1, 2, 3))))
    print(
        f"[3/4] {case['case_id']} through the training transforms in {dt:.2f} s: "
        f"{len(samples)} patches, image {tuple(s['image'].shape)} {s['image'].dtype}, "
        f"label {tuple(s['label'].shape)} (voxels in patch: {regions}); "
        f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )
    _segment(args.case or str(Path(case["flair"]).parent), work / "segmentation", synthetic=not args.case)
    return 0


SYNTHETIC_NOTE = (
    "      (a synthetic sample: the model was trained on real MRI and may find little or nothing in it; "
    "bts-demo --case BRATS_CASE_DIR segments a real case)"
)
"""What step 4 adds when it segmented the synthetic sample, whose volumes mean nothing."""


def _segment(case: str, out: Path, synthetic: bool = False) -> None:
    """Segment one case with the packaged default model and say where everything went."""
    import json
    import time

    import torch

    from bts_monai.inference.predictor import Predictor

    kind = "lgg" if _is_lgg(case) else "brats"
    predictor = Predictor.from_packaged(kind=kind)
    out.mkdir(parents=True, exist_ok=True)
    name = Path(case).name.removesuffix(".gz").removesuffix(".nii")
    seg = out / (f"{name}_seg.tif" if kind == "lgg" else f"{name}_seg.nii.gz")
    t0 = time.perf_counter()
    prediction = predictor.predict(case)
    prediction.save(seg, report=out / f"{name}_report.json", overlay=out / f"{name}_overlay.png")
    dt = time.perf_counter() - t0
    report = json.loads((out / f"{name}_report.json").read_text())
    volumes = ", ".join(
        f"{r['region']} {r['volume_ml']:.1f} mL"
        if r.get("volume_ml") is not None
        else f"{r['region']} {r['voxels']} px"
        for r in report["regions"]
    )
    print(
        f"[4/4] {name} segmented by the packaged model {predictor.config.get('model_name', '?')} in {dt:.1f} s "
        f"on {torch.backends.cpu.get_cpu_capability()}: {volumes}\n"
        f"      segmentation {seg}\n      report {out / (name + '_report.json')}\n"
        f"      overlay {out / (name + '_overlay.png')}"
    )
    if synthetic:
        print(SYNTHETIC_NOTE)


def _is_lgg(case: str) -> bool:
    p = Path(case)
    return p.suffix.lower() in (".tif", ".tiff") or (p.is_dir() and any(p.glob("*.tif")))


if __name__ == "__main__":
    raise SystemExit(main())
