"""Evaluation API: case matching, label schemes, geometry checks, summary, CSV and plot."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bts_monai.errors import BtsInputError
from bts_monai.evaluation import (
    STATISTICS,
    case_id,
    evaluate,
    find_cases,
    match_cases,
    plot,
    resolve_scheme,
    summarize,
    write_csv,
)
from bts_monai.labels import get_scheme

B21 = get_scheme("brats2021")
B23 = get_scheme("brats2023")
LGG = get_scheme("lgg")
SHAPE = (16, 16, 12)


def label_of(scheme, name: str) -> int:
    """The label value a scheme gives a tissue (no label literals in tests either)."""
    return next(value for value, tissue in scheme.labels.items() if tissue == name)


def tumour(scheme, shift: int = 0) -> np.ndarray:
    """Nested boxes WT ⊃ TC ⊃ ET (10x10x8, 6x6x4, 4x4x2), shifted along x, in ``scheme``'s labels."""
    boxes = {
        "WT": np.s_[3 + shift : 13 + shift, 3:13, 2:10],
        "TC": np.s_[5 + shift : 11 + shift, 5:11, 4:8],
        "ET": np.s_[6 + shift : 10 + shift, 6:10, 5:7],
    }
    masks = np.zeros((scheme.num_regions, *SHAPE), dtype=bool)
    for index, name in enumerate(scheme.region_names):
        masks[index][boxes[name]] = True
    return scheme.from_regions(masks)


def write_nifti(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 1.0), affine: np.ndarray | None = None) -> Path:
    if affine is None:
        affine = np.diag([*spacing, 1.0])
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))
    return path


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("BraTS2021_00000_seg.nii.gz", "BraTS2021_00000"),
        ("BraTS2021_00000.nii.gz", "BraTS2021_00000"),
        ("BraTS2021_00000_pred.nii.gz", "BraTS2021_00000"),
        ("BraTS-GLI-00000-000-seg.nii.gz", "BraTS-GLI-00000-000"),
        ("Brats18_2013_11_1_seg.nii", "Brats18_2013_11_1"),
        ("TCGA_CS_4941_19960909_seg.nii.gz", "TCGA_CS_4941_19960909"),
    ],
)
def test_case_id(name: str, expected: str) -> None:
    assert case_id(name) == expected


def make_brats_pair(tmp_path: Path, cases: list[str], pred_names: list[str]) -> tuple[Path, Path]:
    """Ground truth in the BraTS 2021 layout (case folders, with an image) and flat predictions."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    for case in cases:
        write_nifti(gt / case / f"{case}_seg.nii.gz", tumour(B21))
        write_nifti(gt / case / f"{case}_flair.nii.gz", np.zeros(SHAPE, np.float32))
    for name in pred_names:
        write_nifti(pred / name, tumour(B21, shift=1))
    return pred, gt


def test_folder_matching_lists_unmatched_cases(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cases = ["BraTS2021_00000", "BraTS2021_00001", "BraTS2021_00002"]
    pred, gt = make_brats_pair(
        tmp_path, cases, ["BraTS2021_00000.nii.gz", "BraTS2021_00001_seg.nii.gz", "BraTS2021_00099_pred.nii.gz"]
    )
    result = evaluate(pred, gt)
    assert {row["case_id"] for row in result.rows} == {"BraTS2021_00000", "BraTS2021_00001"}
    assert len(result.rows) == 2 * len(B21.region_names)
    assert list(result.unmatched_gt) == ["BraTS2021_00002"]
    assert list(result.unmatched_pred) == ["BraTS2021_00099"]
    assert result.unmatched_pred["BraTS2021_00099"].name == "BraTS2021_00099_pred.nii.gz"
    assert "BraTS2021_00002" in caplog.text and "BraTS2021_00099" in caplog.text
    assert set(result.schemes.values()) == {"brats2021"}
    # The flair volumes in the case folders are not taken for ground truth.
    assert all(p.name.endswith("_seg.nii.gz") for p in find_cases(gt, ground_truth=True))


def test_linked_case_folders_are_found_once(tmp_path: Path) -> None:
    write_nifti(tmp_path / "store" / "c1" / "c1_seg.nii.gz", tumour(B21))
    (tmp_path / "split").mkdir()
    (tmp_path / "split" / "c1").symlink_to(tmp_path / "store" / "c1", target_is_directory=True)
    (tmp_path / "split" / "loop").symlink_to(tmp_path / "split", target_is_directory=True)
    assert [p.name for p in find_cases(tmp_path / "split", ground_truth=True)] == ["c1_seg.nii.gz"]


def test_match_cases_and_duplicates(tmp_path: Path) -> None:
    match = match_cases([tmp_path / "a.nii.gz", tmp_path / "b_seg.nii.gz"], [tmp_path / "gt" / "b_seg.nii.gz"])
    assert [c for c, _, _ in match.pairs] == ["b"]
    assert list(match.unmatched_pred) == ["a"] and not match.unmatched_gt
    with pytest.raises(BtsInputError, match="'a' is also given by"):
        match_cases([tmp_path / "a.nii.gz", tmp_path / "a_pred.nii.gz"], [])


def test_metrics_of_one_case_by_hand(tmp_path: Path) -> None:
    gt = write_nifti(tmp_path / "case_seg.nii.gz", tumour(B21), spacing=(2.0, 1.0, 1.0))
    pred = write_nifti(tmp_path / "other_name.nii.gz", tumour(B21, shift=1), spacing=(2.0, 1.0, 1.0))
    result = evaluate(pred, gt)  # two single files pair whatever their names
    rows = {row["region"]: row for row in result.rows}
    assert list(rows) == B21.region_names
    # ET is a 4x4x2 box shifted by one voxel along x: overlap 3/4 -> Dice 0.75, IoU 3/5.
    assert rows["ET"]["dice"] == pytest.approx(0.75)
    assert rows["ET"]["iou"] == pytest.approx(0.6)
    # WT is 10x10x8 shifted by one 2 mm voxel: the face left behind is 1 voxel = 2 mm from the other.
    assert rows["WT"]["dice"] == pytest.approx(0.9)
    assert rows["WT"]["hd95"] == pytest.approx(2.0)
    assert rows["WT"]["ref_volume_ml"] == pytest.approx(10 * 10 * 8 * 2.0 / 1000)


def test_brats2021_and_brats2023_labels_give_the_same_regions(tmp_path: Path) -> None:
    lab21, lab23 = tumour(B21), tumour(B23)
    et21, et23 = label_of(B21, "ET"), label_of(B23, "ET")
    assert et21 != et23 and (lab21 == et21).sum() == (lab23 == et23).sum() > 0
    np.testing.assert_array_equal(B21.to_regions(lab21), B23.to_regions(lab23))
    # The same array read with the other scheme is refused, naming the file.
    with pytest.raises(BtsInputError, match="lab.nii.gz"):
        B23.to_regions(lab21, "lab.nii.gz")

    r21 = evaluate(
        write_nifti(tmp_path / "p21" / "c.nii.gz", tumour(B21, 1)),
        write_nifti(tmp_path / "g21" / "c_seg.nii.gz", lab21),
    )
    r23 = evaluate(
        write_nifti(tmp_path / "p23" / "c.nii.gz", tumour(B23, 1)),
        write_nifti(tmp_path / "g23" / "c_seg.nii.gz", lab23),
    )
    assert set(r21.schemes.values()) == {"brats2021"} and set(r23.schemes.values()) == {"brats2023"}
    for a, b in zip(r21.rows, r23.rows):
        assert a == pytest.approx(b)
    # Forcing the wrong scheme is an error naming the file, not a silent empty ET.
    with pytest.raises(BtsInputError, match="c_seg.nii.gz"):
        evaluate(tmp_path / "p21" / "c.nii.gz", tmp_path / "g21" / "c_seg.nii.gz", scheme="brats2023")


def test_auto_scheme_rules(tmp_path: Path) -> None:
    et21, et23 = label_of(B21, "ET"), label_of(B23, "ET")
    shared = [v for v in B21.labels if v in B23.labels]  # background, core, oedema
    assert resolve_scheme(shared, shared).name == "brats2021"
    assert resolve_scheme([*shared, et23], shared).name == "brats2023"
    # Ground truth with only the shared labels: the prediction's ET label decides.
    assert resolve_scheme(shared, [*shared, et23]).name == "brats2023"
    assert resolve_scheme(shared, [*shared, et21]).name == "brats2021"
    assert resolve_scheme(LGG.all_values, LGG.all_values).name == "lgg"
    with pytest.raises(BtsInputError, match="gt.nii.gz: label values"):
        resolve_scheme([*shared, et21, et23], shared, "gt.nii.gz", "pred.nii.gz")
    with pytest.raises(BtsInputError, match="pred.nii.gz: label values"):
        resolve_scheme([*shared, et23], [*shared, et21], "gt.nii.gz", "pred.nii.gz")

    # A ground truth without ET and a prediction with the 2023 ET: regions read as brats2023.
    gt_lab = tumour(B23)
    gt_lab[gt_lab == et23] = label_of(B23, "NETC")
    result = evaluate(
        write_nifti(tmp_path / "p" / "c.nii.gz", tumour(B23)), write_nifti(tmp_path / "g" / "c_seg.nii.gz", gt_lab)
    )
    rows = {row["region"]: row for row in result.rows}
    assert result.schemes == {"c": "brats2023"}
    # The BraTS 2023 scheme scores a region one side leaves empty as its code does: 374 mm.
    assert rows["ET"]["dice"] == 0.0 and rows["ET"]["hd95"] == 374.0
    assert rows["WT"]["dice"] == 1.0


def test_geometry_mismatch_names_both_files(tmp_path: Path) -> None:
    gt = write_nifti(tmp_path / "g" / "c_seg.nii.gz", tumour(B21))
    moved = np.diag([1.0, 1.0, 1.0, 1.0])
    moved[0, 3] = 0.5
    pred = write_nifti(tmp_path / "p" / "c.nii.gz", tumour(B21), affine=moved)
    with pytest.raises(BtsInputError, match="affine") as info:
        evaluate(pred, gt)
    assert str(pred) in str(info.value) and str(gt) in str(info.value)
    small = write_nifti(tmp_path / "p2" / "c.nii.gz", tumour(B21)[:-1])
    with pytest.raises(BtsInputError, match="shape") as info:
        evaluate(small, gt)
    assert str(small) in str(info.value) and str(gt) in str(info.value)
    # Differences far below the tolerance are the same grid.
    nudged = np.eye(4)
    nudged[0, 3] = 1e-6
    evaluate(write_nifti(tmp_path / "p3" / "c.nii.gz", tumour(B21), affine=nudged), gt)


def test_bad_labels_and_bad_paths(tmp_path: Path) -> None:
    gt = write_nifti(tmp_path / "g" / "c_seg.nii.gz", tumour(B21))
    bad = tumour(B21)
    bad[0, 0, 0] = max(B21.all_values) + 3
    pred = write_nifti(tmp_path / "p" / "c.nii.gz", bad)
    with pytest.raises(BtsInputError, match=r"c.nii.gz: label values"):
        evaluate(pred, gt, scheme="brats2021")
    probs = write_nifti(tmp_path / "p2" / "c.nii.gz", np.full(SHAPE, 0.3, np.float32))
    with pytest.raises(BtsInputError, match="non-integer"):
        evaluate(probs, gt)
    with pytest.raises(BtsInputError, match="does not exist"):
        evaluate(tmp_path / "nowhere", gt)
    # A folder of BraTS images only (no *_seg, no flat labels) holds no ground truth.
    write_nifti(tmp_path / "images" / "c" / "c_flair.nii.gz", tumour(B21))
    write_nifti(tmp_path / "images" / "c_t1.nii.gz", tumour(B21))
    with pytest.raises(BtsInputError, match="no ground truth found"):
        evaluate(pred, tmp_path / "images")
    write_nifti(tmp_path / "p3" / "other.nii.gz", tumour(B21))
    with pytest.raises(BtsInputError, match="no prediction matches"):
        evaluate(tmp_path / "p3", tmp_path / "g")
    # Named explicitly, the one prediction is paired with the one ground-truth case.
    assert evaluate(tmp_path / "p3" / "other.nii.gz", tmp_path / "g").rows[0]["case_id"] == "c"


def write_lgg_patient(folder: Path, volume: np.ndarray) -> Path:
    """Slices ``<patient>_<n>_mask.tif``, n = 1.., plus the images that sit beside them."""
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    for n in range(volume.shape[-1]):
        tifffile.imwrite(folder / f"{folder.name}_{n + 1}_mask.tif", volume[..., n])
        tifffile.imwrite(folder / f"{folder.name}_{n + 1}.tif", np.zeros((*volume.shape[:2], 3), np.uint8))
    return folder


def test_lgg_tiff_slices_stack_in_numeric_order(tmp_path: Path) -> None:
    fg = LGG.foreground_labels[0]
    volume = np.zeros((8, 8, 11), np.uint8)
    volume[2:6, 2:6, 9] = fg  # slice 10: lexical order (1, 10, 11, 2, ...) would misplace it
    volume[1:3, 1:3, 1] = fg  # slice 2
    gt = write_lgg_patient(tmp_path / "kaggle_3m" / "TCGA_XX_0001_20000101", volume)
    write_lgg_patient(tmp_path / "kaggle_3m" / "TCGA_XX_0002_20000101", volume)

    # Stacked NIfTI predictions, one of them matching.
    pred_dir = tmp_path / "pred"
    write_nifti(pred_dir / "TCGA_XX_0001_20000101_seg.nii.gz", volume)
    result = evaluate(pred_dir, tmp_path / "kaggle_3m")
    assert result.schemes == {"TCGA_XX_0001_20000101": "lgg"}
    assert [r["region"] for r in result.rows] == LGG.region_names
    assert result.rows[0]["dice"] == 1.0
    assert list(result.unmatched_gt) == ["TCGA_XX_0002_20000101"]

    # A prediction folder of mask slices, one slice moved.
    moved = volume.copy()
    moved[..., 9], moved[..., 8] = volume[..., 8], volume[..., 9]
    pred = write_lgg_patient(tmp_path / "pred_tif" / "TCGA_XX_0001_20000101", moved)
    row = evaluate(pred, gt).rows[0]
    assert row["dice"] == pytest.approx(2 * 4 / (20 + 20))  # only the 2x2 of slice 2 still agrees
    # TIFF slices carry no spacing: distances and sizes are in pixels, and their names say so.
    assert row["hd95_px"] == pytest.approx(1.0)
    assert (row["pred_area_px"], row["ref_area_px"]) == (20, 20)
    assert not {"hd95", "pred_volume_ml", "ref_volume_ml"} & set(row)


def test_lesion_wise_columns(tmp_path: Path) -> None:
    gt = write_nifti(tmp_path / "c_seg.nii.gz", tumour(B21))
    pred = write_nifti(tmp_path / "c.nii.gz", tumour(B21))
    rows = evaluate(pred, gt, lesion_wise=True, min_volume=10).rows
    for row in rows:
        assert row["lesion_dice"] == 1.0 and row["lesion_hd95"] == 0.0
        assert (row["lesion_tp"], row["lesion_fn"], row["lesion_fp"]) == (1, 0, 0)
    assert "lesion_dice" not in evaluate(pred, gt).rows[0]


def test_summarize_statistics() -> None:
    rows = [
        {"case_id": f"c{i}", "region": "WT", "dice": d, "hd95": float(i)} for i, d in enumerate([0.2, 0.4, 0.6, 0.8])
    ]
    rows.append({"case_id": "c9", "region": "ET", "dice": math.nan, "hd95": 1.0})
    summary = summarize(rows)
    assert [(s["region"], s["statistic"]) for s in summary] == [("WT", s) for s in STATISTICS] + [
        ("ET", s) for s in STATISTICS
    ]
    wt = {s["statistic"]: s for s in summary if s["region"] == "WT"}
    assert wt["mean"]["dice"] == pytest.approx(0.5)
    assert wt["std"]["dice"] == pytest.approx(math.sqrt((0.09 + 0.01 + 0.01 + 0.09) / 4))
    assert wt["median"]["dice"] == pytest.approx(0.5)
    assert wt["p25"]["dice"] == pytest.approx(0.35)  # linear interpolation: 0.2 + 0.75 * 0.2
    assert wt["p75"]["dice"] == pytest.approx(0.65)
    assert wt["mean"]["cases"] == 4
    et = {s["statistic"]: s for s in summary if s["region"] == "ET"}
    assert math.isnan(et["mean"]["dice"]) and et["mean"]["hd95"] == 1.0


def test_write_csv_and_plot(tmp_path: Path) -> None:
    pred, gt = make_brats_pair(tmp_path, ["c1", "c2"], ["c1.nii.gz", "c2.nii.gz"])
    result = evaluate(pred, gt, lesion_wise=True)
    out = write_csv(result.rows, result.summary, tmp_path / "out" / "metrics.csv")
    with open(out, newline="") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0])[:4] == ["case_id", "region", "statistic", "dice"]
    case_rows = [r for r in table if r["statistic"] == ""]
    summary_rows = [r for r in table if r["statistic"]]
    assert len(case_rows) == 2 * 3
    assert {(r["case_id"], r["statistic"]) for r in summary_rows} == {("summary", s) for s in STATISTICS}
    assert len(summary_rows) == 3 * len(STATISTICS)
    wt_mean = next(r for r in summary_rows if r["region"] == "WT" and r["statistic"] == "mean")
    assert float(wt_mean["dice"]) == pytest.approx(result.rows[1]["dice"])
    assert "lesion_dice" in table[0]
    assert sorted(p.name for p in out.parent.iterdir()) == ["metrics.csv"]  # no temporary left behind

    png = plot(result.rows, tmp_path / "out" / "metrics.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in png.parent.iterdir()) == ["metrics.csv", "metrics.png"]
