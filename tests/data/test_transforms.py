from __future__ import annotations

import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch

from bts_monai.data.discovery import discover
from bts_monai.data.synthetic import make_brats_case
from bts_monai.data.transforms import (
    LabelsToTarget,
    LoadTiffSlices,
    deterministic_transforms,
    train_transforms,
    val_transforms,
)
from bts_monai.errors import BtsInputError, unwrap_input_errors

MODS = ("flair", "t1", "t1ce", "t2")


def _item(entry: dict) -> dict:
    return {"image": [entry[m] for m in MODS], "label": entry["label"]}


def test_val_transforms_orient_crop_normalise(brats21_root: Path):
    entry = discover(brats21_root)[0]
    out = val_transforms("brats2021")(_item(entry))
    img, lab = out["image"], out["label"]
    assert img.dtype == torch.float32 and img.shape[0] == 4 and lab.shape[0] == 3
    assert img.shape[1:] == lab.shape[1:]
    # Cropped to the brain: smaller than the 48x48x40 grid, no all-zero border plane.
    assert all(s < full for s, full in zip(img.shape[1:], (48, 48, 40)))
    brain = img.abs().sum(0) > 0
    for ax in range(3):
        assert brain.any(dim=tuple(a for a in range(3) if a != ax)).all()
    # z-score inside the brain, per channel.
    for c in range(4):
        v = img[c][brain]
        assert abs(float(v.mean())) < 0.05 and abs(float(v.std()) - 1) < 0.05
    # Region voxel counts survive orientation and cropping.
    seg = np.asanyarray(nib.load(entry["label"]).dataobj)
    assert lab.sum(dim=(1, 2, 3)).tolist() == [np.isin(seg, v).sum() for v in ([1, 4], [1, 2, 4], [4])]


def test_orientation_to_ras_flips_lps_storage(tmp_path: Path):
    case = make_brats_case(tmp_path, "BraTS2021_00007", (12, 10, 8), affine=np.diag([-1.0, -1.0, 1.0, 1.0]))
    seg_path = case / "BraTS2021_00007_seg.nii.gz"
    seg = np.zeros((12, 10, 8), np.uint8)
    seg[1, 2, 3] = 4  # a marker near the (L, P) corner in voxel space
    nib.save(nib.Nifti1Image(seg, np.diag([-1.0, -1.0, 1.0, 1.0])), seg_path)
    imgs = [case / f"BraTS2021_00007_{m}.nii.gz" for m in MODS]
    for p in imgs:
        nib.save(nib.Nifti1Image(np.ones((12, 10, 8), np.int16), np.diag([-1.0, -1.0, 1.0, 1.0])), p)
    out = deterministic_transforms("brats2021", crop_foreground=False)({"image": imgs, "label": seg_path})
    et = out["label"][2].numpy()
    assert list(zip(*np.nonzero(et))) == [(12 - 1 - 1, 10 - 1 - 2, 3)]


def test_train_transforms_3d_2d_and_subsets(brats21_root: Path):
    entry = discover(brats21_root)[1]
    samples = train_transforms("brats2021", (24, 24, 24), num_samples=3)(_item(entry))
    assert len(samples) == 3
    assert samples[0]["image"].shape == (4, 24, 24, 24) and samples[0]["label"].shape == (3, 24, 24, 24)
    two = train_transforms("brats2021", (32, 32), spatial_dims=2, num_samples=2)(_item(entry))
    assert two[0]["image"].shape == (4, 32, 32) and two[0]["label"].shape == (3, 32, 32)
    sub = {"image": [entry[m] for m in ("flair", "t1ce", "t2")], "label": entry["label"]}
    idx = train_transforms("brats2021", (16, 16, 16), label_mode="labels")(sub)
    assert idx[0]["image"].shape[0] == 3 and idx[0]["label"].shape[0] == 1
    assert set(torch.unique(idx[0]["label"]).tolist()) <= {0.0, 1.0, 2.0, 3.0}


def test_unexpected_label_names_file(tmp_path: Path):
    case = make_brats_case(tmp_path, "BraTS2021_00001", (8, 8, 8))
    seg = np.zeros((8, 8, 8), np.uint8)
    seg[1, 1, 1] = 5
    nib.save(
        nib.Nifti1Image(seg, nib.load(case / "BraTS2021_00001_seg.nii.gz").affine), case / "BraTS2021_00001_seg.nii.gz"
    )
    entry = discover(tmp_path)[0]
    with pytest.raises(BtsInputError, match=r"BraTS2021_00001_seg\.nii\.gz: label values \[0, 5\]"):
        with unwrap_input_errors():
            val_transforms("brats2021")(_item(entry))
    with pytest.raises(BtsInputError, match="unexpected"):
        LabelsToTarget("brats2023")(torch.tensor([[[[4.0]]]]))


def test_lgg_stack_and_slice(lgg_root: Path):
    entry = discover(lgg_root)[0]
    slices = entry["slices"]
    vol = LoadTiffSlices()([s["image"] for s in slices])
    assert vol.shape == (3, 48, 48, 10)
    first = tifffile.imread(slices[4]["image"])
    np.testing.assert_array_equal(vol[:, :, :, 4].numpy(), np.moveaxis(first, -1, 0))
    out = val_transforms("lgg", kind="tiff", intensity="unit")(
        {"image": [s["image"] for s in slices], "label": [s["label"] for s in slices]}
    )
    assert float(out["image"].max()) <= 1.0
    expected = [int((tifffile.imread(s["label"]) > 0).sum()) for s in slices]
    assert out["label"][0].sum(dim=(0, 1)).int().tolist() == expected


# ---- real data ---------------------------------------------------------------------------


@pytest.mark.real_data
def test_real_brats_case_counts(real_data: Path):
    entry = discover(real_data / "brats2018")[0]
    t0 = time.perf_counter()
    out = val_transforms("brats2018")(_item(entry))
    load_s = time.perf_counter() - t0
    img, lab = out["image"], out["label"]
    assert img.dtype == torch.float32 and img.shape[0] == 4 and lab.shape[0] == 3
    seg = np.asanyarray(nib.load(entry["label"]).dataobj)
    expected = [int(np.isin(seg, v).sum()) for v in ([1, 4], [1, 2, 4], [4])]
    assert lab.sum(dim=(1, 2, 3)).int().tolist() == expected
    print(f"real case {entry['case_id']} through the deterministic transforms in {load_s:.2f} s")
    patches = train_transforms("brats2018", (128, 128, 128), num_samples=2)(_item(entry))
    assert patches[0]["image"].shape == (4, 128, 128, 128)


@pytest.mark.real_data
def test_real_lgg_patient_mask_counts(real_data: Path):
    entry = discover(real_data / "lgg" / "kaggle_3m")[0]
    slices = entry["slices"]
    out = val_transforms("lgg", kind="tiff", intensity="unit")(
        {"image": [s["image"] for s in slices], "label": [s["label"] for s in slices]}
    )
    assert out["image"].shape[0] == 3 and out["image"].shape[-1] == len(slices)
    expected = [int((tifffile.imread(s["label"]) > 0).sum()) for s in slices]
    assert out["label"][0].sum(dim=(0, 1)).int().tolist() == expected
    assert sum(expected) > 0
