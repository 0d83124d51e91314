"""Write ``data/surface_reference.json``: the BraTS 2023 reference code's scores on ``surface_fixtures``.

Not a test and not part of the package: run once, in a throwaway environment that has the
reference code, and commit only the JSON it writes. The exact command that made the committed
file (it is recorded in the file too)::

    python3.11 -m venv /tmp/refenv
    /tmp/refenv/bin/pip install surface-distance==0.1 numpy==1.26.4 scipy==1.11.4 pandas==1.5.3 \
        connected-components-3d nibabel
    # the BraTS 2023 metrics script (github.com/rachitsaluja/BraTS-2023-Metrics, commit 43c9052),
    # checked out in /tmp/brats23ref
    /tmp/refenv/bin/python tests/model/make_surface_reference.py --brats-metrics /tmp/brats23ref

For each 3-D fixture it writes the two label maps as NIfTI at the fixture's spacing and calls the
challenge's ``get_LesionWiseResults(pred, gt, challenge)`` (which calls its copy of DeepMind's
``compute_surface_distances``/``compute_robust_hausdorff`` for legacy and lesion-wise HD95),
and cross-checks legacy HD95 with DeepMind's PyPI package ``surface-distance``. 2-D fixtures
are scored with the PyPI package only (the BraTS script is 3-D).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import surface_fixtures  # noqa: E402

OUT = Path(__file__).resolve().parent / "data" / "surface_reference.json"
REGIONS = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}


def _number(value: float) -> float | str:
    value = float(value)
    return "inf" if math.isinf(value) else value


def _numeric_only_replace() -> None:
    """Let the script's ``metric_df.replace(np.inf, 374)`` run on pandas 1.5 (the oldest with
    Python 3.11 wheels): it was written for pandas 1.3.4, which skipped the cells holding arrays
    of lesion numbers; 1.5 raises on them. The replacement is applied to the numeric columns
    only, which is where an inf can be; nothing else changes."""
    import pandas as pd

    original = pd.DataFrame.replace

    def replace(self, to_replace=None, value=None, *args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return original(self, to_replace, value, *args, **kwargs)
        except ValueError:
            out = self.copy()
            numeric = out.select_dtypes("number").columns
            out[numeric] = original(out[numeric], to_replace, value, *args, **kwargs)
            return out

    pd.DataFrame.replace = replace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brats-metrics", required=True, help="checkout of the BraTS 2023 metrics repository")
    args = parser.parse_args()

    deepmind = importlib.import_module("surface_distance")  # the PyPI package
    for name in [m for m in sys.modules if m == "surface_distance" or m.startswith("surface_distance.")]:
        del sys.modules[name]
    sys.path.insert(0, str(Path(args.brats_metrics).resolve()))
    _numeric_only_replace()
    brats = importlib.import_module("metrics")  # the challenge's script and its own surface_distance copy
    if Path(brats.surface_distance.__file__).resolve().parent.parent != Path(args.brats_metrics).resolve():
        raise SystemExit(f"the BraTS script imported {brats.surface_distance.__file__}, not its own copy")

    def deepmind_hd95(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> float:
        sd = deepmind.compute_surface_distances(ref.astype(bool), pred.astype(bool), spacing)
        return float(deepmind.compute_robust_hausdorff(sd, 95))

    result: dict = {
        "command": "/tmp/refenv/bin/python tests/model/make_surface_reference.py --brats-metrics /tmp/brats23ref",
        "reference": "BraTS-2023-Metrics metrics.py (commit 43c9052) get_LesionWiseResults; "
        "surface-distance (PyPI) compute_surface_distances + compute_robust_hausdorff",
        "versions": {name: metadata.version(name) for name in ("surface-distance", "numpy", "scipy", "pandas")},
        "fixtures": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for fx in surface_fixtures.fixtures_3d():
            pred_file, gt_file = Path(tmp, f"{fx.name}_pred.nii.gz"), Path(tmp, f"{fx.name}_gt.nii.gz")
            affine = np.diag([*fx.spacing, 1.0])
            nib.save(nib.Nifti1Image(fx.pred.astype(np.uint8), affine), pred_file)
            nib.save(nib.Nifti1Image(fx.ref.astype(np.uint8), affine), gt_file)
            # What the reference reads back: float32 zooms, widened to float64 exactly.
            header_spacing = tuple(float(z) for z in nib.load(str(pred_file)).header.get_zooms())
            table = brats.get_LesionWiseResults(str(pred_file), str(gt_file), fx.challenge)
            table = table.set_index("Labels")
            regions = {}
            for region, values in REGIONS.items():
                row = table.loc[region]
                legacy = float(row["Legacy_HD95"])
                check = deepmind_hd95(np.isin(fx.pred, values), np.isin(fx.ref, values), header_spacing)
                # The script replaces inf (exactly one of the two empty) by 374 in its results table.
                if not (legacy == check or (math.isinf(check) and legacy == 374)):
                    raise SystemExit(f"{fx.name} {region}: BraTS copy {legacy} != surface-distance {check}")
                regions[region] = {
                    "legacy_dice": float(row["Legacy_Dice"]),
                    "legacy_hd95": _number(legacy),
                    "lesion_dice": float(row["LesionWise_Score_Dice"]),
                    "lesion_hd95": float(row["LesionWise_Score_HD95"]),
                    "tp": int(row["Num_TP"]),
                    "fn": int(row["Num_FN"]),
                    "fp": int(row["Num_FP"]),
                }
            result["fixtures"][fx.name] = {
                "sha256": surface_fixtures.sha256(fx.pred, fx.ref),
                "spacing": list(header_spacing),
                "challenge": fx.challenge,
                "regions": regions,
            }
    for fx in surface_fixtures.fixtures_2d():
        spacing = tuple(float(np.float32(s)) for s in fx.spacing)
        result["fixtures"][fx.name] = {
            "sha256": surface_fixtures.sha256(fx.pred, fx.ref),
            "spacing": list(spacing),
            "regions": {"mask": {"legacy_hd95": _number(deepmind_hd95(fx.pred, fx.ref, spacing))}},
        }
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {OUT} ({len(result['fixtures'])} fixtures)")


if __name__ == "__main__":
    main()
