"""BratsSegModule: fast_dev_run in 2D and 3D, deep supervision, label modes, metric logging."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from monai.losses import DiceCELoss

from bts_monai.data.datamodule import BratsDataModule
from bts_monai.model import metrics
from bts_monai.model.module import BratsSegModule, build_network

torch.set_num_threads(1)

TINY_UNET_3D = {
    "spatial_dims": 3,
    "in_channels": 4,
    "out_channels": 3,
    "channels": [4, 8],
    "strides": [2],
    "num_res_units": 0,
}
TINY_DYNUNET_3D = {
    "spatial_dims": 3,
    "in_channels": 4,
    "out_channels": 3,
    "kernel_size": [3, 3, 3],
    "strides": [1, 2, 2],
    "upsample_kernel_size": [2, 2],
    "filters": [4, 8, 16],
    "deep_supervision": True,
    "deep_supr_num": 1,
}


def _trainer(tmp_path: Path, **kwargs: Any) -> pl.Trainer:
    opts: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "precision": "32-true",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": str(tmp_path),
    }
    opts.update(kwargs)
    return pl.Trainer(**opts)


def _dm(root: Path, **kwargs: Any) -> BratsDataModule:
    opts: dict[str, Any] = {
        "data_root": str(root),
        "num_workers": 0,
        "num_samples": 1,
        "batch_size": 2,
        "val_fraction": 0.34,
        "augment": False,
        "split_file": None,
    }
    opts.update(kwargs)
    return BratsDataModule(**opts)


class _Recorder(pl.Callback):
    """Keeps the metrics logged at the end of each validation."""

    def __init__(self) -> None:
        self.metrics: list[dict[str, float]] = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.metrics.append({k: float(v) for k, v in trainer.callback_metrics.items()})


@pytest.mark.parametrize("net_args", [TINY_UNET_3D, TINY_DYNUNET_3D], ids=["unet", "dynunet_ds"])
def test_fast_dev_run_3d(brats21_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, net_args) -> None:
    monkeypatch.chdir(tmp_path)
    cls = "monai.networks.nets.UNet" if "channels" in net_args else "monai.networks.nets.DynUNet"
    module = BratsSegModule(build_network(cls, net_args), sw_batch_size=4)
    dm = _dm(brats21_root, roi_size=[32, 32, 32])
    rec = _Recorder()
    trainer = _trainer(tmp_path, fast_dev_run=True, callbacks=[rec])
    trainer.fit(module, dm)
    logged = rec.metrics[-1]
    for region in ("TC", "WT", "ET"):
        for m in ("dice", "iou", "hd95"):
            assert np.isfinite(logged[f"val/{m}_{region}"])
    assert 0.0 <= logged["val/dice_mean"] <= 1.0
    assert np.isfinite(trainer.callback_metrics["train/loss"])
    assert module.inference_config()["net"]["class_path"] == cls


def test_fast_dev_run_2d_lgg_scores_each_patient(lgg_root: Path, tmp_path: Path, monkeypatch) -> None:
    """A 2D network trains on slices and is validated on each patient's stacked slices."""
    monkeypatch.chdir(tmp_path)
    net = build_network(
        "monai.networks.nets.UNet",
        {"spatial_dims": 2, "in_channels": 3, "out_channels": 1, "channels": [4, 8], "strides": [2]},
    )
    module = BratsSegModule(net, sw_batch_size=8)
    dm = _dm(lgg_root, dataset="lgg", spatial_dims=2, roi_size=[32, 32], batch_size=4)
    rec = _Recorder()
    trainer = _trainer(tmp_path, max_epochs=1, limit_train_batches=2, num_sanity_val_steps=0, callbacks=[rec])
    trainer.fit(module, dm)
    logged = rec.metrics[-1]
    assert logged["val/cases"] == len(dm.val_entries) == 1
    assert set(k for k in logged if k.startswith("val/dice_")) == {"val/dice_abnormality", "val/dice_mean"}
    assert module.config["spatial_dims"] == 2 and module.config["scheme"] == "lgg"


def test_fast_dev_run_2d_brats_slices_softmax(brats21_root: Path, tmp_path: Path, monkeypatch) -> None:
    """BraTS as 2D slices with softmax over labels; metrics still per region on the 3D volume."""
    monkeypatch.chdir(tmp_path)
    net = build_network(
        "monai.networks.nets.UNet",
        {"spatial_dims": 2, "in_channels": 4, "out_channels": 4, "channels": [4, 8], "strides": [2]},
    )
    module = BratsSegModule(net, sw_batch_size=16)
    dm = _dm(brats21_root, spatial_dims=2, roi_size=[32, 32], label_mode="labels")
    rec = _Recorder()
    _trainer(tmp_path, fast_dev_run=True, callbacks=[rec]).fit(module, dm)
    assert module.label_mode == "labels"
    assert isinstance(module.loss_fn.loss, DiceCELoss)
    assert {"val/dice_TC", "val/dice_WT", "val/dice_ET"} <= set(rec.metrics[-1])


def test_deep_supervision_heads_are_weighted() -> None:
    """DynUNet's stacked heads enter the loss with weights 1, 1/2 (normalised)."""
    net = build_network("monai.networks.nets.DynUNet", TINY_DYNUNET_3D)
    module = BratsSegModule(net, loss=DiceCELoss(sigmoid=True), deep_supervision_weights=[1.0, 0.5])
    x = torch.randn(2, 4, 16, 16, 16)
    y = (torch.rand(2, 3, 16, 16, 16) > 0.7).float()
    module.net.train()
    heads = module._heads(module.net(x), x.ndim)
    assert len(heads) == 2 and heads[0].shape == (2, 3, 16, 16, 16)
    base = DiceCELoss(sigmoid=True)
    expected = (1.0 * base(heads[0], y) + 0.5 * base(heads[1], y)) / 1.5
    assert torch.allclose(module.loss_fn(heads, y), expected, atol=1e-5)
    module.net.eval()
    assert module(x).shape == (2, 3, 16, 16, 16)


def test_labels_mode_regions_follow_the_scheme() -> None:
    """Softmax class indices -> TC/WT/ET masks through the label scheme (no magic numbers here)."""
    from bts_monai.labels import get_scheme

    scheme = get_scheme("brats2021")
    module = BratsSegModule(
        build_network("monai.networks.nets.UNet", {**TINY_UNET_3D, "out_channels": 4}),
        data_config={
            "modalities": ["flair", "t1", "t1ce", "t2"],
            "dataset": "brats2021",
            "scheme": "brats2021",
            "label_mode": "labels",
            "spatial_dims": 3,
            "roi_size": [16, 16, 16],
            "intensity": "zscore",
            "spacing": None,
        },
    )
    labels = np.array(scheme.all_values, dtype=np.uint8).reshape(1, 1, 4)
    index = torch.from_numpy(scheme.to_index_map(labels)).reshape(1, 1, 1, 1, 4).float()
    got = module.target_regions(index)[0, :, 0, 0].numpy()
    want = scheme.to_regions(labels)[:, 0, 0]
    np.testing.assert_array_equal(got, want)


class _ConstantNet(torch.nn.Module):
    """Predicts a fixed region map whatever the input (for checking the logged numbers)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], *self.logits.shape[1:]) * self.scale


def test_validation_logs_brats_rules_for_empty_regions(tmp_path: Path) -> None:
    """Both-empty ET scores Dice 1 / HD95 0; a missed TC scores Dice 0; WT matches metrics.dice."""
    shape = (16, 16, 8)
    ref = torch.zeros(1, 3, *shape)
    ref[0, 0, 4:8, 4:8, 2:6] = 1  # TC present, predicted empty -> Dice 0, HD95 EMPTY_HD95
    ref[0, 1, 2:10, 2:10, 1:7] = 1  # WT: prediction is a shifted box
    pred = torch.zeros(1, 3, *shape)
    pred[0, 1, 3:11, 2:10, 1:7] = 1
    logits = pred * 20 - 10
    module = BratsSegModule(_ConstantNet(logits), sw_roi_size=list(shape), sw_batch_size=1)
    module.data_config = {
        "modalities": ["flair", "t1", "t1ce", "t2"],
        "dataset": "brats2021",
        "scheme": "brats2021",
        "label_mode": "regions",
        "spatial_dims": 3,
        "roi_size": list(shape),
        "intensity": "zscore",
        "spacing": None,
    }

    class _Data(pl.LightningDataModule):
        def val_dataloader(self):
            item = {"image": torch.zeros(1, 4, *shape), "label": ref, "case_id": ["c1"]}
            return torch.utils.data.DataLoader([item], batch_size=None)

    rec = _Recorder()
    _trainer(tmp_path, callbacks=[rec], num_sanity_val_steps=0).validate(module, datamodule=_Data())
    logged = rec.metrics[-1]
    assert logged["val/dice_ET"] == 1.0 and logged["val/hd95_ET"] == 0.0
    assert logged["val/dice_TC"] == 0.0 and logged["val/hd95_TC"] == pytest.approx(metrics.EMPTY_HD95)
    want_wt = metrics.dice(pred[0, 1].numpy(), ref[0, 1].numpy())
    assert want_wt == pytest.approx(2 * 7 * 8 * 6 / (2 * 8 * 8 * 6))
    assert logged["val/dice_WT"] == pytest.approx(want_wt)
    assert logged["val/dice_mean"] == pytest.approx((1.0 + 0.0 + want_wt) / 3)


def test_channel_mismatch_is_a_user_error(brats21_root: Path, tmp_path: Path, monkeypatch) -> None:
    from bts_monai.errors import BtsInputError

    monkeypatch.chdir(tmp_path)
    module = BratsSegModule(build_network("monai.networks.nets.UNet", {**TINY_UNET_3D, "in_channels": 3}))
    dm = _dm(brats21_root, roi_size=[32, 32, 32])
    with pytest.raises(BtsInputError, match="in_channels is 3 but the data need 4"):
        _trainer(tmp_path, fast_dev_run=True).fit(module, dm)
