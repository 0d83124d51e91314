"""The overlay renderer: colours where the regions are, slices the right way up."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bts_monai.inference.display import plane_views
from bts_monai.inference.overlay import (
    DEFAULT_COLORS,
    LETTER_COLOR,
    render_slice,
    save_overlay_png,
    three_plane_overlay,
    tumour_centre,
)


def _volume():
    vol = np.zeros((20, 24, 16), np.float32)
    vol[2:18, 2:22, 2:14] = 100
    regions = np.zeros((2, 20, 24, 16), bool)
    regions[0, 5:12, 14:20, 6:10] = True  # anterior (high y)
    regions[1, 7:9, 16:18, 7:9] = True
    return vol, regions


def test_render_slice_colours_and_orientation():
    vol, regions = _volume()
    red = DEFAULT_COLORS["ET"]
    views = plane_views(np.eye(4))
    img = render_slice(vol, regions[:1], views["axial"], index=8, colors=[red], alpha=1.0)
    assert img.shape == (24, 20, 3) and img.dtype == np.uint8  # rows: y, columns: x
    coloured = np.argwhere((img == red).all(-1))
    # anterior (high y) is drawn at the top, the patient's right (high x) on the left
    assert {tuple(c) for c in coloured} == {(23 - y, 19 - x) for x in range(5, 12) for y in range(14, 20)}
    grey = render_slice(vol, None, views["sagittal"], index=10)
    assert grey.shape == (16, 24, 3) and (grey[..., 0] == grey[..., 1]).all()


def test_centre_and_three_planes(tmp_path):
    vol, regions = _volume()
    assert tumour_centre(regions) == (8, 16, 8)  # means 8, 16.5, 7.5 rounded half to even
    assert tumour_centre(np.zeros_like(regions), vol) == (10, 12, 8)
    rgb = three_plane_overlay(vol, regions, ["WT", "ET"], np.diag([1.0, 1.0, 2.0, 1.0]), title="case")
    assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.shape[1] > rgb.shape[0]
    save_overlay_png(tmp_path / "o.png", rgb)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "o.png")), rgb)
    assert [p.name for p in tmp_path.iterdir()] == ["o.png"]


def test_tiff_slices_drawn_as_stored():
    from bts_monai.inference.geometry import ras_oriented
    from bts_monai.inference.io import tiff_display_affine

    stack = np.zeros((12, 10, 3), np.float32)  # (rows, columns, slices)
    stack[2:9, 1:8, :] = 50
    stack[3, 6, 1] = 255  # row 3, column 6 of slice 1
    vol, _ = ras_oriented(stack, tiff_display_affine())
    ras = plane_views(np.eye(4), orientation_known=False)["axial"]
    img = render_slice(vol, None, ras, index=1, window=(0, 255))
    assert tuple(np.argwhere(img[..., 0] == 255)[0]) == (3, 6)
    # In its own grid, with the display affine, the stack is drawn the same way.
    own = plane_views(tiff_display_affine(), "neurological", orientation_known=False)["axial"]
    img = render_slice(stack, None, own, index=1, window=(0, 255))
    assert img.shape == (12, 10, 3)
    assert tuple(np.argwhere(img[..., 0] == 255)[0]) == (3, 6)


def _letters(rgb: np.ndarray) -> np.ndarray:
    return (np.abs(rgb.astype(int) - LETTER_COLOR).sum(-1) < 60)


@pytest.mark.parametrize("affine", [np.diag([1.0, 1.0, 1.0, 1.0]), np.diag([-1.0, -1.0, 1.0, 1.0])])
def test_overlay_png_has_edge_letters_and_the_right_side_under_r(affine: np.ndarray, tmp_path) -> None:
    """A blob in the patient's right hemisphere appears on the side of the panel lettered R."""
    from PIL import ImageDraw

    vol = np.full((40, 40, 20), 50.0, np.float32)
    right = slice(30, 36) if affine[0, 0] > 0 else slice(4, 10)  # high x is right in RAS, left in LPS
    vol[right, 17:23, 8:12] = 400.0
    regions = np.zeros((1, *vol.shape), bool)
    for convention, letter_side in (("radiological", "left"), ("neurological", "right")):
        rgb = three_plane_overlay(vol, regions, ["WT"], affine, centre=(32 if affine[0, 0] > 0 else 6, 20, 10),
                                  convention=convention, min_size=80)
        letters = _letters(rgb)
        assert letters.sum() > 20, "no edge letters drawn"
        axial_width = 80 + 6  # first panel: 80 px wide (40 voxels enlarged to 80), after the padding
        blob = (rgb[..., :axial_width, :].min(-1) > 200)
        blob_cols = np.nonzero(blob.any(0))[0]
        assert blob_cols.size, "blob not drawn in the axial panel"
        blob_left = blob_cols.mean() < axial_width / 2
        assert blob_left == (letter_side == "left"), convention
        # The letter R is drawn at the blob's side: compare with the letters PIL draws.
        img = Image.new("RGB", (20, 20))
        ImageDraw.Draw(img).text((0, 0), "R", fill=LETTER_COLOR)
        r_mask = _letters(np.asarray(img))
        ys, xs = np.nonzero(r_mask)
        r_glyph = r_mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        panel = letters[:, :axial_width]
        half = slice(0, axial_width // 2) if letter_side == "left" else slice(axial_width // 2, axial_width)
        assert _contains(panel[:, half], r_glyph), f"no R on the {letter_side} of the axial panel ({convention})"


def _contains(mask: np.ndarray, glyph: np.ndarray) -> bool:
    h, w = glyph.shape
    for y in range(mask.shape[0] - h + 1):
        for x in range(mask.shape[1] - w + 1):
            if np.array_equal(mask[y : y + h, x : x + w], glyph):
                return True
    return False


def test_tiff_overlay_has_no_letters() -> None:
    from bts_monai.inference.io import tiff_display_affine

    stack = np.zeros((24, 24, 3), np.float32)
    stack[4:20, 4:20] = 100
    rgb = three_plane_overlay(stack, np.zeros((1, *stack.shape), bool), ["abnormality"], tiff_display_affine(),
                              orientation_known=False)
    assert _letters(rgb).sum() == 0
