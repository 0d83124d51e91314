"""Synthetic label maps on which HD95 and the lesion-wise scores are compared with the BraTS 2023 reference.

Shared by ``test_metrics.py``/``test_evaluation.py`` and by ``make_surface_reference.py``, which
ran the reference code (DeepMind ``surface-distance`` and the BraTS 2023 metrics script) on exactly
these arrays and wrote ``data/surface_reference.json``. Only numpy's legacy ``RandomState`` is
used: its streams are frozen, so the arrays are the same on every numpy version (each fixture's
sha256 is recorded beside its reference values, and the tests check it).

Labels follow the BraTS 2023 scheme (1 NETC, 2 SNFH, 3 ET).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

NETC, SNFH, ET = 1, 2, 3


@dataclass(frozen=True)
class Fixture:
    """One prediction/reference pair of 3-D label maps (or 2-D masks) on one grid."""

    name: str
    pred: np.ndarray
    ref: np.ndarray
    spacing: tuple[float, ...]
    challenge: str = "BraTS-GLI"  # the reference's parameter set: GLI dilation 3 / 50 mm³, MET 1 / 2 mm³


def sha256(pred: np.ndarray, ref: np.ndarray) -> str:
    """A checksum of both arrays (as uint8), to prove the fixtures were rebuilt identically."""
    digest = hashlib.sha256()
    for array in (pred, ref):
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array, dtype=np.uint8).tobytes())
    return digest.hexdigest()


def _ellipsoid(shape: tuple[int, ...], centre: tuple[float, ...], radii: tuple[float, ...]) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)) <= 1.0


def _tumour(shape: tuple[int, ...], centre: tuple[float, ...], radius: tuple[float, ...]) -> np.ndarray:
    """Oedema (SNFH) around an enhancing shell (ET) around a necrotic core (NETC)."""
    labels = np.zeros(shape, np.uint8)
    labels[_ellipsoid(shape, centre, radius)] = SNFH
    labels[_ellipsoid(shape, centre, tuple(r * 0.6 for r in radius))] = ET
    labels[_ellipsoid(shape, centre, tuple(r * 0.35 for r in radius))] = NETC
    return labels


def _speckle(labels: np.ndarray, rng: np.random.RandomState, fraction: float, values: tuple[int, ...]) -> np.ndarray:
    """``labels`` with a random ``fraction`` of its voxels set to random ``values`` (isolated specks)."""
    out = labels.copy()
    hit = rng.random_sample(labels.shape) < fraction
    out[hit] = rng.choice(np.asarray(values, np.uint8), size=int(hit.sum()))
    return out


def _erode_labels(labels: np.ndarray) -> np.ndarray:
    """Foreground voxels that have background among their 6 neighbours become background."""
    fg = labels > 0
    inner = fg.copy()
    for axis in range(labels.ndim):
        for step in (1, -1):
            inner &= np.roll(fg, step, axis=axis)
    return np.where(inner, labels, 0).astype(np.uint8)


def fixtures_3d() -> list[Fixture]:
    """The 3-D pairs: shifted, speckled, multi-lesion and empty-region cases on three grids."""
    shape = (48, 44, 28)
    out: list[Fixture] = []
    ref = _tumour(shape, (22.0, 20.0, 13.0), (12.0, 10.0, 7.0))
    shifted = _tumour(shape, (24.0, 19.0, 14.0), (11.0, 11.0, 6.0))
    for spacing, tag in (((1.0, 1.0, 1.0), "iso"), ((1.0, 1.0, 2.5), "aniso")):
        out.append(Fixture(f"shifted_{tag}", shifted, ref, spacing))
    rng = np.random.RandomState(20)
    speckled = _speckle(_erode_labels(ref), rng, 0.004, (SNFH, ET, NETC))
    for spacing, tag in (((1.0, 1.0, 1.0), "iso"), ((1.0, 1.0, 2.5), "aniso"), ((0.9375, 1.2, 3.1), "odd")):
        out.append(Fixture(f"speckled_{tag}", speckled, ref, spacing))

    # Several lesions: a big one found, a small one (24 voxels: over 50 mm³ at 2.5 mm, not at 1 mm)
    # found, a tiny one missed, a big one missed, and two false positives.
    lesions = np.zeros(shape, np.uint8)
    lesions |= _tumour(shape, (12.0, 12.0, 8.0), (7.0, 7.0, 5.0))
    lesions[30:33, 6:10, 4:6] = ET  # 24 voxels
    lesions[40:42, 30:32, 20:22] = ET  # 8 voxels
    lesions |= _tumour(shape, (34.0, 32.0, 18.0), (6.0, 5.0, 4.0))
    pred = np.zeros(shape, np.uint8)
    pred |= _tumour(shape, (13.0, 11.0, 8.0), (7.0, 6.0, 5.0))
    pred[31:34, 6:10, 4:6] = ET
    pred[2:5, 38:42, 2:5] = ET  # false positive, far from everything
    pred[44:46, 2:4, 24:26] = SNFH  # false positive of the whole tumour only
    pred = _speckle(pred, np.random.RandomState(21), 0.0003, (ET,))
    for spacing, tag in (((1.0, 1.0, 1.0), "iso"), ((1.0, 1.0, 2.5), "aniso")):
        out.append(Fixture(f"lesions_{tag}", pred, lesions, spacing))
    out.append(Fixture("lesions_aniso_met", pred, lesions, (1.0, 1.0, 2.5), challenge="BraTS-MET"))

    # Two reference lesions 2 voxels apart (one lesion after dilation) and a prediction of one.
    close = np.zeros(shape, np.uint8)
    close[10:16, 10:16, 10:16] = ET
    close[18:24, 10:16, 10:16] = ET
    close_pred = np.zeros(shape, np.uint8)
    close_pred[10:16, 11:17, 10:16] = ET
    out.append(Fixture("merged_lesions_aniso", close_pred, close, (1.0, 1.0, 2.5)))

    # Regions one side leaves empty: no ET predicted; ET predicted where the reference has none.
    no_et = np.where(shifted == ET, NETC, shifted).astype(np.uint8)
    out.append(Fixture("pred_without_et", no_et, ref, (1.0, 1.0, 2.5)))
    ref_no_et = np.where(ref == ET, NETC, ref).astype(np.uint8)
    out.append(Fixture("ref_without_et", shifted, ref_no_et, (1.0, 1.0, 1.0)))
    return out


def fixtures_2d() -> list[Fixture]:
    """2-D masks (the slices 2-D training validates on), compared on legacy HD95 only."""
    shape = (64, 56)
    ref = _ellipsoid(shape, (30.0, 26.0), (14.0, 11.0))
    shifted = _ellipsoid(shape, (33.0, 25.0), (12.0, 12.0))
    rng = np.random.RandomState(2)
    speckled = (_erode_labels(ref.astype(np.uint8)) > 0) | (rng.random_sample(shape) < 0.01)
    out = []
    for spacing, tag in (((1.0, 1.0), "iso"), ((1.0, 2.5), "aniso"), ((0.9375, 1.2), "odd")):
        out.append(Fixture(f"shifted_2d_{tag}", shifted, ref, spacing))
        out.append(Fixture(f"speckled_2d_{tag}", speckled, ref, spacing))
    return out
