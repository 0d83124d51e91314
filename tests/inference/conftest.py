"""Fixtures for inference tests (helpers live in ``infer_helpers.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from infer_helpers import MarkerNet, brats_config, lgg_config, save_tiny_checkpoint


@pytest.fixture()
def marker_net() -> MarkerNet:
    """The stub network of :class:`MarkerNet`."""
    return MarkerNet()


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real project checkpoint of a tiny random 3D UNet with 16³ windows; nothing is trained."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt", brats_config())


@pytest.fixture(scope="session")
def tiny_ckpt_roi128(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """As :func:`tiny_ckpt` with the default 128³ windows (for real 240x240x155 cases)."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny128.ckpt", brats_config(roi_size=[128] * 3))


@pytest.fixture(scope="session")
def lgg_ckpt_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real project checkpoint of a tiny random 2D LGG UNet (256x256 slices)."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "lgg.ckpt", lgg_config(roi_size=[256, 256]))
