"""Write ``data/surface_reference_real.json``: the BraTS 2023 reference code's scores on the ten real
BraTS 2018 cases, each against the prediction ``real_surface_cases.perturbed`` makes from its ground truth.

Not a test and not part of the package: run once, in the throwaway environment of
``make_surface_reference.py`` (the same pinned packages and the same checkout of the BraTS 2023
metrics script), and commit only the JSON it writes. The exact command that made the committed
file (it is recorded in the file too)::

    python3.11 -m venv /tmp/refenv
    /tmp/refenv/bin/pip install surface-distance==0.1 numpy==1.26.4 scipy==1.11.4 pandas==1.5.3 \
        connected-components-3d nibabel
    # github.com/rachitsaluja/BraTS-2023-Metrics at commit 43c9052, checked out in /tmp/brats23ref
    /tmp/refenv/bin/python tests/model/make_surface_reference_real.py --brats-metrics /tmp/brats23ref \
        --data /work/shared/data/brats2018

For each case it writes the ground truth and the prediction in BraTS 2023 label values (ET 4 -> 3,
what the script reads) with the ground truth's header, calls the challenge's
``get_LesionWiseResults(pred, gt, "BraTS-GLI")`` (legacy HD95 through its copy of DeepMind's
``compute_surface_distances``/``compute_robust_hausdorff`` at the header's spacing, and the
lesion-wise scores), and cross-checks legacy HD95 with DeepMind's PyPI package ``surface-distance``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import nibabel as nib
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import real_surface_cases as cases  # noqa: E402
from make_surface_reference import _number, _numeric_only_replace  # noqa: E402

OUT = HERE / "data" / "surface_reference_real.json"
ET_2018, ET_2023 = 4, 3


def _as_2023(labels: np.ndarray) -> np.ndarray:
    out = labels.astype(np.uint8)
    out[out == ET_2018] = ET_2023
    return out


def main() -> None:
    import importlib
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brats-metrics", required=True, help="checkout of the BraTS 2023 metrics repository")
    parser.add_argument("--data", required=True, help="the brats2018 folder of the real cases")
    args = parser.parse_args()

    deepmind = importlib.import_module("surface_distance")  # the PyPI package
    for name in [m for m in sys.modules if m == "surface_distance" or m.startswith("surface_distance.")]:
        del sys.modules[name]
    sys.path.insert(0, str(Path(args.brats_metrics).resolve()))
    _numeric_only_replace()
    brats = importlib.import_module("metrics")
    if Path(brats.surface_distance.__file__).resolve().parent.parent != Path(args.brats_metrics).resolve():
        raise SystemExit(f"the BraTS script imported {brats.surface_distance.__file__}, not its own copy")

    result: dict = {
        "command": "/tmp/refenv/bin/python tests/model/make_surface_reference_real.py --brats-metrics "
        "/tmp/brats23ref --data /work/shared/data/brats2018",
        "reference": "BraTS-2023-Metrics metrics.py (commit 43c9052) get_LesionWiseResults(pred, gt, 'BraTS-GLI'); "
        "surface-distance (PyPI) compute_surface_distances + compute_robust_hausdorff",
        "versions": {name: metadata.version(name) for name in ("surface-distance", "numpy", "scipy", "pandas")},
        "cases": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for index, case in enumerate(cases.CASES):
            start = time.perf_counter()
            gt_img = nib.load(str(cases.gt_path(Path(args.data), case)))
            gt = np.asanyarray(gt_img.dataobj).astype(np.uint8)
            pred = cases.perturbed(gt, index)
            pred_file, gt_file = Path(tmp, f"{case}_pred.nii.gz"), Path(tmp, f"{case}_gt.nii.gz")
            for array, path in ((pred, pred_file), (gt, gt_file)):
                nib.save(nib.Nifti1Image(_as_2023(array), gt_img.affine, gt_img.header), str(path))
            spacing = tuple(float(z) for z in nib.load(str(pred_file)).header.get_zooms())
            table = brats.get_LesionWiseResults(str(pred_file), str(gt_file), "BraTS-GLI").set_index("Labels")
            regions = {}
            for region, values in cases.REGIONS_2018.items():
                row = table.loc[region]
                legacy = float(row["Legacy_HD95"])
                sd = deepmind.compute_surface_distances(np.isin(gt, values), np.isin(pred, values), spacing)
                check = float(deepmind.compute_robust_hausdorff(sd, 95))
                if legacy != check:
                    raise SystemExit(f"{case} {region}: BraTS copy {legacy} != surface-distance {check}")
                regions[region] = {
                    "legacy_dice": float(row["Legacy_Dice"]),
                    "legacy_hd95": _number(legacy),
                    "lesion_dice": float(row["LesionWise_Score_Dice"]),
                    "lesion_hd95": float(row["LesionWise_Score_HD95"]),
                    "tp": int(row["Num_TP"]),
                    "fn": int(row["Num_FN"]),
                    "fp": int(row["Num_FP"]),
                }
            result["cases"][case] = {
                "gt_sha256": cases.sha256(gt),
                "pred_sha256": cases.sha256(pred),
                "spacing": list(spacing),
                "regions": regions,
            }
            print(f"{case}: {time.perf_counter() - start:.1f} s", flush=True)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {OUT} ({len(result['cases'])} cases)")


if __name__ == "__main__":
    main()
