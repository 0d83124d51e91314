"""Choose a packaged model's post-processing on its training cases, the way nnU-Net chooses its own.

nnU-Net decides whether to keep only the largest connected component from its cross-validation
predictions on the training data, never from held-out cases. This does the same for the rules of
:mod:`bts_monai.inference.postprocess`: it scores each rule on the model's *training* cases (mean
Dice per region over cases, BraTS's convention: 1 when prediction and reference are both empty) and
picks the best, keeping ``none`` unless a rule is better by more than ``--min-gain``. It then prints
what each rule scores on the validation cases, for the model card only: the choice never looks at
them.

Give it the probability maps of every case, written with the model's own threshold and settings::

    bts-infer DATA/lgg_default/* -o PRED --probabilities --postprocess none
    python scripts/choose_postprocessing.py --model lgg_unet2d --data DATA/lgg_default --pred PRED \\
        --config configs/default_lgg.yaml --json choice.json

and record the choice with ``bts-export-model ... --postprocess RULE`` (or in the packaged
``metadata.json``'s ``inference.postprocess``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import yaml

from bts_monai.evaluation import read_mask_stack
from bts_monai.inference.postprocess import POSTPROCESSING, postprocess_masks
from bts_monai.labels import get_scheme
from bts_monai.model.packaged import MODELS_DIR, read_metadata


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(a, b).sum()) / total


def _reference(case_dir: Path, scheme_name: str) -> np.ndarray:
    """The case's reference regions, ``(regions, *spatial)`` booleans."""
    if scheme_name == "lgg":
        return (read_mask_stack(case_dir) > 0)[None]
    seg = next(p for p in sorted(case_dir.iterdir()) if p.name.endswith(("_seg.nii.gz", "_seg.nii")))
    return get_scheme(scheme_name).to_regions(np.asanyarray(nib.load(seg).dataobj).astype(np.int16)).astype(bool)


def score_cases(model: str, data: Path, pred: Path) -> dict[str, dict[str, list[float]]]:
    """Per case and rule, the Dice of each region after the model's threshold and the rule."""
    meta = read_metadata(MODELS_DIR / model)
    inference = meta["inference"]
    scheme = get_scheme(inference["scheme"])
    threshold = float(inference["threshold"])
    out: dict[str, dict[str, list[float]]] = {}
    for case_dir in sorted(p for p in data.iterdir() if p.is_dir()):
        probs = np.stack(
            [np.asanyarray(nib.load(pred / f"{case_dir.name}_prob_{r}.nii.gz").dataobj) for r in scheme.region_names]
        )
        ref = _reference(case_dir, inference["scheme"])
        if inference["label_mode"] != "regions":
            raise SystemExit(f"{model}: only region models are handled")
        out[case_dir.name] = {}
        for rule in POSTPROCESSING:
            masks = postprocess_masks(probs > threshold, rule)
            if scheme.name != "lgg":  # the regions the written labels mean (nesting as from_regions paints)
                masks = scheme.to_regions(scheme.from_regions(masks)).astype(bool)
            out[case_dir.name][rule] = [_dice(m, r) for m, r in zip(masks, ref)]
    return out


def summarise(scores: dict[str, dict[str, list[float]]], cases: list[str]) -> dict[str, dict[str, float]]:
    """Mean Dice per region (and mean/median over regions' case means) of each rule over ``cases``."""
    summary = {}
    for rule in POSTPROCESSING:
        per_case = np.array([scores[c][rule] for c in cases])
        summary[rule] = {
            "mean_dice": round(float(per_case.mean()), 4),
            "median_dice": round(float(np.median(per_case.mean(axis=1))), 4),
            "per_region": [round(float(x), 4) for x in per_case.mean(axis=0)],
        }
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="packaged model name")
    p.add_argument("--data", type=Path, required=True, help="folder of the model's case folders")
    p.add_argument("--pred", type=Path, required=True, help="bts-infer --probabilities outputs of every case")
    p.add_argument("--config", type=Path, required=True, help="the training config (its data.val_cases)")
    p.add_argument("--min-gain", type=float, default=0.005, help="mean Dice a rule must add over none")
    p.add_argument("--json", type=Path, help="write the scores and the choice here")
    args = p.parse_args()
    val = set(yaml.safe_load(args.config.read_text())["data"]["val_cases"])
    scores = score_cases(args.model, args.data, args.pred)
    train = [c for c in scores if c not in val]
    held = [c for c in scores if c in val]
    on_train, on_val = summarise(scores, train), summarise(scores, held)
    best = max(POSTPROCESSING, key=lambda r: on_train[r]["mean_dice"])
    gain = on_train[best]["mean_dice"] - on_train["none"]["mean_dice"]
    choice = best if gain > args.min_gain else "none"
    for name, summary, n in (("training", on_train, len(train)), ("validation", on_val, len(held))):
        for rule, s in summary.items():
            print(f"{name:10s} ({n:2d} cases) {rule:18s} mean {s['mean_dice']:.4f} median {s['median_dice']:.4f} "
                  f"per region {s['per_region']}")
    print(f"chosen on the training cases: {choice} (gain {gain:+.4f} over none)")
    if args.json:
        args.json.write_text(json.dumps({"choice": choice, "training": on_train, "validation": on_val,
                                         "training_cases": len(train), "validation_cases": len(held)}, indent=2))


if __name__ == "__main__":
    main()
