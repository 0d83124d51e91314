"""The layouts built in a temporary folder from the real cases in ``$BTS_REAL_DATA`` (renamed,
relabelled, re-encoded): each is detected as what it is, with the voxel counts per region that
the source files give; and ``bts-infer`` segments a case of each, writing the layout's own labels.

(BraTS 2023, MSD and the nnU-Net export round trip are in ``test_layouts.py``.)
"""

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
from bts_monai.data.discovery import discover, entry_scheme, make_datalist

pytestmark = pytest.mark.real_data

MODS = ("flair", "t1", "t1ce", "t2")
# Region definitions written out here, independently of labels.py, to check it.
LEGACY_REGIONS = {"TC": (1, 4), "WT": (1, 2, 4), "ET": (4,)}
REGIONS_2024 = {"TC": (1, 3), "WT": (1, 2, 3), "ET": (3,), "RC": (4,)}
# nnU-Net's Dataset137_BraTS2021 conversion (2 oedema -> 1, 1 necrosis -> 2, 4 ET -> 3), and its
# region-based labels; MSD Task01 uses the same values (1 oedema, 2 non-enhancing, 3 enhancing).
TO_NNUNET = {0: 0, 2: 1, 1: 2, 4: 3}
NNUNET_BRATS_LABELS = {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": [3]}
CASES = ("Brats18_CBICA_AQN_1", "Brats18_2013_11_1")  # uint8 and int16 labels


def _counts(label: np.ndarray, regions: dict[str, tuple[int, ...]]) -> dict[str, int]:
    return {r: int(np.isin(label, v).sum()) for r, v in regions.items()}


def _entry_counts(entry: dict, regions: tuple[str, ...] = ("TC", "WT", "ET")) -> dict[str, int]:
    label = np.asanyarray(nib.load(entry["label"]).dataobj)
    masks = entry_scheme(entry).region_masks(label, list(regions))
    return {r: int(m.sum()) for r, m in zip(regions, masks)}


def _source_seg(real_data: Path, name: str) -> np.ndarray:
    return np.asanyarray(nib.load(real_data / "brats2018" / name / f"{name}_seg.nii.gz").dataobj)


def _one_line_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert datalist_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


@pytest.mark.parametrize("release", ["brats2018", "brats2021", "brats2020"])
def test_brats_2017_2021_layouts(real_data: Path, tmp_path: Path, release: str) -> None:
    """2018 ids as released, 2021 ids (``BraTS2021_XXXXX``), and the Kaggle BraTS 2020 copy
    (``BraTS20_Training_XXX``, uncompressed ``.nii``, nested folders)."""
    ids = {}
    for i, name in enumerate(CASES):
        src = real_data / "brats2018" / name
        if release == "brats2018":
            cid, folder, ending = name, tmp_path / "MICCAI_BraTS_2018_Data_Training" / "HGG" / name, ".nii.gz"
        elif release == "brats2021":
            cid, ending = f"BraTS2021_{i:05d}", ".nii.gz"
            folder = tmp_path / "BraTS2021_Training_Data" / cid
        else:
            cid, ending = f"BraTS20_Training_{i + 1:03d}", ".nii"
            folder = tmp_path / "BraTS2020_TrainingData" / "MICCAI_BraTS2020_TrainingData" / cid
        folder.mkdir(parents=True)
        for kind in (*MODS, "seg"):
            if ending == ".nii":
                with gzip.open(src / f"{name}_{kind}.nii.gz") as fin, open(folder / f"{cid}_{kind}.nii", "wb") as fout:
                    shutil.copyfileobj(fin, fout)
            else:
                (folder / f"{cid}_{kind}{ending}").symlink_to(src / f"{name}_{kind}.nii.gz")
        ids[cid] = name
    entries = {e["case_id"]: e for e in discover(tmp_path)}
    assert set(entries) == set(ids)
    for cid, e in entries.items():
        assert (e["dataset"], e["scheme"]) == (release, "brats2021")
        assert all(Path(e[m]).name == f"{cid}_{m}{'.nii' if release == 'brats2020' else '.nii.gz'}" for m in MODS)
        assert _entry_counts(e) == _counts(_source_seg(real_data, ids[cid]), LEGACY_REGIONS)
    dl = make_datalist(tmp_path, val_fraction=0.0, full_check=True)
    assert dl["datasets"] == {release: {"cases": 2, "labelled": 2, "slices": 0}}


def test_lgg_kaggle_3m_layout(real_data: Path, tmp_path: Path) -> None:
    """Two real patients (folders of linked slices, beside the archive's data.csv): one entry per
    patient, slices in numeric order, the abnormality pixels of the source masks."""
    src_root = real_data / "lgg" / "kaggle_3m"
    patients = ["TCGA_CS_4942_19970222", "TCGA_DU_5855_19951217"]
    root = tmp_path / "lgg-mri-segmentation" / "kaggle_3m"
    for p in patients:
        (root / p).mkdir(parents=True)
        for f in (src_root / p).iterdir():
            (root / p / f.name).symlink_to(f)
    shutil.copy(src_root / "data.csv", root / "data.csv")
    entries = {e["case_id"]: e for e in discover(tmp_path)}
    assert set(entries) == set(patients)
    for p, e in entries.items():
        assert (e["dataset"], e["scheme"]) == ("lgg", "lgg")
        masks = sorted((src_root / p).glob("*_mask.tif"), key=lambda f: int(f.name.split("_")[-2]))
        assert [Path(s["label"]).name for s in e["slices"]] == [f.name for f in masks]
        expected = sum(int((tifffile.imread(f) == 255).sum()) for f in masks)
        label = np.stack([tifffile.imread(s["label"]) for s in e["slices"]])
        (abnormality,) = entry_scheme(e).region_masks(label, ["abnormality"])
        assert int(abnormality.sum()) == expected > 0
    dl = make_datalist(tmp_path, val_fraction=0.0, full_check=True)
    assert dl["datasets"]["lgg"]["slices"] == sum(len(e["slices"]) for e in entries.values())


def _nnunet_dataset(real_data: Path, root: Path, cases=CASES, box: tuple[slice, ...] | None = None) -> Path:
    """``root/Dataset137_BraTS2021`` built by hand as nnU-Net's conversion script writes it, with
    the channels in another order than MSD's (T1, T1ce, T2, FLAIR) and region-based labels."""
    ds = root / "Dataset137_BraTS2021"
    for sub in ("imagesTr", "labelsTr"):
        (ds / sub).mkdir(parents=True)
    order = ("t1", "t1ce", "t2", "flair")
    for i, name in enumerate(cases):
        src = real_data / "brats2018" / name
        cid = f"BraTS2021_{i:05d}"
        for k, m in enumerate(order):
            target = ds / "imagesTr" / f"{cid}_{k:04d}.nii.gz"
            if box is None:
                target.symlink_to(src / f"{name}_{m}.nii.gz")
            else:
                nib.save(nib.load(src / f"{name}_{m}.nii.gz").slicer[box], target)
        seg = nib.load(src / f"{name}_seg.nii.gz")
        seg = seg.slicer[box] if box is not None else seg
        legacy = np.asanyarray(seg.dataobj)
        relabelled = np.zeros(legacy.shape, np.uint8)
        for old, new in TO_NNUNET.items():
            relabelled[legacy == old] = new
        nib.save(nib.Nifti1Image(relabelled, seg.affine), ds / "labelsTr" / f"{cid}.nii.gz")
    info = {
        "channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"},
        "labels": NNUNET_BRATS_LABELS,
        "regions_class_order": [1, 2, 3],
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
    }
    (ds / "dataset.json").write_text(json.dumps(info))
    return ds


def test_nnunet_raw_layout_built_by_hand(real_data: Path, tmp_path: Path) -> None:
    ds = _nnunet_dataset(real_data, tmp_path / "nnUNet_raw")
    entries = {e["case_id"]: e for e in discover(tmp_path)}
    assert set(entries) == {"BraTS2021_00000", "BraTS2021_00001"}
    for i, (_, e) in enumerate(sorted(entries.items())):
        assert e["dataset"] == ds.name
        # channels matched by the names dataset.json gives them, not by position
        src = real_data / "brats2018" / CASES[i]
        assert all(Path(e[m]).resolve() == (src / f"{CASES[i]}_{m}.nii.gz").resolve() for m in MODS)
        assert _entry_counts(e) == _counts(_source_seg(real_data, CASES[i]), LEGACY_REGIONS)
    make_datalist(tmp_path, val_fraction=0.0, full_check=True)


def test_brats2024_resection_cavity(real_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """BraTS 2024 GLI: 2023 names with label 4 (resection cavity). Read as 2023 data, label 4 is a
    clean refusal naming the file (nothing written); with ``--dataset brats2024`` it is RC."""
    src = real_data / "brats2023" / "BraTS-GLI-00000-000"
    case = tmp_path / "BraTS2024-GLI" / "BraTS-GLI-00000-001"
    case.mkdir(parents=True)
    for f in src.iterdir():
        if not f.name.endswith("-seg.nii.gz"):
            (case / f.name.replace("-000-", "-001-")).symlink_to(f)
    seg = nib.load(src / f"{src.name}-seg.nii.gz")
    label = np.asanyarray(seg.dataobj).copy()  # float32, as released
    netc = np.argwhere(label == 1)
    half = tuple(slice(int(a), int(b)) for a, b in zip(netc.min(0), (netc.min(0) + netc.max(0)) // 2))
    part = label[half]
    part[part == 1] = 4  # a cavity where part of the core was
    nib.save(nib.Nifti1Image(label, seg.affine, seg.header), case / "BraTS-GLI-00000-001-seg.nii.gz")
    expected = _counts(label, REGIONS_2024)
    assert expected["RC"] > 0

    out = tmp_path / "dl.json"
    err = _one_line_error([str(tmp_path / "BraTS2024-GLI"), "-o", str(out), "--verify"], capsys)
    assert "BraTS-GLI-00000-001-seg.nii.gz" in err and "unexpected: [4]" in err and "brats2024" in err
    assert not out.exists()
    (e,) = discover(tmp_path, dataset="brats2024")
    assert (e["dataset"], e["scheme"]) == ("brats2024", "brats2024")
    assert _entry_counts(e, ("TC", "WT", "ET", "RC")) == expected
    assert datalist_main([str(tmp_path / "BraTS2024-GLI"), "-o", str(out), "--verify", "--dataset", "brats2024"]) == 0


def _tumour_box(seg: np.ndarray, pad: int = 12) -> tuple[slice, ...]:
    idx = np.argwhere(seg > 0)
    lo, hi = np.maximum(idx.min(0) - pad, 0), np.minimum(idx.max(0) + pad + 1, seg.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


@pytest.mark.slow
def test_bts_infer_segments_each_layout_in_its_own_labels(real_data: Path, tmp_path: Path) -> None:
    """One real case (cropped around its tumour, to keep CPU time low) as a BraTS 2021 folder,
    an MSD 4D image and an nnU-Net channel set: the packaged model finds the same tumour in each,
    written in each dataset's values (MSD and nnU-Net: 1 oedema, 2 necrosis, 3 enhancing)."""
    from bts_monai.cli.infer import main as infer_main

    name = CASES[0]
    src = real_data / "brats2018" / name
    box = _tumour_box(_source_seg(real_data, name))
    brats = tmp_path / "BraTS2021_Training_Data" / "BraTS2021_00000"
    brats.mkdir(parents=True)
    for m in MODS:
        nib.save(nib.load(src / f"{name}_{m}.nii.gz").slicer[box], brats / f"BraTS2021_00000_{m}.nii.gz")
    task = tmp_path / "Task01_BrainTumour"
    (task / "imagesTs").mkdir(parents=True)
    vols = [np.asanyarray(nib.load(brats / f"BraTS2021_00000_{m}.nii.gz").dataobj) for m in MODS]
    affine = nib.load(brats / "BraTS2021_00000_flair.nii.gz").affine
    nib.save(nib.Nifti1Image(np.stack(vols, -1), affine), task / "imagesTs" / "BRATS_001.nii.gz")
    msd_labels = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}
    info = {"modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}, "labels": msd_labels}
    (task / "dataset.json").write_text(json.dumps(info))
    ds = _nnunet_dataset(real_data, tmp_path / "nnUNet_raw", cases=(name,), box=box)

    outs = {k: tmp_path / "out" / f"{k}.nii.gz" for k in ("brats", "msd", "nnunet")}
    inputs = {
        "brats": brats,
        "msd": task / "imagesTs" / "BRATS_001.nii.gz",
        "nnunet": ds / "imagesTr" / "BraTS2021_00000_0000.nii.gz",
    }
    for key, path in inputs.items():
        assert infer_main([str(path), "-o", str(outs[key]), "-q"]) == 0, key
    legacy = np.asanyarray(nib.load(outs["brats"]).dataobj)
    assert set(np.unique(legacy).tolist()) == {0, 1, 2, 4}
    relabelled = np.zeros_like(legacy)
    for old, new in TO_NNUNET.items():
        relabelled[legacy == old] = new
    for key in ("msd", "nnunet"):
        got = nib.load(outs[key])
        np.testing.assert_allclose(got.affine, affine)
        np.testing.assert_array_equal(np.asanyarray(got.dataobj), relabelled, err_msg=key)
