"""The overlay renderer: colours where the regions are, slices the right way up."""

from __future__ import annotations

import numpy as np
from PIL import Image

from bts_monai.inference.overlay import (
    DEFAULT_COLORS,
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
    img = render_slice(vol, regions[:1], axis=2, index=8, colors=[red], alpha=1.0)
    assert img.shape == (24, 20, 3) and img.dtype == np.uint8  # rows: y, columns: x
    coloured = np.argwhere((img == red).all(-1))
    # anterior (high y) is drawn at the top, the patient's right (high x) on the left
    assert {tuple(c) for c in coloured} == {(23 - y, 19 - x) for x in range(5, 12) for y in range(14, 20)}
    grey = render_slice(vol, None, axis=0, index=10)
    assert grey.shape == (16, 24, 3) and (grey[..., 0] == grey[..., 1]).all()


def test_centre_and_three_planes(tmp_path):
    vol, regions = _volume()
    assert tumour_centre(regions) == (8, 16, 8)  # means 8, 16.5, 7.5 rounded half to even
    assert tumour_centre(np.zeros_like(regions), vol) == (10, 12, 8)
    rgb = three_plane_overlay(vol, regions, ["WT", "ET"], zooms=(1.0, 1.0, 2.0), title="case")
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
    img = render_slice(vol, None, axis=2, index=1, window=(0, 255))
    assert img.shape == (12, 10, 3)
    assert tuple(np.argwhere(img[..., 0] == 255)[0]) == (3, 6)
