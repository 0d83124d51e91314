from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bts_monai.data.datamodule import BratsDataModule
from bts_monai.data.discovery import make_datalist, write_datalist
from bts_monai.errors import BtsInputError


def _dm(root: Path, tmp_path: Path, **kw) -> BratsDataModule:
    kw.setdefault("split_file", str(tmp_path / "split.json"))
    dm = BratsDataModule(data_root=str(root), num_workers=0, **kw)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_3d_batches_and_split_reuse(brats21_root: Path, tmp_path: Path):
    dm = _dm(brats21_root, tmp_path, roi_size=[24, 24, 24], num_samples=2, batch_size=2, val_fraction=0.25)
    assert (dm.in_channels, dm.out_channels, dm.region_names) == (4, 3, ["TC", "WT", "ET"])
    assert len(dm.train_entries) == 3 and len(dm.val_entries) == 1
    b = next(iter(dm.train_dataloader()))
    assert b["image"].shape == (4, 4, 24, 24, 24) and b["label"].shape == (4, 3, 24, 24, 24)
    assert b["image"].dtype == torch.float32
    v = next(iter(dm.val_dataloader()))
    assert v["image"].shape[:2] == (1, 4) and v["label"].shape[:2] == (1, 3)
    assert v["case_id"] == [dm.val_entries[0]["case_id"]]
    # The split is written and reused even if the seed changes.
    saved = json.loads((tmp_path / "split.json").read_text())
    dm2 = _dm(brats21_root, tmp_path, roi_size=[24, 24, 24], seed=99)
    assert [e["case_id"] for e in dm2.val_entries] == [e["case_id"] for e in saved["validation"]]
    cfg = dm.inference_config()
    assert cfg["modalities"] == ["flair", "t1", "t1ce", "t2"] and cfg["dataset"] == "brats2021"
    assert cfg["intensity"] == "zscore" and cfg["roi_size"] == [24, 24, 24]


def test_2d_brats_slices_and_modality_subset(brats21_root: Path, tmp_path: Path):
    dm = _dm(
        brats21_root,
        tmp_path,
        spatial_dims=2,
        roi_size=[32, 32],
        modalities=["flair", "t1ce", "t2"],
        num_samples=3,
        batch_size=1,
    )
    b = next(iter(dm.train_dataloader()))
    assert b["image"].shape == (3, 3, 32, 32)
    v = next(iter(dm.val_dataloader()))
    assert v["image"].ndim == 5 and v["image"].shape[1] == 3  # whole volume for slice-wise validation


def test_lgg_trains_on_slices_validates_on_patients(lgg_root: Path, tmp_path: Path):
    dm = _dm(
        lgg_root,
        tmp_path,
        dataset="lgg",
        spatial_dims=2,
        roi_size=[48, 48],
        batch_size=4,
        num_samples=1,
        val_fraction=0.34,
    )
    assert dm.intensity == "unit" and dm.in_channels == 3 and dm.out_channels == 1
    assert len(dm.train_ds) == 2 * 10  # two training patients of 10 slices
    b = next(iter(dm.train_dataloader()))
    assert b["image"].shape == (4, 3, 48, 48) and b["label"].shape == (4, 1, 48, 48)
    v = next(iter(dm.val_dataloader()))
    assert v["image"].shape == (1, 3, 48, 48, 10)


def test_kfold_datalist_and_memory_cache(brats21_root: Path, tmp_path: Path):
    dl_path = tmp_path / "dl.json"
    write_datalist(make_datalist(brats21_root, folds=4), dl_path)
    dm = BratsDataModule(datalist=str(dl_path), fold=2, roi_size=[16, 16, 16], cache="memory", num_workers=0)
    dm.setup("fit")
    assert len(dm.val_entries) == 1 and dm.val_entries[0]["fold"] == 2
    assert next(iter(dm.train_dataloader()))["image"].shape[-3:] == (16, 16, 16)


def test_synthetic_sample_generated(tmp_path: Path):
    dm = _dm(tmp_path / "sample", tmp_path, synthetic=True, roi_size=[16, 16, 16])
    assert len(dm.train_entries) + len(dm.val_entries) == 8
    assert (tmp_path / "sample" / "brats2021").is_dir()


def test_bad_configuration():
    with pytest.raises(BtsInputError, match="give data_root"):
        BratsDataModule()
    with pytest.raises(ValueError, match="roi_size"):
        BratsDataModule(data_root="x", spatial_dims=2, roi_size=[8, 8, 8])
    with pytest.raises(ValueError, match="unknown modalities"):
        BratsDataModule(data_root="x", modalities=["dwi"])
    with pytest.raises(BtsInputError, match="does not exist"):
        BratsDataModule(data_root="/nonexistent/bts", split_file="/tmp/never.json").setup("fit")


def test_predict_dataloader_unlabelled_cases(tmp_path: Path):
    from bts_monai.data.synthetic import make_brats_case

    root = tmp_path / "ds"
    for i in range(3):
        make_brats_case(root, f"BraTS2021_{i:05d}", (24, 24, 20), seed=i)
    make_brats_case(root, "BraTS2021_00099", (24, 24, 20), seed=9, with_label=False)
    dm = _dm(root, tmp_path, roi_size=[16, 16, 16], val_fraction=0.34)
    items = list(dm.predict_dataloader())
    assert [b["case_id"] for b in items] == [["BraTS2021_00099"]]
    assert items[0]["image"].shape[:2] == (1, 4) and "label" not in items[0]
