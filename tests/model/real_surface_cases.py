"""Predictions for the ten real BraTS 2018 cases, made from their ground truth by fixed perturbations.

Shared by ``test_surface_real.py`` and by ``make_surface_reference_real.py``, which ran the BraTS 2023
reference code on exactly these predictions and wrote ``data/surface_reference_real.json``. Only
numpy (``np.roll`` and the frozen legacy ``RandomState`` stream) makes them, so the arrays are the
same on every numpy version; each prediction's sha256 is recorded beside its reference values and
the test checks it.

The perturbation is what made the edge-counting HD95 differ from the reference most: a shift of
the whole tumour, holes punched in it and speckle around it (isolated voxels, the surfaces where
area weighting matters most).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

CASES = (
    "Brats18_2013_11_1",
    "Brats18_2013_20_1",
    "Brats18_2013_3_1",
    "Brats18_CBICA_ABM_1",
    "Brats18_CBICA_AME_1",
    "Brats18_CBICA_AQN_1",
    "Brats18_TCIA01_378_1",
    "Brats18_TCIA01_425_1",
    "Brats18_TCIA02_135_1",
    "Brats18_TCIA02_370_1",
)
"""The BraTS 2018 cases under ``$BTS_REAL_DATA/brats2018`` (labels 0, 1, 2, 4)."""

REGIONS_2018 = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}
"""BraTS 2017-2021 regions by label value (the reference script reads 2023 values: ET 3)."""


def gt_path(root: Path, case: str) -> Path:
    """The case's ground-truth file under ``root`` (``$BTS_REAL_DATA/brats2018``)."""
    return Path(root) / case / f"{case}_seg.nii.gz"


def near(mask: np.ndarray, radius: int) -> np.ndarray:
    """``mask`` grown by ``radius`` voxels along every axis and diagonal (a cube's dilation, done as
    a running maximum along each axis in turn; numpy only)."""
    out = np.asarray(mask, dtype=bool)
    for axis in range(out.ndim):
        grown = out.copy()
        for step in range(1, radius + 1):
            lead = [slice(None)] * out.ndim
            lag = [slice(None)] * out.ndim
            lead[axis], lag[axis] = slice(step, None), slice(None, -step)
            grown[tuple(lag)] |= out[tuple(lead)]
            grown[tuple(lead)] |= out[tuple(lag)]
        out = grown
    return out


def perturbed(gt: np.ndarray, index: int) -> np.ndarray:
    """A prediction made from ground truth ``gt`` (BraTS 2018 labels), different for each ``index``:
    shifted by a voxel or two, 3% of its voxels cleared, then speckled: 0.8% of the empty voxels
    within 2 voxels of the tumour become oedema (2) and 1% of those within 2 voxels of the enhancing
    tumour become enhancing (4), all inside the lesion-wise dilation of a true lesion; for even
    ``index`` also 12 isolated voxels further out (false-positive lesions: 6 of WT, 6 of all three
    regions)."""
    rng = np.random.RandomState(1000 + index)
    gt = np.asarray(gt).astype(np.uint8)
    shift = (index % 3 - 1, (index // 3) % 3 - 1, 1 + index % 2)
    pred = np.roll(gt, shift, axis=(0, 1, 2))
    tumour = pred > 0
    pred[tumour & (rng.random_sample(pred.shape) < 0.03)] = 0
    draw = rng.random_sample(pred.shape)
    pred[near(gt > 0, 2) & (pred == 0) & (draw < 0.008)] = 2
    pred[near(gt == 4, 2) & (pred == 0) & (draw > 0.99)] = 4
    if index % 2 == 0:
        far = np.flatnonzero(near(gt > 0, 12) & ~near(gt > 0, 6))
        spots = rng.choice(far, size=12, replace=False)
        pred.flat[spots[:6]] = 2
        pred.flat[spots[6:]] = 4
    return pred


def sha256(array: np.ndarray) -> str:
    """A checksum of a label map (as uint8), to prove the predictions were rebuilt identically."""
    digest = hashlib.sha256(str(array.shape).encode())
    digest.update(np.ascontiguousarray(array, dtype=np.uint8).tobytes())
    return digest.hexdigest()
