"""The display convention: which way the patient's right is drawn, edge letters, pixel <-> voxel."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from bts_monai.inference.display import CONVENTIONS, DEFAULT_CONVENTION, check_convention, plane_views

RAS = np.diag([1.0, 1.0, 1.0, 1.0])
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # DICOM's world: voxel x grows to the patient's left
SHAPE = (20, 24, 16)
# The patient's right, anterior and superior extremes, in voxel indices of each grid.
RIGHT = {"RAS": (19, 12, 8), "LPS": (0, 12, 8)}


def _permuted_lps() -> np.ndarray:
    """Voxel axes (i, j, k) -> world (S, L, P): a grid stored in an unusual axis order."""
    aff = np.zeros((4, 4))
    aff[2, 0], aff[0, 1], aff[1, 2], aff[3, 3] = 1.0, -1.0, -1.0, 1.0
    return aff


def _oblique(base: np.ndarray, degrees: float = 20.0) -> np.ndarray:
    """``base`` rotated about the world's superior axis: still closest to the same axes."""
    t = np.deg2rad(degrees)
    rot = np.array([[np.cos(t), -np.sin(t), 0, 0], [np.sin(t), np.cos(t), 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    return rot @ base


def _world(affine: np.ndarray, voxel) -> np.ndarray:
    return (affine @ np.r_[np.asarray(voxel, float), 1.0])[:3]


def test_default_is_radiological_and_names_are_checked() -> None:
    assert DEFAULT_CONVENTION == "radiological" and set(CONVENTIONS) == {"radiological", "neurological"}
    with pytest.raises(ValueError, match="neurological"):
        check_convention("left-handed")
    with pytest.raises(ValueError):
        plane_views(RAS, "sideways")


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_letters_per_convention(convention: str) -> None:
    views = plane_views(RAS, convention)
    left = "R" if convention == "radiological" else "L"
    assert views["axial"].labels == {"left": left, "right": "LR".replace(left, ""), "top": "A", "bottom": "P"}
    assert views["coronal"].labels["left"] == left and views["coronal"].labels["top"] == "S"
    # sagittal: anterior on the left in both conventions
    assert views["sagittal"].labels == {"left": "A", "right": "P", "top": "S", "bottom": "I"}


@pytest.mark.parametrize("name,affine", [("RAS", RAS), ("LPS", LPS), ("LPS", _oblique(LPS)), ("RAS", _oblique(RAS))])
@pytest.mark.parametrize("convention", CONVENTIONS)
def test_the_patients_right_is_on_the_side_lettered_r(name: str, affine: np.ndarray, convention: str) -> None:
    """A voxel at the patient's far right lands in the image column under the letter R."""
    volume = np.zeros(SHAPE, np.uint8)
    volume[RIGHT[name]] = 1
    for plane in ("axial", "coronal"):
        view = plane_views(affine, convention)[plane]
        img = view.cut(volume, RIGHT[name][view.axis])
        (row, col), = np.argwhere(img)
        side = "left" if col == 0 else "right" if col == img.shape[1] - 1 else None
        assert side is not None and view.labels[side] == "R", (plane, side, view.labels)
        assert view.labels["top"] in "AS" and view.labels["bottom"] in "PI"


@pytest.mark.parametrize("affine", [RAS, LPS, _permuted_lps(), _oblique(LPS)])
@pytest.mark.parametrize("convention", CONVENTIONS)
def test_edge_letters_agree_with_the_world_coordinates(affine: np.ndarray, convention: str) -> None:
    """Moving right (down) in the image moves towards the letter on the right (bottom) edge."""
    shape = tuple(int(s) for s in np.random.default_rng(0).integers(5, 9, size=3))
    direction = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}
    for plane, view in plane_views(affine, convention).items():
        img_shape = view.cut(np.zeros(shape), 0).shape
        for side, step in (("right", (0, 1)), ("bottom", (1, 0))):
            a = view.pixel_to_voxel(1, 1, 2, shape)
            b = view.pixel_to_voxel(1 + step[0], 1 + step[1], 2, shape)
            move = _world(affine, b) - _world(affine, a)
            world_axis, sign = direction[view.labels[side]]
            assert np.sign(move[world_axis]) == sign, (plane, side, view.labels)
            assert abs(move[world_axis]) == pytest.approx(np.abs(move).max())  # mostly along that axis
        assert img_shape == (shape[view.rows_axis], shape[view.cols_axis])


@pytest.mark.parametrize("affine", [RAS, LPS, _permuted_lps()])
def test_pixel_voxel_mapping_matches_the_drawn_slice(affine: np.ndarray) -> None:
    shape = (5, 6, 7)
    volume = np.arange(np.prod(shape)).reshape(shape)
    for view in plane_views(affine).values():
        index = 3
        img = view.cut(volume, index)
        for row, col in itertools.product(range(img.shape[0]), range(img.shape[1])):
            voxel = view.pixel_to_voxel(row, col, index, shape)
            assert img[row, col] == volume[voxel]
            assert view.voxel_to_pixel(voxel, shape) == (row, col)


def test_leading_channel_axes_are_kept() -> None:
    volume = np.random.default_rng(1).random((3, *SHAPE))
    view = plane_views(LPS)["coronal"]
    stacked = view.cut(volume, 4)
    assert stacked.shape[0] == 3
    np.testing.assert_array_equal(stacked[1], view.cut(volume[1], 4))


def test_unknown_orientation_shows_as_stored_without_letters() -> None:
    from bts_monai.inference.io import tiff_display_affine

    views = plane_views(tiff_display_affine(), "neurological", orientation_known=False)
    stack = np.arange(12 * 10 * 3).reshape(12, 10, 3)  # (rows, columns, slices)
    axial = views["axial"]
    assert axial.labels == {} and axial.axis == 2
    np.testing.assert_array_equal(axial.cut(stack, 1), stack[..., 1])


def test_degenerate_affine_is_refused() -> None:
    flat = np.diag([1.0, 1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="directions"):
        plane_views(flat)
