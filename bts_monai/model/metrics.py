"""Segmentation metrics on boolean masks: the one implementation training and evaluation share.

Every function takes one case's masks (numpy arrays or torch tensors, any truthy dtype) and
returns plain Python numbers, with the BraTS conventions for empty masks:

- Dice and IoU: both masks empty -> 1.0, exactly one empty -> 0.0.
- HD95: both empty -> 0.0, exactly one empty -> ``empty_value``: :data:`EMPTY_HD95` (373.13, the
  BraTS 2017-2021 evaluator's value) unless the caller passes another (the BraTS 2023 code's
  :data:`LESION_MISS_HD95`, 374).
- Sensitivity / specificity: see their docstrings.

Surface distances are those of the BraTS 2023 reference code, which calls DeepMind's
``surface_distance`` (``compute_surface_distances`` + ``compute_robust_hausdorff``): the surface
is made of surface elements ("surfels"), one per 2x2x2 cube of voxels that is neither all inside
nor all outside; each surfel is weighted by its area in mm² at the header's spacing (the area of
the marching-cubes triangles for that cube's corner pattern), and the 95th percentile is taken
over those areas, not over counts. MONAI's ``HausdorffDistanceMetric`` is not used because it
counts edge voxels, each with the same weight, whatever its area and the spacing: on speckled
predictions and anisotropic grids its HD95 differs from the challenge's by many millimetres.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage

__all__ = [
    "EMPTY_HD95",
    "LESION_MISS_HD95",
    "METRIC_NAMES",
    "LESION_METRIC_NAMES",
    "SurfaceDistances",
    "dice",
    "iou",
    "hd95",
    "robust_hausdorff",
    "sensitivity",
    "specificity",
    "surface_distances",
    "region_metrics",
    "lesion_wise",
]

EMPTY_HD95 = 373.13
"""HD95 (mm) when exactly one of prediction and reference is empty, in the BraTS 2017-2021 scheme:
the diagonal of 240x240x155 at 1 mm."""

LESION_MISS_HD95 = 374.0
"""HD95 (mm) the BraTS 2023 code gives a missed or false-positive lesion, and a region that
exactly one of prediction and reference leaves empty."""

METRIC_NAMES = (
    "dice",
    "iou",
    "hd95",
    "sensitivity",
    "specificity",
    "pred_volume_ml",
    "ref_volume_ml",
)
"""Keys of each region's dict in :func:`region_metrics`, in report order."""

LESION_METRIC_NAMES = ("dice", "hd95", "tp", "fn", "fp")
"""Keys of the dict :func:`lesion_wise` returns."""

Spacing = Sequence[float] | np.ndarray


def _as_bool(mask: Any) -> np.ndarray:
    """A numpy bool array from a numpy array or a (possibly CUDA) torch tensor."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    return np.asarray(mask).astype(bool, copy=False)


def _pair(pred: Any, ref: Any) -> tuple[np.ndarray, np.ndarray]:
    p, r = _as_bool(pred), _as_bool(ref)
    if p.shape != r.shape:
        raise ValueError(f"prediction and reference shapes differ: {p.shape} vs {r.shape}")
    return p, r


def _spacing(spacing: Spacing | None, ndim: int) -> list[float]:
    if spacing is None:
        return [1.0] * ndim
    values = [float(s) for s in np.asarray(spacing, dtype=float).ravel()]
    if len(values) != ndim:
        raise ValueError(f"spacing {values} does not match a {ndim}-dimensional mask")
    return values


def dice(pred: Any, ref: Any) -> float:
    """Dice overlap ``2|P∩R| / (|P|+|R|)``; both empty -> 1.0, exactly one empty -> 0.0."""
    p, r = _pair(pred, ref)
    total = int(p.sum()) + int(r.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, r).sum()) / total


def iou(pred: Any, ref: Any) -> float:
    """Intersection over union (Jaccard); both empty -> 1.0, exactly one empty -> 0.0."""
    p, r = _pair(pred, ref)
    union = int(np.logical_or(p, r).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(p, r).sum()) / union


# --------------------------------------------------------------------------- surface distances


@functools.lru_cache(maxsize=64)
def _surfel_measure_table(spacing: tuple[float, ...]) -> np.ndarray:
    """Area (3-D, mm²) or length (2-D, mm) of the surface element of each neighbour code.

    A neighbour code packs the 2**ndim corners of one cube of voxels into a number, corner
    ``(a, b, c)`` (0 = lower index, 1 = upper) weighing ``2**(7 - (4a + 2b + c))``; see
    :func:`_neighbour_codes`.
    """
    if len(spacing) == 3:
        # The marching-cubes normals of the 256 corner patterns (each normal's length is its
        # triangle's area on a unit grid) are DeepMind's table, which MONAI ships for its
        # surface Dice; its entries are multiples of 1/8, exact in float32. Scaling each normal
        # component by the area of the face it is orthogonal to gives the area at `spacing`;
        # we sum in float64, triangle by triangle, as the reference does.
        from monai.metrics.utils import _get_neighbour_code_to_normals_table

        normals = _get_neighbour_code_to_normals_table().cpu().numpy().astype(np.float64)
        s0, s1, s2 = spacing
        table = np.zeros(len(normals))
        for code, triangles in enumerate(normals):
            total = 0.0
            for n0, n1, n2 in triangles:  # products in the reference's order, for equal rounding
                total += float(np.linalg.norm(np.array([n0 * s1 * s2, n1 * s0 * s2, n2 * s0 * s1])))
            table[code] = total
        return table
    # 2-D: a square of 4 pixels, corners (0,0)=8, (0,1)=4, (1,0)=2, (1,1)=1. One corner in (or
    # out) cuts the square's corner off: half a diagonal; two on one side: a straight segment
    # parallel to the other axis; two diagonal corners: two half diagonals.
    s0, s1 = spacing
    half_diagonal = 0.5 * math.sqrt(s0**2 + s1**2)
    table = np.full(16, half_diagonal)
    table[[0b0000, 0b1111]] = 0.0
    table[[0b0011, 0b1100]] = s1  # the two pixels of one row: the segment runs along axis 1
    table[[0b0101, 0b1010]] = s0  # the two pixels of one column: the segment runs along axis 0
    table[[0b0110, 0b1001]] = 2 * half_diagonal
    return table


def _neighbour_codes(mask: np.ndarray) -> np.ndarray:
    """The neighbour code of every cube of 2**ndim voxels that touches ``mask``.

    ``mask`` (already cropped) is padded with one background voxel on each side, so the result
    has one more element than ``mask`` along every axis: code ``i`` describes the cube whose
    lower corner is voxel ``i - 1``.
    """
    padded = np.pad(mask.astype(np.uint8), 1)
    ndim = mask.ndim
    out_shape = tuple(n + 1 for n in mask.shape)
    codes = np.zeros(out_shape, dtype=np.uint8)
    for bit, corner in enumerate(np.ndindex(*(2,) * ndim)):
        weight = 1 << (2**ndim - 1 - bit)
        window = tuple(slice(c, c + n) for c, n in zip(corner, out_shape))
        codes += padded[window] * np.uint8(weight)
    return codes


@dataclass(frozen=True)
class SurfaceDistances:
    """Distances from each surface element of one mask to the other mask's surface.

    Attributes:
        ref_to_pred: distance (mm) from each reference surfel to the predicted surface, sorted
            by (distance, area); ``inf`` when the prediction is empty.
        pred_to_ref: the same from the predicted surfels to the reference surface.
        ref_areas: area (mm², 2-D: length in mm) of each reference surfel, in that order.
        pred_areas: area of each predicted surfel, in the order of ``pred_to_ref``.
    """

    ref_to_pred: np.ndarray
    pred_to_ref: np.ndarray
    ref_areas: np.ndarray
    pred_areas: np.ndarray


def surface_distances(pred: Any, ref: Any, spacing: Spacing | None = (1.0, 1.0, 1.0)) -> SurfaceDistances:
    """Area-weighted surface distances between two 2-D or 3-D masks.

    The algorithm of DeepMind's ``surface_distance.compute_surface_distances`` (what the BraTS
    2023 metrics code calls), written for numpy: surfels are the cubes of 2**ndim voxels
    with corners both inside and outside a mask, placed at the cube centres; each gets the
    area of its marching-cubes surface at ``spacing``; distances are Euclidean distance
    transforms on that lattice at ``spacing``.

    Args:
        pred: predicted mask.
        ref: reference mask, same shape.
        spacing: voxel size along each array axis (mm); ``None`` means 1 mm.

    Returns:
        The distances and areas; all four arrays are empty when both masks are.
    """
    p, r = _pair(pred, ref)
    if p.ndim not in (2, 3):
        raise ValueError(f"surface distances need 2-D or 3-D masks, got shape {p.shape}")
    sp = tuple(_spacing(spacing, p.ndim))
    union = p | r
    if not union.any():
        empty = np.zeros(0)
        return SurfaceDistances(empty, empty, empty, empty)
    box = _bounding_box(union)
    codes_p, codes_r = _neighbour_codes(p[box]), _neighbour_codes(r[box])
    full = 2 ** (2**p.ndim) - 1
    border_p = (codes_p != 0) & (codes_p != full)
    border_r = (codes_r != 0) & (codes_r != full)
    table = _surfel_measure_table(sp)

    def towards(border: np.ndarray) -> np.ndarray:
        if not border.any():
            return np.full(border.shape, np.inf)
        return ndimage.distance_transform_edt(~border, sampling=sp)

    dist_to_p, dist_to_r = towards(border_p), towards(border_r)
    ref_to_pred, ref_areas = _sorted(dist_to_p[border_r], table[codes_r[border_r]])
    pred_to_ref, pred_areas = _sorted(dist_to_r[border_p], table[codes_p[border_p]])
    return SurfaceDistances(ref_to_pred, pred_to_ref, ref_areas, pred_areas)


def _sorted(distances: np.ndarray, areas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # By distance, then area: the reference's order, so cumulative sums add in the same order.
    order = np.lexsort((areas, distances))
    return distances[order], areas[order]


def _directed_percentile(distances: np.ndarray, areas: np.ndarray, percent: float) -> float:
    if distances.size == 0:
        return math.inf
    cumulative = np.cumsum(areas) / np.sum(areas)
    index = int(np.searchsorted(cumulative, percent / 100.0))
    return float(distances[min(index, distances.size - 1)])


def robust_hausdorff(distances: SurfaceDistances, percent: float = 95.0) -> float:
    """The larger of the two directed area-weighted ``percent``-th percentile distances.

    The first distance whose cumulative share of the surface area reaches ``percent`` %, as in
    ``surface_distance.compute_robust_hausdorff``; ``inf`` when either mask has no surface.
    """
    return max(
        _directed_percentile(distances.ref_to_pred, distances.ref_areas, percent),
        _directed_percentile(distances.pred_to_ref, distances.pred_areas, percent),
    )


def hd95(pred: Any, ref: Any, spacing: Spacing | None = (1.0, 1.0, 1.0), empty_value: float = EMPTY_HD95) -> float:
    """Symmetric 95th-percentile Hausdorff distance between the mask surfaces, in mm.

    Args:
        pred: predicted mask.
        ref: reference mask, same shape.
        spacing: voxel size along each array axis (mm); ``None`` means 1 mm.
        empty_value: the score when exactly one mask is empty (:data:`EMPTY_HD95`, or 374 for
            the BraTS 2023 scheme).

    Returns:
        :func:`robust_hausdorff` of :func:`surface_distances` (area-weighted, as the BraTS 2023
        reference); 0.0 when both masks are empty and ``empty_value`` when exactly one is.
    """
    p, r = _pair(pred, ref)
    has_p, has_r = bool(p.any()), bool(r.any())
    if not has_p and not has_r:
        _spacing(spacing, p.ndim)  # still refuse a spacing of the wrong length
        return 0.0
    if has_p != has_r:
        _spacing(spacing, p.ndim)
        return float(empty_value)
    return robust_hausdorff(surface_distances(p, r, spacing), 95.0)


def sensitivity(pred: Any, ref: Any) -> float:
    """True-positive rate ``|P∩R| / |R|``.

    An empty reference leaves nothing to find: the score is 1.0 when the prediction is empty
    too and 0.0 otherwise, as in the BraTS 2023 evaluator.
    """
    p, r = _pair(pred, ref)
    positives = int(r.sum())
    if positives == 0:
        return 0.0 if p.any() else 1.0
    return int(np.logical_and(p, r).sum()) / positives


def specificity(pred: Any, ref: Any) -> float:
    """True-negative rate ``|¬P∩¬R| / |¬R|``: the sensitivity of the complements.

    A reference without background (every voxel foreground) scores 1.0 when the prediction
    also covers every voxel and 0.0 otherwise, mirroring :func:`sensitivity`.
    """
    p, r = _pair(pred, ref)
    return sensitivity(~p, ~r)


def region_metrics(
    pred_regions: Any,
    ref_regions: Any,
    region_names: Sequence[str],
    spacing: Spacing | None = (1.0, 1.0, 1.0),
    empty_hd95: float = EMPTY_HD95,
) -> dict[str, dict[str, float]]:
    """All per-region metrics of one case.

    Args:
        pred_regions: predicted region masks ``(R, *spatial)``.
        ref_regions: reference region masks, same shape.
        region_names: the ``R`` region names, in channel order.
        spacing: voxel size (mm) along each spatial axis.
        empty_hd95: HD95 of a region exactly one of the two leaves empty.

    Returns:
        ``{region: {metric: value}}`` with the keys of :data:`METRIC_NAMES`; volumes in ml.
    """
    p, r = _pair(pred_regions, ref_regions)
    if p.shape[0] != len(region_names):
        raise ValueError(f"{p.shape[0]} region channels but {len(region_names)} region names {list(region_names)}")
    sp = _spacing(spacing, p.ndim - 1)
    voxel_ml = math.prod(sp) / 1000.0
    out: dict[str, dict[str, float]] = {}
    for name, pm, rm in zip(region_names, p, r):
        out[name] = {
            "dice": dice(pm, rm),
            "iou": iou(pm, rm),
            "hd95": hd95(pm, rm, sp, empty_value=empty_hd95),
            "sensitivity": sensitivity(pm, rm),
            "specificity": specificity(pm, rm),
            "pred_volume_ml": float(pm.sum()) * voxel_ml,
            "ref_volume_ml": float(rm.sum()) * voxel_ml,
        }
    return out


def _bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...]:
    """Slices around the non-empty ``mask``, grown by ``margin`` and clipped to the array."""
    box = ndimage.find_objects(mask.view(np.uint8))[0]
    return _grow_box(box, margin, mask.shape)


def _grow_box(box: tuple[slice, ...], margin: int, shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(box, shape))


def _union_box(boxes: Sequence[tuple[slice, ...]]) -> tuple[slice, ...]:
    return tuple(slice(min(b[i].start for b in boxes), max(b[i].stop for b in boxes)) for i in range(len(boxes[0])))


def _dilate(mask: np.ndarray, structure: np.ndarray, iterations: int) -> np.ndarray:
    # scipy dilates "until nothing changes" when iterations < 1, so 0 must mean no dilation.
    if iterations <= 0:
        return mask
    return ndimage.binary_dilation(mask, structure=structure, iterations=iterations)


def lesion_wise(
    pred: Any,
    ref: Any,
    spacing: Spacing | None = (1.0, 1.0, 1.0),
    dilation: int = 3,
    min_volume_mm3: float = 50.0,
) -> dict[str, float]:
    """BraTS 2023 lesion-wise Dice and HD95 of one region.

    Follows the challenge's reference code (github.com/rachitsaluja/BraTS-2023-Metrics,
    ``get_LesionWiseScores`` / ``get_LesionWiseResults``):

    1. Reference and prediction are split into 26-connected components.
    2. Reference components whose ``dilation``-fold dilations touch are one lesion.
    3. Each lesion is matched with every predicted component that meets its dilated mask and
       scored by Dice and HD95 against their union (Dice 0, HD95 374 when none does).
    4. Lesions of at most ``min_volume_mm3`` (voxel count x voxel volume) are dropped from the
       score; the components they match are not false positives either.
    5. Predicted components that meet no dilated lesion are false positives (Dice 0, HD95 374).
    6. Score = sum over kept lesions / (kept lesions + false positives); 1.0 / 0.0 when that
       count is zero (nothing to find and nothing wrongly found).

    Args:
        pred: predicted mask of one region.
        ref: reference mask, same shape.
        spacing: voxel size (mm) along each axis, for HD95 and lesion volumes.
        dilation: dilation iterations that decide matching and merging (BraTS-GLI: 3).
        min_volume_mm3: lesions this small or smaller (mm³) are ignored (BraTS-GLI: 50).

    Returns:
        ``{"dice", "hd95", "tp", "fn", "fp"}``: the two lesion-wise scores and the numbers of
        kept lesions found, kept lesions missed and false-positive components.
    """
    p, r = _pair(pred, ref)
    sp = _spacing(spacing, p.ndim)
    if not p.any() and not r.any():
        return {"dice": 1.0, "hd95": 0.0, "tp": 0, "fn": 0, "fp": 0}
    # Everything happens within the dilation's reach of either mask: crop to it, same result.
    box = _bounding_box(p | r, margin=max(dilation, 0))
    p, r = p[box], r[box]
    # Components are 26-connected; the reference code dilates with the 18-neighbourhood
    # (generate_binary_structure(3, 2)), which we keep so our scores match the leaderboard's.
    connect = ndimage.generate_binary_structure(p.ndim, p.ndim)
    grow = ndimage.generate_binary_structure(p.ndim, min(2, p.ndim))

    pred_cc, n_pred = ndimage.label(p, structure=connect)
    grown = _dilate(r, grow, dilation)
    grown_cc, _ = ndimage.label(grown, structure=connect)
    lesions = np.where(r, grown_cc, 0)
    pred_boxes = ndimage.find_objects(pred_cc)

    scores_dice: list[float] = []
    scores_hd: list[float] = []
    matched: set[int] = set()
    tp = fn = 0
    for index, box in enumerate(ndimage.find_objects(lesions), start=1):
        if box is None:
            continue
        # Work in the lesion's box grown by the dilation reach: identical to the full volume.
        near = _grow_box(box, dilation, r.shape)
        lesion_near = lesions[near] == index
        reach = _dilate(lesion_near, grow, dilation)
        hits = np.unique(pred_cc[near][reach])
        hits = hits[hits != 0]
        matched.update(int(h) for h in hits)
        # The reference's volume: voxel count times each spacing in turn, compared with <=.
        volume = float(np.sum(lesion_near))
        for s in sp:
            volume *= s
        if volume <= min_volume_mm3:
            continue
        if hits.size == 0:
            fn += 1
            scores_dice.append(0.0)
            scores_hd.append(LESION_MISS_HD95)
            continue
        tp += 1
        both = _union_box([box] + [pred_boxes[h - 1] for h in hits])
        pred_part = np.isin(pred_cc[both], hits)
        ref_part = lesions[both] == index
        scores_dice.append(dice(pred_part, ref_part))
        scores_hd.append(hd95(pred_part, ref_part, sp, empty_value=LESION_MISS_HD95))

    fp = n_pred - len(matched)
    count = len(scores_dice) + fp
    if count == 0:
        lesion_dice, lesion_hd = 1.0, 0.0
    else:
        lesion_dice = sum(scores_dice) / count
        lesion_hd = (sum(scores_hd) + fp * LESION_MISS_HD95) / count
    return {"dice": float(lesion_dice), "hd95": float(lesion_hd), "tp": tp, "fn": fn, "fp": fp}
