"""One training step and one whole-volume validation on a real BraTS 2018 case (needs $BTS_REAL_DATA)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from bts_monai.data.datamodule import BratsDataModule
from bts_monai.model.module import BratsSegModule, build_network

torch.set_num_threads(1)


@pytest.mark.slow
@pytest.mark.real_data
def test_fast_dev_run_on_real_brats(real_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    net = build_network(
        "monai.networks.nets.UNet",
        {"spatial_dims": 3, "in_channels": 4, "out_channels": 3, "channels": [4, 8], "strides": [2]},
    )
    module = BratsSegModule(net, sw_batch_size=4)
    dm = BratsDataModule(
        data_root=str(real_data / "brats2018"),
        spacing=[2.0, 2.0, 2.0],
        roi_size=[64, 64, 64],
        num_samples=1,
        batch_size=1,
        num_workers=0,
        val_fraction=0.2,
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        precision="32-true",
        fast_dev_run=True,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(module, dm)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    for region in ("TC", "WT", "ET"):
        assert 0.0 <= logged[f"val/dice_{region}"] <= 1.0
        assert np.isfinite(logged[f"val/hd95_{region}"])
    assert module.config["dataset"] == "brats2018" and module.config["spacing"] == [2.0, 2.0, 2.0]
