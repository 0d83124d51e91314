"""Metrics against numbers worked out by hand on boxes, and against the BraTS 2023 reference code."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import surface_fixtures
import torch

from bts_monai.model.metrics import (
    EMPTY_HD95,
    LESION_MISS_HD95,
    METRIC_NAMES,
    dice,
    hd95,
    iou,
    lesion_wise,
    region_metrics,
    robust_hausdorff,
    sensitivity,
    specificity,
    surface_distances,
)

SHAPE = (24, 24, 24)


def box(*ranges: tuple[int, int], shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """A boolean volume with ones in the half-open ranges, one per axis."""
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(a, b) for a, b in ranges)] = True
    return mask


# Box A spans L=6 voxels along the shift axis and M=8 along the others; B is A shifted by k=2.
L, M, K = 6, 8, 2


def shifted_pair(axis: int) -> tuple[np.ndarray, np.ndarray]:
    ranges_a = [(4, 4 + M)] * 3
    ranges_a[axis] = (4, 4 + L)
    ranges_b = list(ranges_a)
    ranges_b[axis] = (4 + K, 4 + L + K)
    return box(*ranges_a), box(*ranges_b)


def test_dice_and_iou_of_shifted_boxes() -> None:
    a, b = shifted_pair(axis=0)
    # Overlap (L-K)*M*M, each box L*M*M: Dice = 2(L-K)/2L, IoU = (L-K)/(L+K).
    assert dice(a, b) == pytest.approx((L - K) / L)  # 2/3
    assert iou(a, b) == pytest.approx((L - K) / (L + K))  # 1/2
    assert sensitivity(a, b) == pytest.approx((L - K) / L)
    n_background = a.size - L * M * M
    assert specificity(a, b) == pytest.approx((n_background - K * M * M) / n_background)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_hd95_of_shifted_boxes_uses_the_spacing_of_the_shift_axis(axis: int) -> None:
    a, b = shifted_pair(axis)
    spacing = [0.5, 0.75, 1.0]
    spacing[axis] = 2.0
    # No edge voxel of A is further than K voxels (K*2 mm) along the shift axis from an edge voxel
    # of B, and the M*M = 64 voxels of A's face that B moved away from are exactly that far (the
    # nearest B edge voxel lies straight ahead, every other one is further off). They are 64 of
    # A's L*M*M - (L-2)*(M-2)**2 = 240 edge voxels, more than 5%, so the 95th percentile is the
    # maximum, 2*K mm, and the same holds from B to A.
    assert hd95(a, b, spacing) == pytest.approx(2.0 * K)
    assert hd95(b, a, spacing) == pytest.approx(2.0 * K)
    # The same boxes on a 1 mm grid are K mm apart.
    assert hd95(a, b, (1.0, 1.0, 1.0)) == pytest.approx(K)


def test_hd95_is_zero_for_identical_masks() -> None:
    a = box((3, 9), (2, 7), (5, 11))
    assert hd95(a, a, (1.2, 0.8, 3.0)) == 0.0


EMPTY = np.zeros(SHAPE, dtype=bool)
FULL = np.ones(SHAPE, dtype=bool)
CUBE = box((4, 8), (4, 8), (4, 8))  # 64 voxels


@pytest.mark.parametrize(
    ("pred", "ref", "expected"),
    [
        # (dice, iou, hd95, sensitivity, specificity)
        pytest.param(EMPTY, EMPTY, (1.0, 1.0, 0.0, 1.0, 1.0), id="both-empty"),
        pytest.param(EMPTY, CUBE, (0.0, 0.0, EMPTY_HD95, 0.0, 1.0), id="pred-empty"),
        pytest.param(CUBE, EMPTY, (0.0, 0.0, EMPTY_HD95, 0.0, 1.0 - 64 / CUBE.size), id="ref-empty"),
        pytest.param(CUBE, CUBE, (1.0, 1.0, 0.0, 1.0, 1.0), id="both-same"),
        # A reference with no background: specificity is 1 only if the prediction covers it all.
        pytest.param(FULL, FULL, (1.0, 1.0, 0.0, 1.0, 1.0), id="both-full"),
        pytest.param(CUBE, FULL, (2 * 64 / (64 + FULL.size), 64 / FULL.size, None, 64 / FULL.size, 0.0), id="ref-full"),
    ],
)
def test_empty_and_full_masks(pred: np.ndarray, ref: np.ndarray, expected: tuple) -> None:
    want_dice, want_iou, want_hd, want_sens, want_spec = expected
    assert dice(pred, ref) == pytest.approx(want_dice)
    assert iou(pred, ref) == pytest.approx(want_iou)
    if want_hd is not None:
        assert hd95(pred, ref) == pytest.approx(want_hd)
    assert sensitivity(pred, ref) == pytest.approx(want_sens)
    assert specificity(pred, ref) == pytest.approx(want_spec)


def test_empty_hd95_is_the_brats_volume_diagonal() -> None:
    assert EMPTY_HD95 == pytest.approx(math.sqrt(240**2 + 240**2 + 155**2), abs=0.01)


def test_torch_tensors_and_integer_masks_are_accepted() -> None:
    a, b = shifted_pair(axis=1)
    assert dice(torch.from_numpy(a), torch.from_numpy(b).to(torch.uint8)) == pytest.approx((L - K) / L)
    assert hd95(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(K)


def test_shape_mismatch_and_bad_spacing_raise() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        dice(CUBE, CUBE[:-1])
    with pytest.raises(ValueError, match="spacing"):
        hd95(CUBE, CUBE, (1.0, 1.0))


def test_region_metrics_keys_and_volumes() -> None:
    a, b = shifted_pair(axis=0)
    pred = np.stack([a, EMPTY])
    ref = np.stack([b, EMPTY])
    out = region_metrics(pred, ref, ["WT", "ET"], spacing=(2.0, 1.0, 0.5))
    assert list(out) == ["WT", "ET"]
    assert tuple(out["WT"]) == METRIC_NAMES
    voxel_ml = 2.0 * 1.0 * 0.5 / 1000
    assert out["WT"]["pred_volume_ml"] == pytest.approx(L * M * M * voxel_ml)
    assert out["WT"]["ref_volume_ml"] == pytest.approx(L * M * M * voxel_ml)
    assert out["WT"]["hd95"] == pytest.approx(2.0 * K)
    assert out["ET"] == {
        "dice": 1.0,
        "iou": 1.0,
        "hd95": 0.0,
        "sensitivity": 1.0,
        "specificity": 1.0,
        "pred_volume_ml": 0.0,
        "ref_volume_ml": 0.0,
    }
    with pytest.raises(ValueError, match="region names"):
        region_metrics(pred, ref, ["WT"])


# --------------------------------------------------------------------------- lesion-wise

LESION_SHAPE = (32, 32, 32)


def lbox(*ranges: tuple[int, int]) -> np.ndarray:
    return box(*ranges, shape=LESION_SHAPE)


def test_lesion_wise_hit_miss_and_false_positive() -> None:
    lesion_a = lbox((2, 6), (2, 6), (2, 6))  # 64 voxels, kept (> 50)
    lesion_b = lbox((20, 24), (20, 24), (20, 24))  # 64 voxels, missed
    ref = lesion_a | lesion_b
    hit = lbox((2, 6), (2, 6), (3, 7))  # lesion A shifted by one voxel along z
    false_positive = lbox((2, 5), (20, 23), (20, 23))  # far from both lesions
    pred = hit | false_positive

    # Lesion A: overlap 4*4*3 = 48 -> Dice 2*48/(64+64) = 0.75. HD95: of A's 64-8 = 56 edge
    # voxels, the 16 of its z=2 face and the 4 inner ones of its z=5 face are 1 voxel from the
    # prediction's edges and the other 36 lie on them; 20/56 > 5%, so HD95 = 1 mm (the other way too).
    # Lesion B: missed, Dice 0, HD95 374. The false positive: Dice 0, HD95 374.
    # Score = sum over lesions / (2 lesions + 1 false positive).
    out = lesion_wise(pred, ref, spacing=(1.0, 1.0, 1.0), dilation=3, min_volume_mm3=50)
    assert out["dice"] == pytest.approx((0.75 + 0.0 + 0.0) / 3)  # 0.25
    assert out["hd95"] == pytest.approx((1.0 + 374.0 + 374.0) / 3)  # 249.67
    assert (out["tp"], out["fn"], out["fp"]) == (1, 1, 1)
    assert LESION_MISS_HD95 == 374.0


def test_lesion_wise_near_miss_matches_within_the_dilation() -> None:
    ref = lbox((2, 6), (2, 6), (2, 6))
    pred = lbox((8, 10), (2, 6), (2, 6))  # two voxels of gap along x: within the 3-voxel dilation
    out = lesion_wise(pred, ref, dilation=3)
    # Matched, so no false positive, but no overlap: Dice 0. HD95: A's x=2 face (16 of its 56
    # edge voxels) is 6 voxels from the prediction's x=8 face; nothing is further -> 6 mm.
    assert (out["tp"], out["fn"], out["fp"]) == (1, 0, 0)
    assert out["dice"] == 0.0
    assert out["hd95"] == pytest.approx(6.0)
    # Without dilation the same prediction is a false positive and the lesion is missed.
    out = lesion_wise(pred, ref, dilation=0)
    assert (out["tp"], out["fn"], out["fp"]) == (0, 1, 1)
    assert out["dice"] == 0.0
    assert out["hd95"] == pytest.approx(374.0)


def test_lesion_wise_merges_reference_components_closer_than_the_dilation() -> None:
    # Two 64-voxel cubes 2 voxels apart: their dilations touch, so they form one lesion.
    ref = lbox((2, 6), (2, 6), (2, 6)) | lbox((8, 12), (2, 6), (2, 6))
    out = lesion_wise(ref.copy(), ref, dilation=3)
    assert (out["tp"], out["fn"], out["fp"]) == (1, 0, 0)
    assert out["dice"] == 1.0 and out["hd95"] == 0.0
    # Far apart they are two lesions; finding only one halves the score.
    ref = lbox((2, 6), (2, 6), (2, 6)) | lbox((20, 24), (2, 6), (2, 6))
    out = lesion_wise(lbox((2, 6), (2, 6), (2, 6)), ref, dilation=3)
    assert (out["tp"], out["fn"], out["fp"]) == (1, 1, 0)
    assert out["dice"] == pytest.approx(0.5)
    assert out["hd95"] == pytest.approx(374.0 / 2)


def test_lesion_wise_ignores_small_lesions_and_their_matches() -> None:
    big = lbox((2, 6), (2, 6), (2, 6))  # 64 voxels
    small = lbox((20, 23), (20, 23), (20, 23))  # 27 voxels <= 50: left out
    out = lesion_wise(big | small, big | small, min_volume_mm3=50)
    # The prediction on the small lesion is neither scored nor a false positive.
    assert (out["tp"], out["fn"], out["fp"]) == (1, 0, 0)
    assert out["dice"] == 1.0
    # Only small lesions, none found and nothing else predicted: nothing to score -> 1 / 0.
    out = lesion_wise(np.zeros(LESION_SHAPE, bool), small, min_volume_mm3=50)
    assert (out["dice"], out["hd95"]) == (1.0, 0.0)


@pytest.mark.parametrize(
    ("pred_empty", "ref_empty", "expected"),
    [
        (True, True, (1.0, 0.0, 0, 0, 0)),
        (True, False, (0.0, 374.0, 0, 1, 0)),
        (False, True, (0.0, 374.0, 0, 0, 1)),
    ],
)
def test_lesion_wise_empty_masks(pred_empty: bool, ref_empty: bool, expected: tuple) -> None:
    cube = lbox((10, 16), (10, 16), (10, 16))
    empty = np.zeros(LESION_SHAPE, bool)
    out = lesion_wise(empty if pred_empty else cube, empty if ref_empty else cube)
    assert (out["dice"], out["hd95"], out["tp"], out["fn"], out["fp"]) == expected


def test_two_dimensional_masks() -> None:
    # 2-D training (slices) uses the same functions: a 6x6 square shifted by 2 pixels of 2 mm.
    # The 6 pixels of the side left behind are 6 of the square's 20 edge pixels: HD95 = 2 * 2 mm.
    a = box((2, 8), (2, 8), shape=(20, 20))
    b = box((4, 10), (2, 8), shape=(20, 20))
    assert dice(a, b) == pytest.approx(4 / 6)
    assert hd95(a, b, (2.0, 1.0)) == pytest.approx(4.0)
    out = region_metrics(a[None], b[None], ["WT"], (2.0, 1.0))
    assert out["WT"]["hd95"] == pytest.approx(4.0)


def test_lesion_size_threshold_counts_cubic_millimetres() -> None:
    # A 24-voxel lesion is 24 mm³ on a 1 mm grid (ignored at 50 mm³) but 60 mm³ on a 1x1x2.5 mm
    # grid (scored): the reference compares voxel count x voxel volume, not voxels.
    lesion = lbox((4, 7), (4, 8), (4, 6))
    assert lesion.sum() == 24
    pred = np.zeros(LESION_SHAPE, bool)
    out_iso = lesion_wise(pred, lesion, spacing=(1.0, 1.0, 1.0), min_volume_mm3=50)
    out_aniso = lesion_wise(pred, lesion, spacing=(1.0, 1.0, 2.5), min_volume_mm3=50)
    assert (out_iso["fn"], out_iso["dice"]) == (0, 1.0)
    assert (out_aniso["fn"], out_aniso["dice"], out_aniso["hd95"]) == (1, 0.0, LESION_MISS_HD95)


def test_hd95_one_empty_penalty_follows_the_caller() -> None:
    assert hd95(EMPTY, CUBE) == EMPTY_HD95
    assert hd95(CUBE, EMPTY, empty_value=LESION_MISS_HD95) == 374.0


def test_surface_distances_weigh_surfels_by_area() -> None:
    # A 1-voxel cube at 1x1x2.5 mm: its 8 corner cubes each hold one triangle of the
    # marching-cubes surface; the areas add up to the same octahedron-like surface for both masks
    # and every distance is zero against itself.
    one = box((5, 6), (5, 6), (5, 6))
    sd = surface_distances(one, one, (1.0, 1.0, 2.5))
    assert sd.ref_areas.shape == (8,) and np.all(sd.ref_to_pred == 0.0)
    # One corner cut off a cube: the triangle spans half-diagonals of three faces.
    normal = np.array([0.125 * 1.0 * 2.5, 0.125 * 1.0 * 2.5, 0.125 * 1.0 * 1.0])
    assert sd.ref_areas[0] == pytest.approx(np.linalg.norm(normal))
    assert robust_hausdorff(surface_distances(one, EMPTY, (1.0, 1.0, 1.0))) == math.inf


REFERENCE = json.loads((Path(__file__).parent / "data" / "surface_reference.json").read_text())["fixtures"]
BRATS2023_REGIONS = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}
CHALLENGE_PARAMETERS = {"BraTS-GLI": (3, 50.0), "BraTS-MET": (1, 2.0)}  # dilation, lesion mm³


@pytest.mark.parametrize("fixture", surface_fixtures.fixtures_3d(), ids=lambda f: f.name)
def test_hd95_and_lesion_wise_equal_the_brats_2023_reference(fixture: surface_fixtures.Fixture) -> None:
    """Numbers from the challenge's code (tests/model/make_surface_reference.py wrote them)."""
    expected = REFERENCE[fixture.name]
    assert surface_fixtures.sha256(fixture.pred, fixture.ref) == expected["sha256"], "fixture arrays changed"
    spacing = expected["spacing"]
    dilation, min_volume = CHALLENGE_PARAMETERS[expected["challenge"]]
    for region, values in BRATS2023_REGIONS.items():
        want = expected["regions"][region]
        pred, ref = np.isin(fixture.pred, values), np.isin(fixture.ref, values)
        assert dice(pred, ref) == pytest.approx(want["legacy_dice"], abs=1e-12)
        assert hd95(pred, ref, spacing, empty_value=LESION_MISS_HD95) == pytest.approx(want["legacy_hd95"], abs=1e-9)
        out = lesion_wise(pred, ref, spacing, dilation=dilation, min_volume_mm3=min_volume)
        assert out["dice"] == pytest.approx(want["lesion_dice"], abs=1e-12), region
        assert out["hd95"] == pytest.approx(want["lesion_hd95"], abs=1e-9), region
        assert (out["tp"], out["fn"], out["fp"]) == (want["tp"], want["fn"], want["fp"]), region


@pytest.mark.parametrize("fixture", surface_fixtures.fixtures_2d(), ids=lambda f: f.name)
def test_2d_hd95_equals_deepmind_surface_distance(fixture: surface_fixtures.Fixture) -> None:
    expected = REFERENCE[fixture.name]
    assert surface_fixtures.sha256(fixture.pred, fixture.ref) == expected["sha256"], "fixture arrays changed"
    got = hd95(fixture.pred, fixture.ref, expected["spacing"])
    assert got == pytest.approx(expected["regions"]["mask"]["legacy_hd95"], abs=1e-9)
