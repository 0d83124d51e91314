"""The torch-free CPU inference path: model-space geometry and sliding windows in NumPy and SciPy.

On a CPU, with an ONNX runtime running the network, nothing of inference needs torch or MONAI, and
importing the two costs ~3.5 s of a one-case ``bts-infer`` run (more than the network on the
default model; benchmarks/README.md). This module does, in NumPy/SciPy, exactly what the MONAI path
(:mod:`bts_monai.inference.geometry`, :class:`monai.inferers.SlidingWindowInferer`) does:

- **to model space**: training's deterministic transforms without the loaders -- ``Orientationd``
  to RAS (nibabel's orientation, as MONAI's), ``Spacingd`` (bilinear, border padding; MONAI's
  ``zoom_affine`` and ``compute_shape_offset`` for the output grid, resampling through the same
  voxel-to-voxel matrix), ``CropForegroundd`` (non-zero in any channel) and the intensity
  normalisation (:func:`~bts_monai.data.transforms.intensity_transform`);
- **the windows**: MONAI's window grid (``_get_scan_interval``, ``dense_patch_slices``), padding of
  images smaller than a window, its Gaussian or constant importance map and its blending;
- **back to the input grid**: the inverse of each step (pad the box with zeros, resample back with
  the inverse matrix, reorient to the file's axes).

MONAI is not reused here because it cannot be imported without torch; tests compare every step
with MONAI's on random volumes with oblique, LPS and anisotropic affines
(``tests/inference/test_engine.py``).

One thing is done differently, for speed, with the same result: MONAI resamples the whole volume
and then crops the brain's box; here only the part of the output grid that the input's non-zero box
can reach is resampled (every other output voxel interpolates zeros only, so it is exactly 0 either
way), and on the way back only the input voxels that sample the brain box are interpolated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bts_monai.data.brain import brain_mask

__all__ = [
    "AFFINE_TOL",
    "GridPlan",
    "class_probabilities",
    "importance_map",
    "normalize_intensity",
    "sliding_window",
    "to_input_grid",
    "to_model_space",
    "window_starts",
]

AFFINE_TOL = 1e-3
"""MONAI's ``monai.data.utils.AFFINE_TOL``: spacings and affines closer than this count as equal."""

RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


@dataclass
class GridPlan:
    """How a case went from its file's grid to model space, for :func:`to_input_grid`.

    Attributes:
        in_shape: the file's spatial shape.
        ornt: nibabel orientation transform file axes -> RAS (``None``: no reorientation, TIFF).
        ras_shape: spatial shape after reorientation.
        xform: model-grid voxel -> RAS voxel matrix (``None``: no resampling).
        spaced_shape: spatial shape of the resampled grid.
        box: the brain box in the resampled grid, ``(start, stop)`` per axis.
        affine: the model-space affine of the box (RAS, resampled, cropped).
    """

    in_shape: tuple[int, ...]
    ornt: np.ndarray | None
    ras_shape: tuple[int, ...]
    xform: np.ndarray | None
    spaced_shape: tuple[int, ...]
    box: tuple[tuple[int, int], ...]
    affine: np.ndarray


# ---- orientation ---------------------------------------------------------------------------------
def _ras_transform(affine: np.ndarray) -> np.ndarray:
    import nibabel as nib

    src = nib.orientations.io_orientation(affine)
    return nib.orientations.ornt_transform(src, nib.orientations.axcodes2ornt("RAS", labels=RAS_LABELS))


def _apply_ornt(image: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """nibabel's ``apply_orientation`` (what MONAI's ``Orientation`` does) on the spatial axes of a
    channel-first array; flips and transposes, so a view."""
    import nibabel as nib

    return np.moveaxis(nib.orientations.apply_orientation(np.moveaxis(image, 0, -1), ornt), -1, 0)


def _inverse_ornt(ornt: np.ndarray) -> np.ndarray:
    """The orientation transform that undoes ``ornt`` (RAS axes -> the file's)."""
    inv = np.zeros_like(ornt)
    for src_axis, (dst_axis, flip) in enumerate(ornt):
        inv[int(dst_axis)] = (src_axis, flip)
    return inv


# ---- resampling (MONAI's Spacing) ----------------------------------------------------------------
def _zoom_affine(affine: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """MONAI's ``zoom_affine(affine, scale, diagonal=False)``: the rotation kept, the zooms replaced."""
    rzs = affine[:-1, :-1]
    zs = np.linalg.cholesky(rzs.T @ rzs).T
    rotation = rzs @ np.linalg.inv(zs)
    s = np.sign(np.diag(zs)) * np.abs(scale)
    out = np.eye(len(affine))
    out[:-1, :-1] = rotation @ np.diag(s)
    return out


def _shape_offset(shape: Sequence[int], in_affine: np.ndarray, out_affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MONAI's ``compute_shape_offset(..., scale_extent=False)``: the output grid's shape and origin."""
    shape_ = np.asarray(shape, dtype=float)
    corners = np.asarray(np.meshgrid(*[(0.0, d - 1.0) for d in shape_], indexing="ij")).reshape(len(shape_), -1)
    corners = np.concatenate((corners, np.ones_like(corners[:1])))
    corners_out = np.linalg.solve(out_affine, in_affine) @ corners
    corners = in_affine @ corners
    all_dist = corners_out[:-1].copy()
    corners_out = corners_out[:-1] / corners_out[-1]
    out_shape = np.round(np.ptp(corners_out, axis=1) + 1.0)
    offset = None
    for i in range(corners.shape[1]):
        if np.allclose(np.min(all_dist - all_dist[:, i : i + 1], 1), 0.0, rtol=AFFINE_TOL):
            offset = corners[:-1, i]
            break
    if offset is None:
        offset = in_affine[:-1, :-1] @ (shape_ / 2.0) + in_affine[:-1, -1] - out_affine[:-1, :-1] @ (out_shape / 2.0)
    return out_shape.astype(int), offset


def _spaced_grid(
    affine: np.ndarray, shape: Sequence[int], pixdim: Sequence[float]
) -> tuple[np.ndarray, tuple[int, ...]]:
    """The affine and shape MONAI's ``Spacing(pixdim)`` resamples onto."""
    out_d = np.asarray(pixdim, dtype=float)[: len(shape)]
    if out_d.size < len(shape):
        out_d = np.append(out_d, [out_d[-1]] * (len(shape) - out_d.size))
    import nibabel as nib

    orig = nib.affines.voxel_sizes(affine)
    out_d = np.where(np.abs(orig - out_d) <= AFFINE_TOL, orig, out_d)  # MONAI keeps a spacing within tolerance
    new_affine = _zoom_affine(affine, out_d)
    out_shape, offset = _shape_offset(shape, affine, new_affine)
    new_affine[:-1, -1] = offset
    return new_affine, tuple(int(s) for s in out_shape)


def _diagonal(matrix: np.ndarray) -> bool:
    off = matrix[:-1, :-1] - np.diag(np.diag(matrix[:-1, :-1]))
    return bool(np.all(np.abs(off) < 1e-9))


def _resample(
    image: np.ndarray, xform: np.ndarray, start: Sequence[int], shape: Sequence[int], out: np.ndarray | None = None
) -> np.ndarray:
    """``out[c, j] = image[c](xform @ (start + j))``: linear interpolation, edges replicated (MONAI's
    bilinear ``grid_sample`` with ``padding_mode="border"``, voxel centres at integer indices)."""
    shape = [int(s) for s in shape]
    if out is None:
        out = np.empty((image.shape[0], *shape), dtype=np.float32)
    if _diagonal(xform):
        # Trilinear interpolation on an axis-aligned grid is three 1-D linear interpolations, one
        # per axis: the same values (to float32 rounding), 3-5x faster than SciPy's affine_transform.
        result = image
        for d in range(len(shape)):
            n = image.shape[d + 1]
            c = np.clip(float(xform[d, d]) * (np.arange(shape[d]) + start[d]) + float(xform[d, -1]), 0, n - 1)
            f = np.floor(c).astype(np.intp)
            g = np.minimum(f + 1, n - 1)
            if not np.any(c - f):  # samples on voxel centres (1 mm -> 2 mm): a strided view, no copy
                step = np.diff(f)
                if f.size > 1 and np.all(step == step[0]) and step[0] > 0:
                    result = result[(slice(None),) * (d + 1) + (slice(int(f[0]), int(f[-1]) + 1, int(step[0])),)]
                else:
                    result = np.take(result, f, axis=d + 1)
                continue
            w = (c - f).astype(np.float32).reshape([-1 if e == d else 1 for e in range(len(shape))])
            lo, hi = np.take(result, f, axis=d + 1), np.take(result, g, axis=d + 1)
            hi -= lo
            hi *= w
            lo += hi
            result = lo
        out[...] = result
        return out
    from scipy import ndimage

    offset = xform[:-1, :-1] @ np.asarray(start, dtype=float) + xform[:-1, -1]
    for c in range(image.shape[0]):
        ndimage.affine_transform(
            image[c], xform[:-1, :-1], offset=offset, output_shape=tuple(shape), output=out[c], order=1, mode="nearest"
        )
    return out


def _reach(
    xform: np.ndarray,
    lo: Sequence[int],
    hi: Sequence[int],
    src_shape: Sequence[int],
    out_shape: Sequence[int],
) -> tuple[list[int], list[int]]:
    """For a diagonal ``xform`` (output voxel -> source voxel), the output box whose samples fall
    inside the source box ``[lo, hi)`` widened by one voxel: every other output voxel interpolates
    only voxels outside it (beyond the source's edge, the edge itself, which counts as inside where
    the box reaches that edge).
    """
    eps = -1e-9  # a sample exactly one voxel out has weight 0 there
    start, stop = [], []
    for d, n in enumerate(out_shape):
        a, b = float(xform[d, d]), float(xform[d, -1])
        low = -math.inf if lo[d] <= 0 else lo[d] - 1.0 - eps  # samples above low reach lo
        high = math.inf if hi[d] >= src_shape[d] else hi[d] + eps  # samples below high reach hi - 1
        if a < 0:
            a, b, low, high = -a, -b, -high, -low
        j0 = 0 if low == -math.inf else max(0, math.floor((low - b) / a) + 1)
        j1 = n if high == math.inf else min(n, math.ceil((high - b) / a))
        start.append(min(j0, n))
        stop.append(max(min(j1, n), min(j0, n)))
    return start, stop


def _grid_sample_coords(scale: float, shift: float, n_out: int, n_src: int) -> np.ndarray:
    """The source coordinates MONAI's bilinear resampling samples along one axis, bit for bit.

    MONAI's ``Spacing`` turns the voxel-to-voxel matrix (``scale``, ``shift``) into normalised
    coordinates (``monai.networks.utils.to_norm_affine``), torch's ``affine_grid`` maps a
    ``linspace`` through it and ``grid_sample`` maps the result back (``((c + 1) * n - 1) / 2``).
    Each step rounds in float64, so a sample that is exactly one voxel outside the brain in exact
    arithmetic comes out ~1e-14 of a voxel inside (or not) and picks up a weight of ~1e-14: MONAI's
    crop to the non-zero box then keeps that plane. The same operations in the same order are
    repeated here (checked against torch in ``tests/inference/test_engine.py``) so that the crop,
    and with it the placement of every window, is MONAI's.
    """
    from fractions import Fraction

    def fma(a: float, b: float, c: float) -> float:  # torch's CPU linspace kernel is compiled with FMA
        return float(Fraction(a) * Fraction(b) + Fraction(c))

    src_norm, src_t = 2.0 / n_src, 1.0 / n_src - 1.0
    dst = np.array([[2.0 / n_out, 1.0 / n_out - 1.0], [0.0, 1.0]])
    dst_inv = np.linalg.inv(dst)
    a_aa = src_norm * scale
    a_t = src_norm * shift + src_t
    theta_scale = a_aa * dst_inv[0, 0]
    theta_shift = a_aa * dst_inv[0, 1] + a_t
    if n_out > 1:
        step = 2.0 / (n_out - 1)
        half = n_out // 2
        lin = np.array(
            [fma(step, float(i), -1.0) if i < half else fma(-step, float(n_out - i - 1), 1.0) for i in range(n_out)]
        )
    else:
        lin = np.zeros(1)
    x = (lin * (n_out - 1)) / n_out
    g = x * theta_scale + theta_shift
    return ((g + 1) * n_src - 1) / 2


def _touches(
    xform: np.ndarray, src_shape: Sequence[int], out_shape: Sequence[int]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per axis, the two source indices each output index of MONAI's bilinear resampling samples
    with a weight other than 0 (the same index twice where the sample falls exactly on a voxel;
    edges clamped, as ``padding_mode="border"``), for a diagonal ``xform``."""
    out = []
    for d, n in enumerate(out_shape):
        src_n = int(src_shape[d])
        c = np.clip(_grid_sample_coords(float(xform[d, d]), float(xform[d, -1]), int(n), src_n), 0, src_n - 1)
        f = np.floor(c).astype(np.intp)
        out.append((f, np.where(c > f, np.minimum(f + 1, src_n - 1), f)))
    return out


def _monai_mask(
    mask: np.ndarray, touches: list[tuple[np.ndarray, np.ndarray]], start: Sequence[int], stop: Sequence[int]
) -> np.ndarray:
    """Where MONAI's resampling of a volume with non-zero ``mask`` is non-zero, over the output box
    ``[start, stop)``: where a sample has a weight other than 0 on a non-zero voxel. These are the
    voxels its crop and its brain-mask normalisation see as brain (those of ~1e-11 included)."""
    out = mask
    for d, (f, g) in enumerate(touches):
        f, g = f[start[d] : stop[d]], g[start[d] : stop[d]]
        out = np.take(out, f, axis=d) | np.take(out, g, axis=d)
    return out


def _monai_box(mask: np.ndarray, touches: list[tuple[np.ndarray, np.ndarray]]) -> tuple[list[int], list[int]]:
    """The non-zero box of MONAI's resampling of a volume with non-zero ``mask`` (see :func:`_touches`)."""
    start: list[int] = []
    stop: list[int] = []
    for d in range(mask.ndim):
        sub = mask
        for e, (f, g) in enumerate(touches):
            if e != d:
                flag = np.zeros(mask.shape[e], dtype=bool)
                flag[f] = True
                flag[g] = True
                sub = np.compress(flag, sub, axis=e)
        planes = sub.any(axis=tuple(e for e in range(mask.ndim) if e != d))
        f, g = touches[d]
        if not _extend(start, stop, planes[f] | planes[g]):
            return [0] * mask.ndim, [0] * mask.ndim
    return start, stop


def _nonzero_box(mask: np.ndarray) -> tuple[list[int], list[int]]:
    """MONAI's ``generate_spatial_bounding_box`` (margin 0) of a boolean ``(*spatial)`` mask."""
    start: list[int] = []
    stop: list[int] = []
    for axis in range(mask.ndim):
        if not _extend(start, stop, mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis))):
            return [0] * mask.ndim, [0] * mask.ndim
    return start, stop


def _extend(start: list[int], stop: list[int], planes: np.ndarray) -> bool:
    """Append the first and one past the last true index of ``planes``; ``False`` when none is."""
    hits = np.flatnonzero(planes)
    if hits.size == 0:
        return False
    start.append(int(hits[0]))
    stop.append(int(hits[-1]) + 1)
    return True


def _box(start: Sequence[int], stop: Sequence[int]) -> tuple[slice, ...]:
    """The index of a box ``[start, stop)`` in a channel-first array."""
    return (slice(None), *[slice(a, b) for a, b in zip(start, stop)])


# ---- intensity -------------------------------------------------------------------------------------
def normalize_intensity(x: np.ndarray, mode: str, mask: np.ndarray | None = None) -> np.ndarray:
    """In place, float32 ``(C, *spatial)``: :func:`~bts_monai.data.transforms.intensity_transform`'s
    ``zscore`` (:class:`~bts_monai.data.transforms.NormalizeInBrain`), ``minmax`` (MONAI's
    ``ScaleIntensity(0, 1, channel_wise=True)``) or ``unit`` (``ScaleIntensityRange(0, 255, 0, 1, clip=True)``).
    ``mask``: the brain mask z-scoring uses (default: non-zero in any channel)."""
    if mode == "zscore":
        mask = brain_mask(x) if mask is None else mask
        if bool(mask.any()):
            for c in range(x.shape[0]):
                values = x[c][mask]
                mean, std = values.mean(dtype=np.float32), values.std(dtype=np.float32)
                std = std if std > 0 else np.float32(1.0)
                x[c] = np.where(mask, (x[c] - mean) / std, np.float32(0.0))
    elif mode == "minmax":
        for c in range(x.shape[0]):
            lo, hi = x[c].min(), x[c].max()
            if hi != lo:
                x[c] = (x[c] - lo) / (hi - lo)
            else:
                x[c] = x[c] * 0.0
    elif mode == "unit":
        np.clip(x / np.float32(255.0), 0.0, 1.0, out=x)
    else:
        raise ValueError(f"unknown intensity mode {mode!r}")
    return x


# ---- the round trip ------------------------------------------------------------------------------
def to_model_space(
    image: np.ndarray,
    affine: np.ndarray,
    config: dict[str, Any],
    kind: str = "nifti",
) -> tuple[np.ndarray, GridPlan]:
    """``(C, *spatial)`` image in the file's grid -> ``(float32 network input, plan)``.

    Args:
        config: the model's inference config (``intensity``, ``spacing``).
        kind: ``"nifti"`` (RAS, resampling, crop to the brain) or ``"tiff"`` (intensity only).
    """
    affine = np.asarray(affine, dtype=np.float64)
    in_shape = tuple(int(s) for s in image.shape[1:])
    if kind == "tiff":
        x = np.array(image, dtype=np.float32)
        box = tuple((0, s) for s in in_shape)
        plan = GridPlan(in_shape, None, in_shape, None, in_shape, box, affine)
        return normalize_intensity(x, config["intensity"]), plan
    if kind != "nifti":
        raise ValueError(f"unknown input kind {kind!r}")
    import nibabel as nib

    ornt = _ras_transform(affine)
    ras = _apply_ornt(image, ornt)
    ras_shape = tuple(int(s) for s in ras.shape[1:])
    ras_affine = affine @ nib.orientations.inv_ornt_aff(ornt, in_shape)
    spacing = config.get("spacing")
    xform = None
    mask: np.ndarray | None = None
    grid_affine, spaced_shape = ras_affine, ras_shape
    if spacing:
        new_affine, shape = _spaced_grid(ras_affine, ras_shape, spacing)
        step = np.linalg.solve(ras_affine, new_affine)
        # MONAI's spatial_resample leaves the image as it is when the grid does not change.
        unchanged = shape == ras_shape and (
            np.allclose(ras_affine, new_affine, atol=AFFINE_TOL) or np.allclose(step, np.eye(4), atol=AFFINE_TOL)
        )
        if not unchanged:
            xform, grid_affine, spaced_shape = step, new_affine, shape
    if xform is None:
        start, stop = _nonzero_box(brain_mask(ras))
        x = np.array(ras[_box(start, stop)], dtype=np.float32)
    else:
        if _diagonal(xform):
            # Only the brain's box is resampled (the rest is exactly 0 in MONAI's full resampling
            # too), on MONAI's own box and brain mask: see _grid_sample_coords for why they can be
            # a plane larger than the exact ones, and why it matters (the windows' placement and
            # the normalisation's statistics).
            src_mask = brain_mask(ras)
            touches = _touches(xform, ras_shape, spaced_shape)
            start, stop = _monai_box(src_mask, touches)
            mask = _monai_mask(src_mask, touches, start, stop)
            del src_mask
            x = _resample(np.asarray(ras), xform, start, [b - a for a, b in zip(start, stop)])
        else:  # a sheared grid: resample all of it and crop, as MONAI does
            full = _resample(np.asarray(ras), xform, [0] * 3, spaced_shape)
            start, stop = _nonzero_box(brain_mask(full))
            x = np.ascontiguousarray(full[_box(start, stop)])
            del full
    box_affine = grid_affine.copy()
    box_affine[:-1, -1] = grid_affine[:-1, :-1] @ np.asarray(start, dtype=float) + grid_affine[:-1, -1]
    plan = GridPlan(in_shape, ornt, ras_shape, xform, spaced_shape, tuple(zip(start, stop)), box_affine)
    return normalize_intensity(x, config["intensity"], mask), plan


def to_input_grid(values: np.ndarray, plan: GridPlan) -> np.ndarray:
    """Undo :func:`to_model_space` on ``(K, *box)`` (probabilities): pad the box with zeros, undo the
    resampling, reorient to the file's axes. Returns float32 ``(K, *plan.in_shape)``."""
    values = np.asarray(values, dtype=np.float32)
    k = values.shape[0]
    if plan.ornt is None:  # TIFF: the model's grid is the file's
        return values
    start = [a for a, _ in plan.box]
    stop = [b for _, b in plan.box]
    ras = np.zeros((k, *plan.ras_shape), dtype=np.float32)
    if plan.xform is None:
        ras[_box(start, stop)] = values
    else:
        back = np.linalg.inv(plan.xform)  # RAS voxel -> model-grid voxel
        if _diagonal(back):
            # The box padded by one voxel of zeros where the grid goes on (MONAI pads the box with
            # zeros, then interpolates); where the box reaches the grid's edge, the edge is replicated.
            pad_lo = [1 if a > 0 else 0 for a in start]
            pad_hi = [1 if b < n else 0 for b, n in zip(stop, plan.spaced_shape)]
            src = np.pad(values, [(0, 0), *zip(pad_lo, pad_hi)])
            src_lo = [a - p for a, p in zip(start, pad_lo)]
            lo, hi = _reach(back, start, stop, plan.spaced_shape, plan.ras_shape)
            if all(b > a for a, b in zip(lo, hi)):
                shifted = back.copy()
                shifted[:-1, -1] -= np.asarray(src_lo, dtype=float)  # into the padded box's indices
                region = ras[_box(lo, hi)]
                _resample(src, shifted, lo, [b - a for a, b in zip(lo, hi)], out=region)
        else:
            full = np.zeros((k, *plan.spaced_shape), dtype=np.float32)
            full[_box(start, stop)] = values
            _resample(full, back, [0] * len(plan.ras_shape), plan.ras_shape, out=ras)
    return np.ascontiguousarray(_apply_ornt(ras, _inverse_ornt(plan.ornt)))


# ---- sliding windows (MONAI's sliding_window_inference) ----------------------------------------------
def window_starts(image_size: Sequence[int], roi: Sequence[int], overlap: Sequence[float]) -> list[tuple[int, ...]]:
    """Start corners of the windows MONAI visits over an image of ``image_size`` (already at least
    ``roi``): its scan interval (``_get_scan_interval``) and grid (``dense_patch_slices``)."""
    per_axis = []
    for size, r, o in zip(image_size, roi, overlap):
        interval = int(r) if r == size else max(int(r * (1 - o)), 1)
        num = int(math.ceil(float(size) / interval))
        count = next((d + 1 for d in range(num) if d * interval + r >= size), 1)
        per_axis.append([i * interval - max(i * interval + r - size, 0) for i in range(count)])
    grids = np.meshgrid(*per_axis, indexing="ij")
    return [tuple(int(v) for v in corner) for corner in np.stack([g.ravel() for g in grids], axis=1)]


def importance_map(roi: Sequence[int], mode: str, sigma_scale: float = 0.125) -> np.ndarray:
    """MONAI's ``compute_importance_map`` (float32): ones, or a Gaussian of sigma ``sigma_scale * roi``."""
    if mode == "constant":
        return np.ones(tuple(int(r) for r in roi), dtype=np.float32)
    if mode != "gaussian":
        raise ValueError(f"unknown blend mode {mode!r}")
    out: np.ndarray | None = None
    for i, r in enumerate(roi):
        x = np.arange(-(r - 1) / 2.0, (r - 1) / 2.0 + 1, dtype=np.float32)
        sigma = np.float32(r * sigma_scale)
        x = np.exp(x**2 / (np.float32(-2) * sigma**2)).astype(np.float32)
        out = x if out is None else out[..., None] * x[(None,) * i]
    assert out is not None
    return np.clip(out, max(float(out.min()), 1e-3), None).astype(np.float32)


def sliding_window(
    image: np.ndarray,
    network: Callable[[np.ndarray], np.ndarray],
    roi: Sequence[int],
    overlap: Sequence[float],
    mode: str = "gaussian",
    batch: int = 1,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Blend ``network`` over windows of ``image`` ``(C, *spatial)``, as MONAI's
    ``sliding_window_inference`` does for a batch of one: an image smaller than ``roi`` is padded
    with zeros (split evenly, the extra voxel after) and the output cropped back.

    Args:
        network: ``(N, C, *roi)`` float32 -> ``(N, K, *roi)``.
        weights: a precomputed :func:`importance_map` of ``roi`` and ``mode``.
    """
    roi = [int(r) for r in roi]
    shape = image.shape[1:]
    pads = [(max(r - s, 0) // 2, max(r - s, 0) - max(r - s, 0) // 2) for r, s in zip(roi, shape)]
    x = np.pad(image, [(0, 0), *pads]) if any(a or b for a, b in pads) else image
    size = x.shape[1:]
    w = importance_map(roi, mode) if weights is None else weights
    starts = window_starts(size, roi, overlap)
    out: np.ndarray | None = None
    count = np.zeros(size, dtype=np.float32)
    for first in range(0, len(starts), batch):
        group = starts[first : first + batch]
        slices = [tuple(slice(s, s + r) for s, r in zip(corner, roi)) for corner in group]
        windows = np.stack([x[(slice(None), *sl)] for sl in slices]).astype(np.float32, copy=False)
        y = np.asarray(network(np.ascontiguousarray(windows)), dtype=np.float32)
        if out is None:
            out = np.zeros((y.shape[1], *size), dtype=np.float32)
        for sl, patch in zip(slices, y):
            out[(slice(None), *sl)] += patch * w
            count[sl] += w
    assert out is not None
    out /= count
    crop = tuple(slice(a, a + s) for (a, _), s in zip(pads, shape))
    return out[(slice(None), *crop)]


def class_probabilities(logits: np.ndarray, label_mode: str) -> np.ndarray:
    """Sigmoid per region (``regions``) or softmax over the label values (``labels``), float32."""
    logits = np.asarray(logits, dtype=np.float32)
    if label_mode == "regions":
        with np.errstate(over="ignore"):  # exp(-x) of a very negative logit is inf: probability 0
            return (np.float32(1.0) / (np.float32(1.0) + np.exp(-logits))).astype(np.float32)
    shifted = np.exp(logits - logits.max(0, keepdims=True))
    return (shifted / shifted.sum(0, keepdims=True)).astype(np.float32)
