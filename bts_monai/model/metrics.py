"""Segmentation metrics on boolean masks: the one implementation training and evaluation share.

Every function takes one case's masks (numpy arrays or torch tensors, any truthy dtype) and
returns plain Python numbers, with the BraTS conventions for empty masks:

- Dice and IoU: both masks empty -> 1.0, exactly one empty -> 0.0.
- HD95: both empty -> 0.0, exactly one empty -> :data:`EMPTY_HD95` (the diagonal of a
  240 x 240 x 155 BraTS volume at 1 mm, the largest distance that volume allows).
- Sensitivity / specificity: see their docstrings.

Surface distances come from MONAI (the edge and distance functions behind
``HausdorffDistanceMetric(percentile=95)``): the 95th percentile of the distances
between the two masks' edge voxels, in each direction, the larger of the two, in millimetres.
The BraTS evaluator weights each surface element by its area (DeepMind ``surface_distance``);
on smooth shapes the two agree to a fraction of a voxel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics.utils import get_mask_edges, get_surface_distance
from scipy import ndimage

__all__ = [
    "EMPTY_HD95",
    "LESION_MISS_HD95",
    "METRIC_NAMES",
    "LESION_METRIC_NAMES",
    "dice",
    "iou",
    "hd95",
    "sensitivity",
    "specificity",
    "region_metrics",
    "lesion_wise",
]

EMPTY_HD95 = 373.13
"""HD95 (mm) when exactly one of prediction and reference is empty: diagonal of 240x240x155 at 1 mm."""

LESION_MISS_HD95 = 374.0
"""HD95 (mm) the BraTS 2023 lesion-wise score gives a missed or a false-positive lesion."""

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


def hd95(pred: Any, ref: Any, spacing: Spacing | None = (1.0, 1.0, 1.0)) -> float:
    """Symmetric 95th-percentile Hausdorff distance between the mask surfaces, in mm.

    Args:
        pred: predicted mask.
        ref: reference mask, same shape.
        spacing: voxel size along each array axis (mm); ``None`` means 1 mm.

    Returns:
        The larger of the two directed 95th-percentile edge-to-edge distances; 0.0 when both
        masks are empty and :data:`EMPTY_HD95` when exactly one is.
    """
    p, r = _pair(pred, ref)
    sp = _spacing(spacing, p.ndim)
    has_p, has_r = bool(p.any()), bool(r.any())
    if not has_p and not has_r:
        return 0.0
    if has_p != has_r:
        return EMPTY_HD95
    # The steps of monai.metrics.compute_hausdorff_distance(percentile=95), kept in numpy; our
    # own crop first because MONAI's (a torch CropForeground) is slow on whole volumes.
    box = _bounding_box(p | r, margin=1)
    edges_p, edges_r = get_mask_edges(p[box], r[box], crop=False)
    forward = get_surface_distance(edges_p, edges_r, distance_metric="euclidean", spacing=sp)
    backward = get_surface_distance(edges_r, edges_p, distance_metric="euclidean", spacing=sp)
    return float(max(np.percentile(forward, 95), np.percentile(backward, 95)))


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
) -> dict[str, dict[str, float]]:
    """All per-region metrics of one case.

    Args:
        pred_regions: predicted region masks ``(R, *spatial)``.
        ref_regions: reference region masks, same shape.
        region_names: the ``R`` region names, in channel order.
        spacing: voxel size (mm) along each spatial axis.

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
            "hd95": hd95(pm, rm, sp),
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
    min_volume_voxels: int = 50,
) -> dict[str, float]:
    """BraTS 2023 lesion-wise Dice and HD95 of one region.

    Follows the challenge's reference code (github.com/rachitsaluja/BraTS-2023-Metrics,
    ``get_lesion_wise_score`` / ``get_lesion_wise_results``):

    1. Reference and prediction are split into 26-connected components.
    2. Reference components whose ``dilation``-fold dilations touch are one lesion.
    3. Each lesion is matched with every predicted component that meets its dilated mask and
       scored by Dice and HD95 against their union (Dice 0, HD95 374 when none does).
    4. Lesions of at most ``min_volume_voxels`` voxels are dropped from the score; the
       components they match are not false positives either.
    5. Predicted components that meet no dilated lesion are false positives (Dice 0, HD95 374).
    6. Score = sum over kept lesions / (kept lesions + false positives); 1.0 / 0.0 when that
       count is zero (nothing to find and nothing wrongly found).

    Args:
        pred: predicted mask of one region.
        ref: reference mask, same shape.
        spacing: voxel size (mm) along each axis, for HD95.
        dilation: dilation iterations that decide matching and merging (BraTS-GLI: 3).
        min_volume_voxels: lesions this small or smaller are ignored (BraTS-GLI: 50; the
            reference code counts mm³, the same on BraTS's 1 mm grid).

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
        if int(lesion_near.sum()) <= min_volume_voxels:
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
        scores_hd.append(hd95(pred_part, ref_part, sp))

    fp = n_pred - len(matched)
    count = len(scores_dice) + fp
    if count == 0:
        lesion_dice, lesion_hd = 1.0, 0.0
    else:
        lesion_dice = sum(scores_dice) / count
        lesion_hd = (sum(scores_hd) + fp * LESION_MISS_HD95) / count
    return {"dice": float(lesion_dice), "hd95": float(lesion_hd), "tp": tp, "fn": fn, "fp": fp}
