"""``bts-eval`` on the layouts users arrive with, built from the real cases: nnU-Net-style flat
folders of ``<case>.nii.gz`` predictions against an nnU-Net dataset's ``labelsTr/<case>.nii.gz``
(its ``dataset.json`` names the labels, region-based as nnU-Net's BraTS datasets write them), and
a flat folder of BraTS 2023 labels (float32). A case scored against itself has Dice 1 and HD95 0,
and the reference volumes are those counted from the source files."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bts_monai.cli.eval import main as eval_main
from bts_monai.evaluation import evaluate

# Region definitions written out here, independently of labels.py, to check it.
LEGACY_REGIONS = {"TC": (1, 4), "WT": (1, 2, 4), "ET": (4,)}
REGIONS_2023 = {"TC": (1, 3), "WT": (1, 2, 3), "ET": (3,)}
# nnU-Net's Dataset137_BraTS2021 conversion: 2 (oedema) -> 1, 1 (necrosis) -> 2, 4 (ET) -> 3,
# trained on regions; its dataset.json lists the regions as label lists.
NNUNET_BRATS_LABELS = {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": [3]}
TO_NNUNET = {0: 0, 2: 1, 1: 2, 4: 3}

pytestmark = pytest.mark.real_data


def _ml(label: np.ndarray, values: tuple[int, ...], affine: np.ndarray) -> float:
    voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    return int(np.isin(label, values).sum()) * voxel_mm3 / 1000.0


def _nnunet_dataset(real_data: Path, root: Path, cases: list[str]) -> tuple[Path, dict[str, np.ndarray]]:
    """``root/Dataset137_BraTS/labelsTr/BraTS2021_0000K.nii.gz`` (relabelled from real 2018 cases),
    and the source labels by case id."""
    ds = root / "Dataset137_BraTS"
    (ds / "labelsTr").mkdir(parents=True)
    (ds / "imagesTr").mkdir()
    sources = {}
    for i, name in enumerate(cases):
        cid = f"BraTS2021_{i:05d}"
        src = real_data / "brats2018" / name
        seg = nib.load(src / f"{name}_seg.nii.gz")
        legacy = np.asanyarray(seg.dataobj)
        relabelled = np.zeros(legacy.shape, np.uint8)
        for old, new in TO_NNUNET.items():
            relabelled[legacy == old] = new
        nib.save(nib.Nifti1Image(relabelled, seg.affine, seg.header), ds / "labelsTr" / f"{cid}.nii.gz")
        for k, m in enumerate(("flair", "t1", "t1ce", "t2")):
            (ds / "imagesTr" / f"{cid}_{k:04d}.nii.gz").symlink_to(src / f"{name}_{m}.nii.gz")
        sources[cid] = legacy
    info = {
        "channel_names": {"0": "FLAIR", "1": "T1", "2": "T1ce", "3": "T2"},
        "labels": NNUNET_BRATS_LABELS,
        "regions_class_order": [1, 2, 3],
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
    }
    (ds / "dataset.json").write_text(json.dumps(info))
    return ds, sources


def test_nnunet_flat_predictions_against_labels_tr_score_dice_1(
    real_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ds, sources = _nnunet_dataset(real_data, tmp_path, ["Brats18_CBICA_AQN_1", "Brats18_2013_11_1"])
    pred = tmp_path / "predictions"  # what nnUNetv2_predict writes: <case>.nii.gz, flat
    pred.mkdir()
    for f in (ds / "labelsTr").iterdir():
        shutil.copy(f, pred / f.name)
    shutil.copy(ds / "labelsTr" / "BraTS2021_00000.nii.gz", pred / "BraTS2021_00099.nii.gz")  # no ground truth

    for gt in (ds, ds / "labelsTr"):  # the dataset folder or its labelsTr/
        result = evaluate(pred, gt)
        assert set(result.unmatched_pred) == {"BraTS2021_00099"} and not result.unmatched_gt
        assert sorted({r["case_id"] for r in result.rows}) == sorted(sources)
        for row in result.rows:
            assert row["dice"] == 1.0 and row["hd95"] == 0.0, row
            affine = nib.load(ds / "labelsTr" / f"{row['case_id']}.nii.gz").affine
            expected = _ml(sources[row["case_id"]], LEGACY_REGIONS[row["region"]], affine)
            assert row["ref_volume_ml"] == pytest.approx(expected), row

    out = tmp_path / "metrics.csv"
    assert eval_main([str(pred), str(ds), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2 case(s)" in printed
    rows = [r for r in csv.DictReader(out.open()) if r["case_id"] in sources]
    assert len(rows) == 6 and {float(r["dice"]) for r in rows} == {1.0}


def test_flat_brats2023_labels_float32_score_dice_1(real_data: Path, tmp_path: Path) -> None:
    src = real_data / "brats2023" / "BraTS-GLI-00000-000" / "BraTS-GLI-00000-000-seg.nii.gz"
    gt, pred = tmp_path / "labels", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    shutil.copy(src, gt / "BraTS-GLI-00000-000.nii.gz")  # float32 on disk, as released
    shutil.copy(src, pred / "BraTS-GLI-00000-000.nii.gz")
    img = nib.load(src)
    assert img.get_data_dtype() == np.float32
    label = np.asanyarray(img.dataobj)
    result = evaluate(pred, gt)
    assert result.schemes == {"BraTS-GLI-00000-000": "brats2023"}
    for row in result.rows:
        assert row["dice"] == 1.0 and row["hd95"] == 0.0, row
        assert row["ref_volume_ml"] == pytest.approx(_ml(label, REGIONS_2023[row["region"]], img.affine))
