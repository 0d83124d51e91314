"""Issue 20 items 3 and 4: ``bts-eval`` reads what ``bts-infer`` writes for an LGG patient (a multi-page
``<patient>_seg.tif``, paired with the patient's folder of mask slices), in pixel units by name unless
``--spacing`` gives millimetres, and agrees with ``bts-infer``'s report on the tumour's size."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from bts_monai.cli.eval import main as bts_eval
from bts_monai.cli.infer import main as bts_infer
from bts_monai.data.synthetic import make_lgg_patient

sys.path.insert(0, str(Path(__file__).parent / "inference"))
from infer_helpers import lgg_config, save_tiny_checkpoint  # noqa: E402

PATIENT = "TCGA_SY_1001_20010101"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "lgg.ckpt", lgg_config())


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return [r for r in csv.DictReader(fh) if not r["statistic"]]


@pytest.mark.parametrize("n_slices", [3, 6])  # 3 slices: the count tifffile would store as one RGB page
def test_eval_scores_bts_infer_lgg_output(tmp_path, ckpt, n_slices):
    data = tmp_path / "kaggle_3m"
    patient = make_lgg_patient(data, PATIENT, n_slices=n_slices, size=32, seed=5)
    preds = tmp_path / "preds"
    preds.mkdir()  # an existing folder: the default name <patient>_seg.tif in it
    assert bts_infer([str(patient), "--ckpt", str(ckpt), "-o", str(preds), "--report", str(tmp_path / "r.json")]) == 0
    seg = preds / f"{PATIENT}_seg.tif"
    pages = tifffile.imread(seg)
    assert pages.shape == (n_slices, 32, 32)  # one page per slice

    pred = pages > 0
    gt = np.stack([tifffile.imread(patient / f"{PATIENT}_{n}_mask.tif") > 0 for n in range(1, n_slices + 1)])
    both = pred.sum() + gt.sum()
    dice = 1.0 if both == 0 else 2 * (pred & gt).sum() / both

    assert bts_eval([str(preds), str(data), "-o", str(tmp_path / "px.csv")]) == 0  # a folder of predictions
    assert bts_eval([str(seg), str(patient), "-o", str(tmp_path / "one.csv")]) == 0  # the file and its patient
    for name in ("px.csv", "one.csv"):
        (row,) = _rows(tmp_path / name)
        assert row["case_id"] == PATIENT and float(row["dice"]) == pytest.approx(dice)
        assert int(row["pred_area_px"]) == int(pred.sum()) and int(row["ref_area_px"]) == int(gt.sum())
        assert "hd95_px" in row and "hd95" not in row and "pred_volume_ml" not in row

    report = json.loads((tmp_path / "r.json").read_text())  # bts-infer: the same count, no mL
    (region,) = report["regions"]
    assert region["voxels"] == int(pred.sum()) and region["volume_ml"] is None

    assert bts_eval([str(preds), str(data), "-o", str(tmp_path / "mm.csv"), "--spacing", "1", "1", "2.5"]) == 0
    (row,) = _rows(tmp_path / "mm.csv")
    assert float(row["pred_volume_ml"]) == pytest.approx(pred.sum() * 2.5 / 1000)
    assert "hd95" in row and "hd95_px" not in row
