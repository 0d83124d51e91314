"""Helpers of the inference tests: tiny networks, inference configs and synthetic inputs."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from torch import nn

from bts_monai.data.discovery import BRATS_MODALITIES
from bts_monai.inference.io import LGG_CHANNELS
from bts_monai.labels import get_scheme

MARKER = 5000.0
"""Intensity of the marker voxel: far above the brain, so z-scored it stands out alone."""


def brats_config(**overrides) -> dict:
    """A 3D BraTS inference config with 16³ windows (several per synthetic volume)."""
    cfg = {
        "net": {"class_path": "monai.networks.nets.UNet", "init_args": {}},
        "modalities": list(BRATS_MODALITIES),
        "dataset": "brats2021",
        "scheme": "brats2021",
        "label_mode": "regions",
        "spatial_dims": 3,
        "roi_size": [16, 16, 16],
        "intensity": "zscore",
        "spacing": None,
    }
    cfg.update(overrides)
    return cfg


def lgg_config(**overrides) -> dict:
    """A 2D LGG inference config."""
    cfg = brats_config(modalities=list(LGG_CHANNELS), dataset="lgg", scheme="lgg", spatial_dims=2, roi_size=[32, 32])
    cfg["intensity"] = "unit"
    cfg.update(overrides)
    return cfg


class MarkerNet(nn.Module):
    """A stub "network": every output channel is high exactly where channel 0 is far above the
    brain (the marker voxel), so the predicted label map is the marker, voxel for voxel."""

    def __init__(self, out_channels: int = 3, threshold: float = 4.0) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.threshold = threshold
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logit = (x[:, :1] - self.threshold) * 50.0
        return logit.expand(-1, self.out_channels, *x.shape[2:]) + self.dummy * 0


def tiny_unet(in_channels: int = 4, out_channels: int = 3, spatial_dims: int = 3, seed: int = 0) -> nn.Module:
    """A two-level MONAI UNet with random (seeded) weights."""
    from monai.networks.nets import UNet

    torch.manual_seed(seed)
    return UNet(spatial_dims, in_channels, out_channels, channels=(4, 8), strides=(2,), num_res_units=0).eval()


def oblique_affine() -> np.ndarray:
    """Rotated about two axes, anisotropic, shifted: a scanner's oblique acquisition."""
    a, b = 0.35, -0.2
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    aff = np.eye(4)
    aff[:3, :3] = rz @ rx @ np.diag([-0.9, 1.1, 1.6])
    aff[:3, 3] = [12.5, -30.0, 7.25]
    return aff


def brain_volume(shape=(30, 34, 26), seed: int = 0) -> np.ndarray:
    """An ellipsoidal "brain" (zero outside, noisy inside) that leaves a margin to crop."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    r = sum(((g - (s - 1) / 2) / (s * 0.38)) ** 2 for g, s in zip(grids, shape))
    brain = r <= 1
    return np.where(brain, 100 + rng.normal(0, 5, shape), 0).astype(np.float32)


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray, qcode: int = 1, scode: int = 1) -> Path:
    """Save with explicit qform/sform codes."""
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=qcode)
    img.set_sform(affine, code=scode)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    return path


def marker_case(
    root: Path,
    affine: np.ndarray,
    marker: tuple[int, int, int] = (9, 21, 7),
    case_id: str = "BraTS2021_00077",
    shape=(30, 34, 26),
    qcode: int = 1,
    scode: int = 1,
) -> Path:
    """A BraTS case folder whose flair (first modality) holds one marker voxel inside the brain."""
    case = root / case_id
    for i, m in enumerate(BRATS_MODALITIES):
        vol = brain_volume(shape, seed=i)
        if m == "flair":
            assert vol[marker] > 0, "the marker must lie inside the brain"
            vol[marker] = MARKER
        write_nifti(case / f"{case_id}_{m}.nii.gz", vol.astype(np.int16), affine, qcode, scode)
    return case


def save_tiny_checkpoint(path: Path, config: dict) -> Path:
    """A real project checkpoint (the training module's own save hook) of a tiny random UNet
    matching ``config``; nothing is trained."""
    from bts_monai.model.module import BratsSegModule, build_network

    torch.manual_seed(0)
    dims = int(config["spatial_dims"])
    out = get_scheme(config["scheme"]).num_regions
    net = build_network(
        "monai.networks.nets.UNet",
        {
            "spatial_dims": dims,
            "in_channels": len(config["modalities"]),
            "out_channels": out,
            "channels": [4, 8],
            "strides": [2],
        },
    )
    module = BratsSegModule(net, data_config={k: v for k, v in config.items() if k != "net"})
    ckpt: dict = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return path
