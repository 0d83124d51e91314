"""The torch-free CPU path (bts_monai.inference.engine) does what MONAI's transforms and sliding window do."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from bts_monai.inference import engine, geometry

CONFIG = {"scheme": "brats", "intensity": "zscore", "label_mode": "regions", "spacing": [2.0, 2.0, 2.0]}


def _affine(linear: np.ndarray, origin=(10.0, -20.0, 5.0)) -> np.ndarray:
    aff = np.eye(4)
    aff[:3, :3] = linear
    aff[:3, 3] = origin
    return aff


def _rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


AFFINES = {
    "ras-1mm": np.diag([1.0, 1.0, 1.0]),
    "lps": np.diag([-1.0, -1.0, 1.0]),
    "oblique-anisotropic": _rotation(0.3) @ np.diag([0.9, 1.1, 3.0]),
    "permuted-flipped": np.array([[0.0, 0.0, 1.2], [1.0, 0.0, 0.0], [0.0, -0.8, 0.0]]),
}
SPACINGS = {"2mm": [2.0, 2.0, 2.0], "mixed": [1.5, 1.0, 2.5], "none": None}


def _brain(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Two channels, zero outside an irregular 'brain' (so the crop and the mask matter)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((2, *shape), np.float32)
    grid = np.indices(shape).astype(float)
    centre = np.array(shape, float)[:, None, None, None] / 2
    inside = (((grid - centre) / (np.array(shape)[:, None, None, None] * 0.33)) ** 2).sum(0) < 1
    img[:, inside] = rng.uniform(50, 900, (2, int(inside.sum())))
    img[1, inside & (grid[0] < shape[0] / 2)] = 0  # a voxel zero in one channel is still brain
    return img


def _monai(image: np.ndarray, affine: np.ndarray, config: dict):
    transforms = geometry.model_space_transforms(config, "nifti")
    return geometry.to_model_space(image, affine, transforms), transforms


@pytest.mark.parametrize("spacing", list(SPACINGS))
@pytest.mark.parametrize("orientation", list(AFFINES))
def test_round_trip_equals_monai(orientation: str, spacing: str):
    config = {**CONFIG, "spacing": SPACINGS[spacing]}
    affine = _affine(AFFINES[orientation])
    image = _brain((41, 36, 23), seed=len(orientation) + len(spacing))
    mt, transforms = _monai(image, affine, config)
    x, plan = engine.to_model_space(image, affine, config)
    want = mt.as_tensor().numpy()
    assert x.shape == want.shape  # the same crop box...
    np.testing.assert_allclose(plan.affine, mt.affine.numpy(), atol=1e-9)  # ...at the same place
    if orientation == "oblique-anisotropic" and spacing != "none":
        # A rotated grid: MONAI's float64 sampling also picks up the ~1e-16 off-diagonal round-off
        # of the rotation, which marks a few more boundary voxels as brain (here 38 of ~4900) and
        # shifts the z-score statistics by ~1% of a standard deviation. Not reproduced: close, not equal.
        both = (x != 0).any(0) == (want != 0).any(0)
        assert both.mean() > 0.99
        np.testing.assert_allclose(x[:, both], want[:, both], atol=0.1)
    else:
        np.testing.assert_allclose(x, want, atol=2e-5)  # the same resampled, normalised values
    values = np.random.default_rng(1).random((3, *x.shape[1:]), dtype=np.float32)
    back_want = geometry.to_input_grid(torch.from_numpy(values), mt, transforms).numpy()
    back = engine.to_input_grid(values, plan)
    assert back.shape == (3, *image.shape[1:])
    np.testing.assert_allclose(back, back_want, atol=1e-5)


def test_tiff_model_space_is_intensity_only():
    config = {**CONFIG, "intensity": "unit", "spacing": None}
    image = np.random.default_rng(0).integers(0, 300, (3, 32, 24, 5)).astype(np.float32)
    transforms = geometry.model_space_transforms(config, "tiff")
    want = transforms({"image": torch.from_numpy(image.copy())})["image"]
    x, plan = engine.to_model_space(image, np.eye(4), config, "tiff")
    np.testing.assert_allclose(x, np.asarray(want), atol=1e-7)
    assert engine.to_input_grid(x[:1], plan).shape == (1, 32, 24, 5)


@pytest.mark.parametrize("n_out,n_src,scale,shift", [(120, 240, 2.0, 0.0), (78, 155, 2.0, 0.0), (37, 50, 1.37, 0.25)])
def test_sample_coordinates_are_torchs_bit_for_bit(n_out, n_src, scale, shift):
    """The emulation of MONAI's float64 coordinate path (it decides MONAI's crop box)."""
    import torch.nn.functional as F
    from monai.networks.utils import to_norm_affine

    xform = torch.eye(4, dtype=torch.float64)
    xform[0, 0], xform[0, 3] = scale, shift
    theta = to_norm_affine(xform[None], (n_src, 8, 8), (n_out, 8, 8), align_corners=False)
    rev = torch.as_tensor([2, 1, 0])
    theta[:, :3] = theta[:, rev]
    theta[:, :, :3] = theta[:, :, rev]
    grid = F.affine_grid(theta[:, :3], [1, 1, n_out, 8, 8], align_corners=False)[0, :, 0, 0, 2].numpy()
    want = ((grid + 1) * n_src - 1) / 2
    got = engine._grid_sample_coords(scale, shift, n_out, n_src)
    assert np.array_equal(got, want)


@pytest.mark.parametrize("mode,overlap", [("gaussian", 0.5), ("constant", 0.25)])
def test_sliding_window_equals_monai(mode: str, overlap: float):
    from monai.inferers import SlidingWindowInferer

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(2, 3, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv3d(3, 3, 3, padding=1))
    image = np.random.default_rng(0).standard_normal((2, 30, 17, 21)).astype(np.float32)  # smaller than roi on one axis
    roi = [16, 20, 12]
    with torch.no_grad():
        want = SlidingWindowInferer(roi, 1, overlap, mode=mode)(torch.from_numpy(image)[None], net)[0].numpy()

        def run(windows: np.ndarray) -> np.ndarray:
            return net(torch.from_numpy(windows)).numpy()

        got = engine.sliding_window(image, run, roi, [overlap] * 3, mode)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert len(engine.window_starts([30, 20, 21], roi, [overlap] * 3)) > 1


def test_class_probabilities():
    logits = np.random.default_rng(0).standard_normal((3, 4, 5)).astype(np.float32) * 5
    np.testing.assert_allclose(
        engine.class_probabilities(logits, "regions"), torch.sigmoid(torch.from_numpy(logits)).numpy(), atol=1e-6
    )
    np.testing.assert_allclose(
        engine.class_probabilities(logits, "labels"), torch.softmax(torch.from_numpy(logits), 0).numpy(), atol=1e-6
    )


REAL = os.environ.get("BTS_REAL_DATA")


@pytest.mark.skipif(not REAL, reason="BTS_REAL_DATA is not set (the real BraTS cases)")
@pytest.mark.parametrize("case", ["Brats18_2013_3_1", "Brats18_2013_11_1", "Brats18_TCIA01_425_1"])
def test_real_case_box_and_values_equal_monai(case: str):
    """On these cases MONAI's crop box is a plane larger than the exact one on some side (its
    float64 sampling noise); the engine reproduces it, and the values."""
    import nibabel as nib

    folder = Path(str(REAL)) / "brats2018" / case
    if not folder.is_dir():
        pytest.skip(f"{folder} is not there")
    imgs = [nib.load(glob.glob(str(folder / f"*_{m}.nii.gz"))[0]) for m in ("flair", "t1", "t1ce", "t2")]
    image = np.stack([np.asarray(i.dataobj, dtype=np.float32) for i in imgs])
    mt, _ = _monai(image, imgs[0].affine, CONFIG)
    x, plan = engine.to_model_space(image, imgs[0].affine, CONFIG)
    assert x.shape == tuple(mt.shape)
    np.testing.assert_allclose(plan.affine, mt.affine.numpy(), atol=1e-9)
    np.testing.assert_allclose(x, mt.as_tensor().numpy(), atol=2e-5)
