"""The packaged default models on the real validation cases they report on (needs BTS_REAL_DATA)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile

from bts_monai.data.discovery import discover
from bts_monai.inference.predictor import Predictor
from bts_monai.labels import get_scheme
from bts_monai.model.metrics import dice
from bts_monai.model.packaged import DEFAULT_MODELS, MODELS_DIR

pytestmark = [pytest.mark.real_data, pytest.mark.slow]

# Untrained twins of both networks score about 0.02 on these cases (metadata "untrained_mean_per_region").
DICE_FLOOR = 0.6
# lgg_unet2d 3.0.0 scores 0.79-0.94 on the three validation patients ../shared/data/lgg holds.
LGG_DICE_FLOOR = 0.75


def _val_cases(kind: str, folder: Path) -> list[str]:
    """The model's validation cases that ``folder`` holds (the others live outside ../shared/data)."""
    meta = json.loads((MODELS_DIR / DEFAULT_MODELS[kind] / "metadata.json").read_text())
    found = [c for c in meta["training_data"]["val_cases"] if (folder / c).is_dir()]
    assert len(found) >= 3, f"fewer than 3 validation cases of {kind} in {folder}"
    return found


def test_lgg_default_per_patient_dice(real_data: Path):
    predictor = Predictor.from_packaged(kind="lgg")
    scores = []
    for patient in _val_cases("lgg", real_data / "lgg" / "kaggle_3m"):
        folder = real_data / "lgg" / "kaggle_3m" / patient
        pred = predictor.predict(str(folder))
        (entry,) = discover(folder.parent / patient, dataset="lgg")
        ref = np.stack([tifffile.imread(s["label"]) > 0 for s in entry["slices"]], axis=-1)
        got = pred.regions[0]
        assert got.shape == ref.shape
        scores.append(dice(got, ref))
    assert np.mean(scores) >= LGG_DICE_FLOOR, scores


def test_brats_default_wt_dice_and_geometry(real_data: Path):
    predictor = Predictor.from_packaged(kind="brats")
    scheme = get_scheme("brats2018")
    scores = []
    for case_id in _val_cases("brats", real_data / "brats2018"):
        case = real_data / "brats2018" / case_id
        pred = predictor.predict(str(case))
        seg_img = nib.load(case / f"{case_id}_seg.nii.gz")
        ref = scheme.to_regions(np.asanyarray(seg_img.dataobj))
        assert pred.labels.shape == seg_img.shape and pred.labels.dtype == np.uint8
        assert set(np.unique(pred.labels)) <= set(scheme.all_values)
        scores.append(dice(pred.regions[scheme.region_names.index("WT")], ref[scheme.region_names.index("WT")]))
    assert np.mean(scores) >= DICE_FLOOR, scores
