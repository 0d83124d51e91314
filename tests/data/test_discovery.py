from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile

from bts_monai.cli.datalist import main as datalist_main
from bts_monai.data.discovery import (
    check_case,
    discover,
    make_datalist,
    read_datalist,
    select_split,
    split_entries,
    write_datalist,
)
from bts_monai.data.synthetic import make_brats_case, make_brats_dataset, make_lgg_patient
from bts_monai.errors import BtsInputError

MODS = ("flair", "t1", "t1ce", "t2")


def test_brats2021_layout(brats21_root: Path):
    entries = discover(brats21_root)
    assert [e["case_id"] for e in entries] == [f"BraTS2021_{i:05d}" for i in range(4)]
    e = entries[0]
    assert e["dataset"] == "brats2021"
    for m in MODS:
        assert e[m].endswith(f"BraTS2021_00000_{m}.nii.gz")
    assert e["label"].endswith("_seg.nii.gz")


def test_brats2020_kaggle_layout_with_quirks(tmp_path: Path):
    root = make_brats_dataset(tmp_path / "k", n_cases=2, layout="brats2020", shape=(16, 16, 12))
    train = root / "BraTS2020_TrainingData" / "MICCAI_BraTS2020_TrainingData"
    make_brats_case(train, "BraTS20_Training_355", (16, 16, 12), compressed=False, label_name="W39_1998.09.19_Segm")
    (train / "name_mapping.csv").write_text("a,b\n")
    val = root / "BraTS2020_ValidationData" / "MICCAI_BraTS2020_ValidationData"
    make_brats_case(val, "BraTS20_Validation_001", (16, 16, 12), compressed=False, with_label=False)
    entries = {e["case_id"]: e for e in discover(root)}
    assert set(entries) == {
        "BraTS20_Training_001",
        "BraTS20_Training_002",
        "BraTS20_Training_355",
        "BraTS20_Validation_001",
    }
    assert {e["dataset"] for e in entries.values()} == {"brats2020"}
    assert entries["BraTS20_Training_355"]["label"].endswith("W39_1998.09.19_Segm.nii")
    assert entries["BraTS20_Training_001"]["flair"].endswith(".nii")
    assert "label" not in entries["BraTS20_Validation_001"]
    dl = make_datalist(root, val_fraction=0.34, seed=1)
    assert [e["case_id"] for e in dl["test"]] == ["BraTS20_Validation_001"]
    assert len(dl["training"]) + len(dl["validation"]) == 3
    assert dl["datasets"]["brats2020"] == {"cases": 4, "labelled": 3, "slices": 0}


@pytest.mark.parametrize(
    ("case_id", "dataset"),
    [("Brats17_TCIA_1_1", "brats2017"), ("Brats18_2013_2_1", "brats2018"), ("BraTS19_CBICA_AAB_1", "brats2019")],
)
def test_earlier_brats_names(tmp_path: Path, case_id: str, dataset: str):
    make_brats_case(tmp_path, case_id, (8, 8, 8))
    (e,) = discover(tmp_path)
    assert (e["case_id"], e["dataset"]) == (case_id, dataset)


def test_lgg_numeric_order_nested_duplicate_and_csv(tmp_path: Path):
    root = tmp_path / "kaggle_3m"
    make_lgg_patient(root, "TCGA_CS_0001_20000101", n_slices=11, size=16)
    make_lgg_patient(root, "TCGA_CS_0002_20000101", n_slices=3, size=16)
    # The Kaggle archive nests a duplicate copy of the set.
    make_lgg_patient(root / "lgg-mri-segmentation" / "kaggle_3m", "TCGA_CS_0001_20000101", n_slices=11, size=16)
    (root / "data.csv").write_text("Patient\nTCGA_CS_0001\n")
    (root / "README.md").write_text("readme")
    entries = discover(root)
    assert [e["case_id"] for e in entries] == ["TCGA_CS_0001_20000101", "TCGA_CS_0002_20000101"]
    names = [Path(s["image"]).name for s in entries[0]["slices"]]
    assert names[:3] == ["TCGA_CS_0001_20000101_1.tif", "TCGA_CS_0001_20000101_2.tif", "TCGA_CS_0001_20000101_3.tif"]
    assert names[-2:] == ["TCGA_CS_0001_20000101_10.tif", "TCGA_CS_0001_20000101_11.tif"]
    assert all(Path(s["label"]).name == Path(s["image"]).stem + "_mask.tif" for s in entries[0]["slices"])
    assert "lgg-mri-segmentation" not in entries[0]["slices"][0]["image"]


def test_split_is_by_patient_seeded_and_kfold(lgg_root: Path):
    entries = discover(lgg_root)
    a = split_entries(entries, val_fraction=0.34, seed=3)
    b = split_entries(entries, val_fraction=0.34, seed=3)
    assert [e["case_id"] for e in a["validation"]] == [e["case_id"] for e in b["validation"]]
    assert len(a["validation"]) == 1 and len(a["training"]) == 2
    assert all("slices" in e for e in a["validation"])  # whole patients, never single slices
    k = split_entries(entries, folds=3, seed=0)
    assert sorted(e["fold"] for e in k["training"]) == [0, 1, 2]
    dl = {"split": {"mode": "kfold", "folds": 3}, **k}
    train, val = select_split(dl, fold=1)
    assert len(val) == 1 and val[0]["fold"] == 1 and len(train) == 2


def test_datalist_json_round_trip_relative_paths(brats21_root: Path, tmp_path: Path):
    dl = make_datalist(brats21_root, folds=2, seed=0)
    out = tmp_path / "sub" / "dl.json"
    write_datalist(dl, out)
    raw = json.loads(out.read_text())
    assert not Path(raw["training"][0]["flair"]).is_absolute()
    back = read_datalist(out)
    assert Path(back["training"][0]["flair"]).exists()
    assert back["split"] == {"mode": "kfold", "folds": 2, "seed": 0}


def test_cli_writes_datalist_and_summary(brats21_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "dl.json"
    assert datalist_main([str(brats21_root), "-o", str(out), "--folds", "2", "--seed", "4"]) == 0
    assert "brats2021: 4 cases, 4 with labels" in capsys.readouterr().out
    assert len(read_datalist(out)["training"]) == 4


# ---- bad input: each one names the file and the problem; the CLI exits 2 -------------------


def _cli_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert datalist_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_missing_modality(tmp_path: Path, capsys):
    case = make_brats_case(tmp_path, "BraTS2021_00001", (8, 8, 8))
    (case / "BraTS2021_00001_t1ce.nii.gz").unlink()
    err = _cli_error([str(tmp_path), "-o", str(tmp_path / "d.json")], capsys)
    assert "BraTS2021_00001" in err and "missing modality t1ce" in err
    assert not (tmp_path / "d.json").exists()


def test_shape_mismatch(tmp_path: Path, capsys):
    case = make_brats_case(tmp_path, "BraTS2021_00001", (8, 8, 8))
    nib.save(
        nib.Nifti1Image(np.zeros((8, 8, 9), np.int16), np.diag([-1, -1, 1, 1])), case / "BraTS2021_00001_t2.nii.gz"
    )
    err = _cli_error([str(tmp_path), "-o", str(tmp_path / "d.json")], capsys)
    assert "BraTS2021_00001_t2.nii.gz" in err and "shape (8, 8, 9) differs" in err


def test_affine_mismatch(tmp_path: Path, capsys):
    case = make_brats_case(tmp_path, "BraTS2021_00001", (8, 8, 8))
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), np.diag([2, 1, 1, 1])), case / "BraTS2021_00001_t1.nii.gz")
    err = _cli_error([str(tmp_path), "-o", str(tmp_path / "d.json")], capsys)
    assert "BraTS2021_00001_t1.nii.gz" in err and "affine differs" in err


def test_unexpected_label_values(tmp_path: Path, capsys):
    case = make_brats_case(tmp_path, "BraTS2021_00001", (8, 8, 8))
    seg = np.zeros((8, 8, 8), np.uint8)
    seg[2, 2, 2] = 3
    nib.save(
        nib.Nifti1Image(seg, nib.load(case / "BraTS2021_00001_seg.nii.gz").affine), case / "BraTS2021_00001_seg.nii.gz"
    )
    err = _cli_error([str(tmp_path), "-o", str(tmp_path / "d.json"), "--verify"], capsys)
    assert "BraTS2021_00001_seg.nii.gz" in err and "unexpected: [3]" in err


def test_truncated_nifti(tmp_path: Path, capsys):
    case = make_brats_case(tmp_path, "BraTS2021_00001", (16, 16, 16))
    f = case / "BraTS2021_00001_flair.nii.gz"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    err = _cli_error([str(tmp_path), "-o", str(tmp_path / "d.json"), "--verify"], capsys)
    assert "BraTS2021_00001_flair.nii.gz: " in err and "truncated" in err


def test_corrupt_nifti(tmp_path: Path, capsys):
    case = make_brats_case(tmp_path, "BraTS2021_00001", (8, 8, 8))
    (case / "BraTS2021_00001_t1.nii.gz").write_bytes(gzip.compress(b"not a nifti header" * 30))
    err = _cli_error([str(tmp_path), "-o", str(tmp_path / "d.json")], capsys)
    assert "BraTS2021_00001_t1.nii.gz: cannot read as NIfTI" in err


def test_tif_without_mask(tmp_path: Path, capsys):
    pdir = make_lgg_patient(tmp_path, "TCGA_AA_0001_20000101", n_slices=3, size=8)
    (pdir / "TCGA_AA_0001_20000101_2_mask.tif").unlink()
    err = _cli_error([str(tmp_path), "-o", str(tmp_path / "d.json")], capsys)
    assert "TCGA_AA_0001_20000101_2.tif" in err and "no mask" in err


def test_lgg_mask_values_checked(tmp_path: Path, capsys):
    pdir = make_lgg_patient(tmp_path, "TCGA_AA_0001_20000101", n_slices=2, size=8)
    tifffile.imwrite(pdir / "TCGA_AA_0001_20000101_1_mask.tif", np.full((8, 8), 7, np.uint8))
    err = _cli_error([str(tmp_path), "-o", str(tmp_path / "d.json"), "--verify"], capsys)
    assert "TCGA_AA_0001_20000101_1_mask.tif" in err and "unexpected: [7]" in err


def test_empty_and_unknown_folders(tmp_path: Path, capsys):
    (tmp_path / "empty").mkdir()
    assert "folder is empty" in _cli_error([str(tmp_path / "empty")], capsys)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "scan.dcm").write_bytes(b"x")
    assert "unknown layout" in _cli_error([str(tmp_path / "other")], capsys)
    assert "does not exist" in _cli_error([str(tmp_path / "nope")], capsys)


def test_check_case_full_passes_on_good_case(brats21_root: Path):
    for e in discover(brats21_root):
        check_case(e, full=True)
    with pytest.raises(BtsInputError):
        check_case({**discover(brats21_root)[0], "t1": str(brats21_root / "missing.nii.gz")})


# ---- real data ---------------------------------------------------------------------------


@pytest.mark.real_data
def test_real_brats2018_and_lgg_counts(real_data: Path, tmp_path: Path, capsys):
    assert datalist_main([str(real_data / "brats2018"), "-o", str(tmp_path / "b.json")]) == 0
    assert "brats2018: 10 cases, 10 with labels" in capsys.readouterr().out
    assert datalist_main([str(real_data / "lgg" / "kaggle_3m"), "-o", str(tmp_path / "l.json")]) == 0
    assert "lgg: 8 cases, 8 with labels, 179 slices" in capsys.readouterr().out


@pytest.mark.real_data
def test_real_files_in_2021_and_kaggle_2020_layouts(real_data: Path, tmp_path: Path):
    cases = sorted((real_data / "brats2018").iterdir())[:3]
    r21 = tmp_path / "BraTS2021_Training_Data"
    for i, case in enumerate(cases):
        d = r21 / f"BraTS2021_{i:05d}"
        d.mkdir(parents=True)
        for kind in (*MODS, "seg"):
            (d / f"BraTS2021_{i:05d}_{kind}.nii.gz").symlink_to(case / f"{case.name}_{kind}.nii.gz")
    assert {e["dataset"] for e in discover(r21)} == {"brats2021"}
    assert len(discover(r21)) == 3

    r20 = tmp_path / "brats20"
    train = r20 / "BraTS2020_TrainingData" / "MICCAI_BraTS2020_TrainingData"
    val = r20 / "BraTS2020_ValidationData" / "MICCAI_BraTS2020_ValidationData"
    layout = [
        (train, "BraTS20_Training_354", "seg"),
        (train, "BraTS20_Training_355", "W39_1998.09.19_Segm"),
        (val, "BraTS20_Validation_001", None),
    ]
    for (parent, cid, seg_name), case in zip(layout, cases):
        d = parent / cid
        d.mkdir(parents=True)
        kinds = [*MODS, "seg"] if seg_name else list(MODS)
        for kind in kinds:
            name = (seg_name if kind == "seg" and seg_name != "seg" else f"{cid}_{kind}") + ".nii"
            with gzip.open(case / f"{case.name}_{kind}.nii.gz") as src, open(d / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
    dl = make_datalist(r20, val_fraction=0.5, full_check=True)
    assert dl["datasets"] == {"brats2020": {"cases": 3, "labelled": 2, "slices": 0}}
    assert [e["case_id"] for e in dl["test"]] == ["BraTS20_Validation_001"]


def test_linked_case_folders_are_followed_once(brats21_root: Path, lgg_root: Path, tmp_path: Path):
    """Datasets assembled from folders of links are found (as bts-eval finds them); a link loop
    or a folder reached twice does not repeat a case."""
    linked = tmp_path / "brats_links"
    linked.mkdir()
    for case in sorted(p for p in brats21_root.iterdir() if p.is_dir())[:2]:
        (linked / case.name).symlink_to(case, target_is_directory=True)
    (linked / "loop").symlink_to(linked, target_is_directory=True)
    assert [e["case_id"] for e in discover(linked)] == ["BraTS2021_00000", "BraTS2021_00001"]
    kaggle = tmp_path / "kaggle_3m"
    kaggle.mkdir()
    patients = sorted(p for p in lgg_root.rglob("TCGA_*") if p.is_dir())[:2]
    for patient in patients:
        (kaggle / patient.name).symlink_to(patient, target_is_directory=True)
    entries = discover(kaggle, dataset="lgg")
    assert [e["case_id"] for e in entries] == [p.name for p in patients]
    assert all(e["slices"] for e in entries)
