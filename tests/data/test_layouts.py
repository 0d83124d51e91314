"""Every dataset layout, built in a temporary folder from the real cases: detected as what it is,
with the same voxel count per region as the source files; and the bad inputs each layout invites."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bts_monai.cli.datalist import main as datalist_main
from bts_monai.data.discovery import discover, entry_scheme, export_nnunet, make_datalist
from bts_monai.data.layouts import (
    check_same_grid,
    parse_modality_file,
    parse_nnunet_image,
    segmentation_case_id,
)
from bts_monai.data.synthetic import make_brats_case
from bts_monai.errors import BtsInputError

MODS = ("flair", "t1", "t1ce", "t2")
# Region definitions written out independently of labels.py, to check it.
LEGACY_REGIONS = {"TC": (1, 4), "WT": (1, 2, 4), "ET": (4,)}
REGIONS_2023 = {"TC": (1, 3), "WT": (1, 2, 3), "ET": (3,)}


def _counts(label: np.ndarray, regions: dict[str, tuple[int, ...]]) -> dict[str, int]:
    return {r: int(np.isin(label, v).sum()) for r, v in regions.items()}


def _entry_counts(entry: dict) -> dict[str, int]:
    label = np.asanyarray(nib.load(entry["label"]).dataobj)
    masks = entry_scheme(entry).region_masks(label, ["TC", "WT", "ET"])
    return {r: int(m.sum()) for r, m in zip(["TC", "WT", "ET"], masks)}


def _crop(img: nib.Nifti1Image, box: tuple[slice, ...]) -> nib.Nifti1Image:
    return img.slicer[box]


def _tumour_box(seg: np.ndarray, pad: int = 4) -> tuple[slice, ...]:
    idx = np.argwhere(seg > 0)
    lo, hi = np.maximum(idx.min(0) - pad, 0), np.minimum(idx.max(0) + pad + 1, seg.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def test_name_rules():
    assert parse_modality_file("BraTS-GLI-00000-000-t1c.nii.gz").kind == "t1ce"
    assert parse_modality_file("BraTS-MEN-00004-000-t2f.nii.gz").layout == "brats2023"
    assert parse_modality_file("Brats18_2013_2_1_t1ce.nii.gz").kind == "t1ce"
    assert parse_modality_file("case_t2f.nii.gz") is None
    assert parse_modality_file("case_t2f.nii.gz", strict=False).kind == "flair"
    n = parse_nnunet_image("BRATS_001_0003.nii.gz")
    assert (n.case, n.channel) == ("BRATS_001", 3)
    assert segmentation_case_id("BraTS-GLI-00000-000-seg.nii.gz") == "BraTS-GLI-00000-000"
    assert segmentation_case_id("BRATS_001.nii.gz") == "BRATS_001"
    check_same_grid("a", (2, 2, 2), np.eye(4), "b", (2, 2, 2), np.eye(4) + 1e-5)
    with pytest.raises(BtsInputError, match="a: affine differs from b's"):
        check_same_grid("a", (2, 2, 2), np.eye(4), "b", (2, 2, 2), np.diag([1, 1, 1.01, 1]))


@pytest.mark.real_data
def test_brats2023_case_detected_with_its_scheme(real_data: Path, tmp_path: Path):
    src = real_data / "brats2023" / "BraTS-GLI-00000-000"
    case = tmp_path / "BraTS2023" / src.name
    case.mkdir(parents=True)
    for f in src.iterdir():
        (case / f.name).symlink_to(f)
    (e,) = discover(tmp_path)
    assert (e["dataset"], e["scheme"], e["cohort"]) == ("brats2023", "brats2023", "GLI")
    assert e["t1ce"].endswith("-t1c.nii.gz") and e["flair"].endswith("-t2f.nii.gz")
    seg = np.asanyarray(nib.load(src / f"{src.name}-seg.nii.gz").dataobj)  # float32
    assert _entry_counts(e) == _counts(seg, REGIONS_2023)
    dl = make_datalist(tmp_path, val_fraction=0.0, full_check=True)
    assert dl["datasets"] == {"brats2023": {"cases": 1, "labelled": 1, "slices": 0}}


@pytest.mark.real_data
def test_msd_task01_4d_detected_and_relabelled(real_data: Path, tmp_path: Path):
    src = real_data / "brats2018" / "Brats18_CBICA_AQN_1"
    seg_img = nib.load(src / f"{src.name}_seg.nii.gz")
    seg = np.asanyarray(seg_img.dataobj)
    box = _tumour_box(seg)
    task = tmp_path / "Task01_BrainTumour"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (task / sub).mkdir(parents=True)
    vols = [np.asanyarray(_crop(nib.load(src / f"{src.name}_{m}.nii.gz"), box).dataobj) for m in MODS]
    cropped = _crop(seg_img, box)
    affine = cropped.affine
    nib.save(nib.Nifti1Image(np.stack(vols, -1), affine), task / "imagesTr" / "BRATS_001.nii.gz")
    nib.save(nib.Nifti1Image(np.stack(vols, -1), affine), task / "imagesTs" / "BRATS_900.nii.gz")
    legacy = np.asanyarray(cropped.dataobj)
    msd = np.zeros_like(legacy, dtype=np.uint8)
    msd[legacy == 2], msd[legacy == 1], msd[legacy == 4] = 1, 2, 3  # MSD: 1 oedema, 2 NET, 3 ET
    nib.save(nib.Nifti1Image(msd, affine), task / "labelsTr" / "BRATS_001.nii.gz")
    info = {
        "name": "BRATS",
        "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
        "numTraining": 1,
        "training": [{"image": "./imagesTr/BRATS_001.nii.gz", "label": "./labelsTr/BRATS_001.nii.gz"}],
        "test": ["./imagesTs/BRATS_900.nii.gz"],
    }
    (task / "dataset.json").write_text(json.dumps(info))
    entries = {e["case_id"]: e for e in discover(tmp_path)}
    e = entries["BRATS_001"]
    assert (e["dataset"], e["scheme"], e["channels"]) == ("msd", "msd", list(MODS))
    assert "label" not in entries["BRATS_900"]
    assert _entry_counts(e) == _counts(legacy, LEGACY_REGIONS)
    make_datalist(tmp_path, val_fraction=0.0, full_check=True)

    # labels outside {0, 1, 2, 3}: one line naming the file, exit 2, nothing written
    msd[0, 0, 0] = 4
    nib.save(nib.Nifti1Image(msd, affine), task / "labelsTr" / "BRATS_001.nii.gz")
    out = tmp_path / "dl.json"
    err = _cli_error([str(tmp_path), "-o", str(out), "--verify"])
    assert "labelsTr/BRATS_001.nii.gz" in err and "msd scheme" in err and "unexpected: [4]" in err
    assert not out.exists()


def _cli_error(args: list[str]) -> str:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):
        assert datalist_main(args) == 2
    err = buf.getvalue().strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


@pytest.mark.real_data
def test_nnunet_export_round_trip_and_mixed_schemes(real_data: Path, tmp_path: Path):
    root = tmp_path / "mixed"
    cases = [real_data / "brats2018" / "Brats18_CBICA_AQN_1", real_data / "brats2018" / "Brats18_CBICA_ABM_1"]
    for c in cases:
        (root / c.name).mkdir(parents=True)
        for f in c.iterdir():
            (root / c.name / f.name).symlink_to(f)
    src23 = real_data / "brats2023" / "BraTS-GLI-00000-000"
    (root / src23.name).mkdir()
    for f in src23.iterdir():
        (root / src23.name / f.name).symlink_to(f)
    dl = make_datalist(root, val_fraction=0.34, seed=0)
    before = {e["case_id"]: _entry_counts(e) for e in dl["training"] + dl["validation"]}
    out = tmp_path / "nnUNet_raw"
    folder = export_nnunet(dl, out, 7, "BraTSMix")
    assert folder.name == "Dataset007_BraTSMix"
    info = json.loads((folder / "dataset.json").read_text())
    assert info["numTraining"] == 3 and info["labels"]["enhancing_tumor"] == [3]
    splits = json.loads((folder / "splits_final.json").read_text())
    assert splits[0]["val"] == sorted(e["case_id"] for e in dl["validation"])
    back = {e["case_id"]: e for e in discover(out)}
    assert set(back) == set(before)
    assert {_entry_counts(e) == before[cid] for cid, e in back.items()} == {True}
    for cid, e in back.items():  # images are links to the very source files
        orig = next(x for x in dl["training"] + dl["validation"] if x["case_id"] == cid)
        assert all(Path(e[m]).resolve() == Path(orig[m]).resolve() for m in MODS)
    with pytest.raises(BtsInputError, match="already exists"):
        export_nnunet(dl, out, 7, "BraTSMix")


def _nnunet_dataset(tmp_path: Path, channels: dict[str, str]) -> Path:
    case = make_brats_case(tmp_path / "src", "BraTS2021_00001", (8, 8, 8))
    ds = tmp_path / "nnUNet_raw" / "Dataset001_X"
    for sub in ("imagesTr", "labelsTr"):
        (ds / sub).mkdir(parents=True)
    for i, m in enumerate(MODS):
        (ds / "imagesTr" / f"C1_{i:04d}.nii.gz").symlink_to(case / f"BraTS2021_00001_{m}.nii.gz")
    (ds / "labelsTr" / "C1.nii.gz").symlink_to(case / "BraTS2021_00001_seg.nii.gz")
    info = {"channel_names": channels, "labels": {"background": 0, "a": 1, "b": 2, "c": 4}, "numTraining": 1}
    (ds / "dataset.json").write_text(json.dumps(info))
    return ds


def test_nnunet_dataset_json_disagreeing_with_files(tmp_path: Path):
    ds = _nnunet_dataset(tmp_path, {"0": "FLAIR", "1": "T1", "2": "T1ce"})  # 3 named, 4 files
    err = _cli_error([str(ds.parent), "-o", str(tmp_path / "d.json")])
    assert "C1_0003.nii.gz" in err and "names 3 channels" in err
    assert not (tmp_path / "d.json").exists()


def test_nnunet_dataset_json_labels_disagreeing_with_files(tmp_path: Path):
    ds = _nnunet_dataset(tmp_path, {"0": "FLAIR", "1": "T1", "2": "T1ce", "3": "T2"})
    info = json.loads((ds / "dataset.json").read_text())
    info["labels"] = {"background": 0, "a": 1, "b": 2, "c": 3}  # the label file holds 4, not 3
    (ds / "dataset.json").write_text(json.dumps(info))
    out = tmp_path / "d.json"
    err = _cli_error([str(ds.parent), "-o", str(out), "--verify"])
    assert "labelsTr/C1.nii.gz" in err and "unexpected: [4]" in err
    assert not out.exists()


def test_msd_dataset_json_channels_disagreeing_with_files(tmp_path: Path):
    task = tmp_path / "Task01_BrainTumour"
    for sub in ("imagesTr", "labelsTr"):
        (task / sub).mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8, 3), np.int16), np.eye(4)), task / "imagesTr" / "BRATS_001.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.uint8), np.eye(4)), task / "labelsTr" / "BRATS_001.nii.gz")
    info = {"modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}, "numTraining": 1}
    (task / "dataset.json").write_text(json.dumps(info))
    out = tmp_path / "d.json"
    err = _cli_error([str(tmp_path), "-o", str(out)])  # a header read, without --verify
    assert "imagesTr/BRATS_001.nii.gz" in err and "4 channels" in err and "(8, 8, 8, 3)" in err
    assert not out.exists()


def test_two_layouts_in_one_folder(tmp_path: Path):
    case = make_brats_case(tmp_path, "BraTS2021_00001", (8, 8, 8))
    (case / "BraTS-GLI-00001-000-t2f.nii.gz").symlink_to(case / "BraTS2021_00001_flair.nii.gz")
    out = tmp_path / "d.json"
    err = _cli_error([str(tmp_path), "-o", str(out)])
    assert "BraTS2021_00001" in err and "matches two layouts" in err
    assert not out.exists()
    task = tmp_path / "t"
    (task / "imagesTr").mkdir(parents=True)
    (task / "dataset.json").write_text(json.dumps({"modality": {"0": "FLAIR"}, "channel_names": {"0": "FLAIR"}}))
    err = _cli_error([str(task), "-o", str(out)])
    assert "dataset.json" in err and "matches two layouts" in err
    assert not out.exists()


@pytest.mark.real_data
def test_bts_infer_2023_case_missing_a_modality(real_data: Path, tmp_path: Path, capsys):
    from bts_monai.cli.infer import main as infer_main

    src = real_data / "brats2023" / "BraTS-GLI-00000-000"
    case = tmp_path / src.name
    case.mkdir()
    for f in src.iterdir():
        if not f.name.endswith("-t1c.nii.gz"):
            (case / f.name).symlink_to(f)
    out = tmp_path / "seg.nii.gz"
    assert infer_main([str(case), "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the libraries' import warnings
    assert err.startswith("error: ") and "no t1ce file (expected BraTS-GLI-00000-000-t1c.nii.gz)" in err
    assert not out.exists()


@pytest.mark.real_data
@pytest.mark.slow
def test_bts_infer_real_2023_case_writes_2023_labels(real_data: Path, tmp_path: Path):
    from bts_monai.cli.infer import main as infer_main

    out = tmp_path / "seg.nii.gz"
    assert infer_main([str(real_data / "brats2023" / "BraTS-GLI-00000-000"), "-o", str(out), "-q"]) == 0
    labels = np.asanyarray(nib.load(out).dataobj)
    assert set(np.unique(labels).tolist()) <= {0, 1, 2, 3} and (labels == 3).any()
    legacy = tmp_path / "legacy.nii.gz"
    src = real_data / "brats2023" / "BraTS-GLI-00000-000"
    assert infer_main([str(src), "-o", str(legacy), "-q", "--output-scheme", "brats2021"]) == 0
    assert set(np.unique(np.asanyarray(nib.load(legacy).dataobj)).tolist()) <= {0, 1, 2, 4}
