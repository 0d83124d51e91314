"""The fixed validation split (``val_cases``) and the nnU-Net-style augmentation option."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bts_monai.data.datamodule import BratsDataModule
from bts_monai.data.discovery import discover
from bts_monai.data.transforms import random_transforms
from bts_monai.errors import BtsInputError


def test_val_cases_fix_the_split_whatever_the_seed(brats21_root: Path, tmp_path: Path):
    ids = sorted(e["case_id"] for e in discover(brats21_root))
    chosen = [ids[0], ids[2]]
    for seed in (0, 7):
        dm = BratsDataModule(
            data_root=str(brats21_root),
            val_cases=chosen,
            seed=seed,
            roi_size=[24, 24, 24],
            num_workers=0,
            split_file=str(tmp_path / f"split{seed}.json"),
        )
        dm.setup("fit")
        assert sorted(e["case_id"] for e in dm.val_entries) == sorted(chosen)
        assert sorted(e["case_id"] for e in dm.train_entries) == [ids[1], ids[3]]


def test_val_cases_must_exist(brats21_root: Path, tmp_path: Path):
    dm = BratsDataModule(
        data_root=str(brats21_root), val_cases=["nope_case"], num_workers=0, split_file=str(tmp_path / "s.json")
    )
    with pytest.raises(BtsInputError, match="nope_case"):
        dm.setup("fit")


@pytest.mark.parametrize("dims", [2, 3])
def test_spatial_augment_keeps_patch_shape_and_binary_labels(dims: int):
    roi = [16] * dims
    t = random_transforms(roi, spatial_dims=dims, num_samples=2, spatial_augment=True)
    t.set_random_state(0)
    shape = (20, 20, 12) if dims == 3 else (20, 20, 3)
    image = torch.randn(4, *shape)
    label = torch.zeros(3, *shape)
    label[:, 5:12, 5:12, 1:3] = 1
    for _ in range(5):
        out = t({"image": image.clone(), "label": label.clone()})
        for s in out:
            assert tuple(s["image"].shape[1:]) == tuple(roi)
            assert tuple(s["label"].shape[1:]) == tuple(roi)
            assert set(torch.unique(s["label"]).tolist()) <= {0.0, 1.0}
