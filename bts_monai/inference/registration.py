"""Rigid co-registration of one MR sequence onto another (same patient, same session).

**SimpleITK** does the work: the maintained wrapper of ITK's registration framework, with wheels
for every platform on PyPI, no binaries to fetch at run time and no pins on numpy or scipy.
ANTsPy (``antspyx`` 0.6) runs the same ITK optimisers but pins ``numpy<2.4`` and ``scipy<1.16``
(this project runs numpy 2.4) and pulls pandas, statsmodels and scikit-learn, so it is not used.

The recipe is the standard one for intra-subject multi-modal MR: a 6-parameter Euler transform
starting at the identity (scanner coordinates of one session already roughly agree; centring the
image grids would add an offset when fields of view differ), Mattes mutual information (the
sequences' intensities are not related linearly), regular-step gradient descent with physically
scaled steps, three resolution levels (8, 4 and 2 mm voxels, :data:`LEVELS_MM`) and a fixed random
sampling seed so a run is repeatable.
Measured speed and accuracy: ``benchmarks/README.md`` (DICOM registration).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from bts_monai.errors import BtsInputError

__all__ = ["register_rigid", "to_sitk", "ras_matrix", "LEVELS_MM", "SAMPLING_SEED"]

LEVELS_MM = (8.0, 4.0, 2.0)
"""Voxel sizes (mm) the registration runs at, coarse to fine (never finer than the reference
series' own). Going on to 1 mm took 2.5x as long on the real cases for 0.06 mm less error (0.18
vs 0.24 mm mean, benchmarks/README.md "DICOM registration"); the transform found is applied at
full resolution either way."""

SAMPLING_SEED = 20250101
"""Seed of the metric's random sampling: the same inputs give the same transform (ITK reads a
seed of 0, ``sitk.sitkWallClock``, as "seed from the clock")."""

_LPS = np.diag([-1.0, -1.0, 1.0])


def _sitk() -> Any:
    try:
        import SimpleITK as sitk
    except ImportError as exc:
        raise BtsInputError(None, "--register needs SimpleITK: pip install 'bts_monai[dicom]'") from exc
    return sitk


def to_sitk(volume: np.ndarray, affine: np.ndarray) -> Any:
    """A SimpleITK image of an ``(i, j, k)`` volume with a NIfTI RAS affine (ITK works in LPS).

    Raises:
        ValueError: the affine's axes are not orthogonal (ITK images cannot be sheared).
    """
    sitk = _sitk()
    aff = np.asarray(affine, dtype=np.float64)
    lin = _LPS @ aff[:3, :3]
    spacing = np.linalg.norm(lin, axis=0)
    direction = lin / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise ValueError("sheared voxel grid (gantry tilt?): ITK needs orthogonal axes")
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(volume, dtype=np.float32).transpose(2, 1, 0)))
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(o) for o in _LPS @ aff[:3, 3]])
    img.SetDirection([float(d) for d in direction.ravel()])
    return img


def ras_matrix(transform: Any) -> np.ndarray:
    """The 4x4 RAS matrix of a SimpleITK affine-like transform (which maps LPS points of the fixed
    image to LPS points of the moving one), read off the images of four points so that composite
    results of the registration method work too."""
    origin = np.zeros(3)
    mapped0 = np.asarray(transform.TransformPoint(origin.tolist()), dtype=np.float64)
    lps = np.eye(4)
    for axis in range(3):
        unit = origin.copy()
        unit[axis] = 1.0
        lps[:3, axis] = np.asarray(transform.TransformPoint(unit.tolist()), dtype=np.float64) - mapped0
    lps[:3, 3] = mapped0
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    return flip @ lps @ flip


def register_rigid(
    fixed: np.ndarray,
    fixed_affine: np.ndarray,
    moving: np.ndarray,
    moving_affine: np.ndarray,
    iterations: int = 200,
    sampling: float = 0.05,
    levels_mm: Sequence[float] = LEVELS_MM,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Find the rigid transform that aligns ``moving`` with ``fixed`` and resample ``moving`` onto
    ``fixed``'s grid (linear interpolation, zero outside).

    Args:
        fixed: the reference volume ``(i, j, k)``; its grid is the output's.
        fixed_affine: its voxel -> RAS affine.
        moving: the volume to align.
        moving_affine: its voxel -> RAS affine.
        iterations: most optimiser steps per resolution level.
        sampling: share of the fixed image's voxels the metric samples.
        levels_mm: voxel size of each resolution level, coarse to fine: the reference is shrunk
            by the whole factor nearest to ``level / its smallest spacing`` (at least 1) and
            smoothed by half the level's voxel size (not at all at full resolution).

    Returns:
        ``(resampled, record)``: ``moving`` on ``fixed``'s grid (float32), and the transform for
        the report: ``matrix_ras`` (4x4, maps a point of the reference, RAS mm, to the same
        anatomy in the moving series), ``rotation_deg`` (about x, y, z), ``translation_mm``
        (RAS), ``metric`` (final Mattes mutual information, lower is better), ``iterations``,
        ``seconds``, ``summary``.

    Raises:
        BtsInputError: a grid ITK cannot represent, or the optimiser failed.
    """
    sitk = _sitk()
    start = time.perf_counter()
    try:
        fixed_img = to_sitk(fixed, fixed_affine)
        moving_img = to_sitk(moving, moving_affine)
    except ValueError as exc:
        raise BtsInputError(None, f"cannot register: {exc}") from exc
    init = sitk.Euler3DTransform()
    size = np.asarray(fixed_img.GetSize(), dtype=np.float64)
    init.SetCenter(fixed_img.TransformContinuousIndexToPhysicalPoint([float(s) for s in (size - 1) / 2]))
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(sampling, SAMPLING_SEED)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0,
        minStep=1e-4,
        numberOfIterations=iterations,
        relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-8,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    shrink = _shrink_factors(levels_mm, min(fixed_img.GetSpacing()))
    reg.SetShrinkFactorsPerLevel(shrink)
    reg.SetSmoothingSigmasPerLevel([0.0 if n == 1 else n * min(fixed_img.GetSpacing()) / 2.0 for n in shrink])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(init, inPlace=False)
    try:
        found = reg.Execute(sitk.Cast(fixed_img, sitk.sitkFloat32), sitk.Cast(moving_img, sitk.sitkFloat32))
    except RuntimeError as exc:  # ITK: e.g. too few samples inside both images
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "failed"
        raise BtsInputError(None, f"rigid registration failed ({first})") from exc
    out = sitk.Resample(moving_img, fixed_img, found, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    resampled = sitk.GetArrayFromImage(out).transpose(2, 1, 0).astype(np.float32, copy=False)
    matrix = ras_matrix(found)
    rotation = _euler_angles_deg(matrix[:3, :3])
    translation = matrix[:3, 3]
    seconds = time.perf_counter() - start
    shift = float(np.linalg.norm(_shift_at_centre(matrix, fixed_affine, fixed.shape)))
    record = {
        "method": f"SimpleITK rigid (Euler3D), Mattes mutual information, shrink {'/'.join(map(str, shrink))}",
        "onto_grid_of": "reference series",
        "matrix_ras": matrix.round(6).tolist(),
        "rotation_deg": [round(float(r), 4) for r in rotation],
        "translation_mm": [round(float(t), 4) for t in translation],
        "shift_at_centre_mm": round(shift, 4),
        "metric": round(float(reg.GetMetricValue()), 6),
        "iterations": int(reg.GetOptimizerIteration()),
        "stop": reg.GetOptimizerStopConditionDescription(),
        "seconds": round(seconds, 3),
    }
    record["summary"] = (
        f"rotation {max(abs(r) for r in record['rotation_deg']):.2f} deg, shift {shift:.2f} mm at the centre, "
        f"{seconds:.1f} s"
    )
    return resampled, record


def _shrink_factors(levels_mm: Sequence[float], spacing: float) -> list[int]:
    """Whole shrink factors for the levels' voxel sizes, coarse to fine, without repeats."""
    out: list[int] = []
    for level in levels_mm:
        n = max(1, round(float(level) / spacing))
        if not out or n < out[-1]:
            out.append(n)
    return out


def _euler_angles_deg(rot: np.ndarray) -> np.ndarray:
    """Rotation about x, y, z (degrees) of ``R = Rz @ Ry @ Rx``."""
    sy = -float(np.clip(rot[2, 0], -1.0, 1.0))
    return np.degrees([np.arctan2(rot[2, 1], rot[2, 2]), np.arcsin(sy), np.arctan2(rot[1, 0], rot[0, 0])])


def _shift_at_centre(matrix: np.ndarray, affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    centre = np.asarray(affine) @ np.array([*(np.asarray(shape[:3]) - 1) / 2.0, 1.0])
    return (matrix @ centre)[:3] - centre[:3]
