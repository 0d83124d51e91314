"""load_checkpoint: the network rebuilt from the file alone, and clear errors for bad files."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from bts_monai.data.datamodule import BratsDataModule
from bts_monai.errors import BtsInputError
from bts_monai.model.checkpoint import REQUIRED_KEYS, load_checkpoint, read_inference_config
from bts_monai.model.module import BratsSegModule, build_network

torch.set_num_threads(1)

NET = {
    "class_path": "monai.networks.nets.UNet",
    "init_args": {"spatial_dims": 3, "in_channels": 4, "out_channels": 3, "channels": [4, 8], "strides": [2]},
}


@pytest.fixture(scope="module")
def trained_ckpt(brats21_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BratsSegModule]:
    tmp = tmp_path_factory.mktemp("ckpt")
    module = BratsSegModule(build_network(NET["class_path"], NET["init_args"]))
    dm = BratsDataModule(
        data_root=str(brats21_root),
        roi_size=[32, 32, 32],
        num_workers=0,
        num_samples=1,
        batch_size=2,
        split_file=str(tmp / "split.json"),
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        precision="32-true",
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp),
    )
    trainer.fit(module, dm)
    path = tmp / "model.ckpt"
    trainer.save_checkpoint(path)
    return path, module


def test_round_trip(trained_ckpt) -> None:
    path, module = trained_ckpt
    raw = torch.load(path, map_location="cpu", weights_only=True)  # plain data only
    assert raw["hyper_parameters"]["net"] == NET
    net, config = load_checkpoint(path)
    assert not net.training
    assert set(REQUIRED_KEYS) <= set(config)
    assert config["net"] == NET
    assert config["modalities"] == ["flair", "t1", "t1ce", "t2"]
    assert config["scheme"] == "brats2021" and config["label_mode"] == "regions"
    assert config["spatial_dims"] == 3 and config["roi_size"] == [32, 32, 32]
    x = torch.randn(1, 4, 32, 32, 32)
    module.eval()
    with torch.no_grad():
        assert torch.allclose(net(x), module(x), atol=1e-6)
    assert read_inference_config(path) == config


def test_lightning_load_from_checkpoint(trained_ckpt) -> None:
    path, _ = trained_ckpt
    module = BratsSegModule.load_from_checkpoint(path, weights_only=True)
    assert module.net_config == NET
    assert module.config["roi_size"] == [32, 32, 32]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BtsInputError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.ckpt")


def test_truncated_file(trained_ckpt, tmp_path: Path) -> None:
    path, _ = trained_ckpt
    bad = tmp_path / "truncated.ckpt"
    bad.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(BtsInputError, match="corrupt or truncated") as err:
        load_checkpoint(bad)
    assert str(bad) in str(err.value)


def test_not_a_torch_file(tmp_path: Path) -> None:
    bad = tmp_path / "text.ckpt"
    bad.write_text("hello")
    with pytest.raises(BtsInputError, match="corrupt or truncated"):
        load_checkpoint(bad)


def test_foreign_checkpoint(tmp_path: Path) -> None:
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, other)
    with pytest.raises(BtsInputError, match="not a bts_monai checkpoint"):
        load_checkpoint(other)
    weights = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(1)}, weights)
    with pytest.raises(BtsInputError, match="not a Lightning checkpoint"):
        load_checkpoint(weights)


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {}, "x": zipfile.ZipInfo("a")}, bad)  # an arbitrary class instance
    with pytest.raises(BtsInputError, match="corrupt or truncated"):
        load_checkpoint(bad)


def test_untrusted_network_class(trained_ckpt, tmp_path: Path) -> None:
    path, _ = trained_ckpt
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    ckpt["bts_inference"]["net"]["class_path"] = "some_package.Net"
    bad = tmp_path / "untrusted.ckpt"
    torch.save(ckpt, bad)
    with pytest.raises(BtsInputError, match="outside"):
        load_checkpoint(bad)


def test_network_spec_missing(trained_ckpt, tmp_path: Path) -> None:
    path, _ = trained_ckpt
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    ckpt["bts_inference"]["net"] = None
    bad = tmp_path / "nospec.ckpt"
    torch.save(ckpt, bad)
    with pytest.raises(BtsInputError, match="how to build its network"):
        load_checkpoint(bad)
