"""Fixtures for the web server's tests: tiny trained checkpoints, their predictors and a
synthetic case to upload (helpers that build requests live in ``serve_helpers``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from serve_helpers import CASE

from bts_monai.inference.predictor import Predictor

BRATS_SHAPE = (32, 32, 32)


def _zscore(image: np.ndarray) -> np.ndarray:
    """Channel-wise z-score over the non-zero voxels (the checkpoints' ``intensity: zscore``)."""
    out = image.astype(np.float32)
    for channel in out:
        inside = channel != 0
        if inside.any():
            values = channel[inside]
            channel[inside] = (values - values.mean()) / max(float(values.std()), 1e-6)
    return out


def _fit_voxel_classifier(features: np.ndarray, targets: np.ndarray, steps: int = 200) -> torch.nn.Linear:
    """Logistic regression per voxel: the synthetic tumours differ from brain in every modality."""
    x = torch.from_numpy(features.reshape(features.shape[0], -1).T.copy())
    y = torch.from_numpy(targets.reshape(targets.shape[0], -1).T.astype(np.float32))
    torch.manual_seed(0)
    lin = torch.nn.Linear(x.shape[1], y.shape[1])
    opt = torch.optim.Adam(lin.parameters(), lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(lin(x), y)
        loss.backward()
        opt.step()
    return lin


def make_tiny_checkpoint(path: Path, kind: str = "brats") -> Path:
    """A checkpoint of :class:`BratsSegModule` whose network is a fitted 1x1(x1) convolution.

    Built through the module's public API (``build_network``, ``inference_config``) and saved with
    the keys ``load_checkpoint`` reads, in well under a second of fitting.
    """
    from bts_monai.data.datamodule import LGG_CHANNELS
    from bts_monai.data.discovery import BRATS_MODALITIES
    from bts_monai.data.synthetic import synthetic_brats_arrays
    from bts_monai.labels import get_scheme
    from bts_monai.model.module import BratsSegModule, build_network, default_data_config

    if kind == "brats":
        scheme = get_scheme("brats2021")
        images, label = synthetic_brats_arrays(BRATS_SHAPE, seed=1)
        features = _zscore(np.stack([images[m] for m in BRATS_MODALITIES]))
        targets = scheme.to_regions(label)
        net = build_network("torch.nn.Conv3d", {"in_channels": 4, "out_channels": 3, "kernel_size": 1})
        config = default_data_config(3) | {"roi_size": list(BRATS_SHAPE)}
    else:
        import tifffile

        from bts_monai.data.synthetic import make_lgg_patient

        scheme = get_scheme("lgg")
        pdir = make_lgg_patient(path.parent / "lgg_fit", "TCGA_FIT_0000_20010101", n_slices=8, size=32, seed=3)
        files = sorted(pdir.glob("*_[0-9].tif"))
        rgb = np.stack([tifffile.imread(f) for f in files]).astype(np.float32)  # (N, H, W, 3)
        masks = np.stack([tifffile.imread(str(f).replace(".tif", "_mask.tif")) for f in files])
        features = _zscore(np.moveaxis(rgb, -1, 0))
        targets = scheme.to_regions(masks)
        net = build_network("torch.nn.Conv2d", {"in_channels": 3, "out_channels": 1, "kernel_size": 1})
        config = default_data_config(2) | {
            "modalities": list(LGG_CHANNELS),
            "dataset": "lgg",
            "scheme": "lgg",
            "roi_size": [32, 32],
        }
    lin = _fit_voxel_classifier(features, targets)
    with torch.no_grad():
        net.weight.copy_(lin.weight.reshape(net.weight.shape))
        net.bias.copy_(lin.bias)
    module = BratsSegModule(net, data_config=config)
    from bts_monai.model.module import INFERENCE_KEY

    torch.save({"state_dict": module.state_dict(), INFERENCE_KEY: module.inference_config()}, path)
    return path


@pytest.fixture(scope="session")
def brats_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BraTS (4 modalities -> TC, WT, ET) checkpoint that finds the synthetic tumours."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_brats.ckpt", "brats")


@pytest.fixture(scope="session")
def lgg_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 2D LGG (3 channels -> abnormality) checkpoint."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_lgg.ckpt", "lgg")


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """The tiny model needs no more; other engineers' tests share the machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def brats_predictor(brats_ckpt: Path) -> Predictor:
    """The tiny BraTS checkpoint's predictor (CPU)."""
    return Predictor.from_checkpoint(brats_ckpt, device="cpu")


@pytest.fixture(scope="module")
def lgg_predictor(lgg_ckpt: Path) -> Predictor:
    """The tiny LGG checkpoint's predictor (CPU)."""
    return Predictor.from_checkpoint(lgg_ckpt, device="cpu")


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic 32³ BraTS 2021-named case (:data:`serve_helpers.CASE`) with its label."""
    from bts_monai.data.synthetic import make_brats_case

    return make_brats_case(tmp_path_factory.mktemp("cases"), CASE, shape=(32, 32, 32), seed=4)
