"""Tumour regions in colour over an MRI slice: the one overlay renderer (CLI, web page, training).

Volumes are arrays ``(X, Y, Z)`` in their file's own voxel grid with its affine; which way each
plane is drawn (the patient's right on the image's left by default, superior or anterior at the
top) and the edge letters are :mod:`bts_monai.inference.display`'s, the one owner of that
convention. Regions are painted in the order given, so pass them outer to inner (WT, TC, ET) to
keep the nested ones visible. Only numpy and Pillow are used: no display is needed.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from bts_monai.inference.display import DEFAULT_CONVENTION, PLANES, PlaneView, plane_views, voxel_sizes

if TYPE_CHECKING:
    from PIL import ImageDraw

__all__ = [
    "DEFAULT_COLORS",
    "LETTER_COLOR",
    "region_colors",
    "intensity_window",
    "render_slice",
    "tumour_centre",
    "three_plane_overlay",
    "png_bytes",
    "save_overlay_png",
]

DEFAULT_COLORS: dict[str, tuple[int, int, int]] = {
    "WT": (46, 204, 113),
    "TC": (241, 196, 15),
    "ET": (231, 76, 60),
    "RC": (155, 89, 182),
    "abnormality": (231, 76, 60),
}
"""RGB colour per region name; other names take colours from :data:`_PALETTE`."""

_PALETTE = [(52, 152, 219), (230, 126, 34), (26, 188, 156), (236, 112, 160), (149, 165, 166)]


def region_colors(names: Sequence[str], colors: Mapping[str, Sequence[int]] | None = None) -> list[tuple[int, ...]]:
    """One RGB colour per region name (``colors`` first, then the defaults, then a palette)."""
    out = []
    extra = iter(_PALETTE * (len(names) // len(_PALETTE) + 1))
    for name in names:
        if colors and name in colors:
            out.append(tuple(int(c) for c in colors[name]))
        elif name in DEFAULT_COLORS:
            out.append(DEFAULT_COLORS[name])
        else:
            out.append(next(extra))
    return out


def intensity_window(volume: np.ndarray, percentiles: Sequence[float] = (0.5, 99.5)) -> tuple[float, float]:
    """Display window of an MRI volume or slice: percentiles of its non-zero voxels."""
    vals = np.asarray(volume)[np.asarray(volume) != 0]
    if vals.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(vals, percentiles))
    return lo, (hi if hi > lo else lo + 1.0)


def render_slice(
    volume: np.ndarray,
    regions: np.ndarray | None,
    view: PlaneView,
    index: int,
    colors: Sequence[Sequence[int]] | None = None,
    alpha: float = 0.45,
    window: tuple[float, float] | None = None,
) -> np.ndarray:
    """One slice of ``volume`` in grey with ``regions`` blended in colour.

    Args:
        volume: ``(X, Y, Z)`` intensities.
        regions: ``(R, X, Y, Z)`` boolean masks (or ``None``), painted in this order (a pixel takes
            the colour of the last region that covers it).
        view: how the plane is drawn (:func:`bts_monai.inference.display.plane_views`).
        index: slice number along ``view.axis``.
        colors: one RGB colour per region (default :func:`region_colors` of generic names).
        alpha: opacity of the region colours.
        window: intensity range mapped to black..white (default: :func:`intensity_window` of the slice).

    Returns:
        ``(H, W, 3)`` uint8 RGB image.
    """
    grey = view.cut(np.asarray(volume, dtype=np.float32), index)
    lo, hi = window if window is not None else intensity_window(grey)
    grey = np.clip((grey - lo) / max(hi - lo, 1e-6), 0.0, 1.0) * 255.0
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    if regions is not None and len(regions):
        masks = view.cut(np.asarray(regions, dtype=bool), index)
        cols = list(colors) if colors is not None else region_colors([f"r{i}" for i in range(len(masks))])
        # Each pixel takes the colour of the last region covering it, blended once, so nested
        # regions keep their own colour rather than a mix of all of them.
        paint = np.zeros_like(rgb)
        covered = np.zeros(rgb.shape[:2], dtype=bool)
        for mask, col in zip(masks, cols):
            paint[mask] = np.asarray(col, dtype=np.float32)
            covered |= mask
        rgb[covered] = (1 - alpha) * rgb[covered] + alpha * paint[covered]
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def tumour_centre(regions: np.ndarray, fallback: np.ndarray | None = None) -> tuple[int, int, int]:
    """Centre of mass of the union of ``regions`` ``(R, X, Y, Z)`` (voxel indices); when empty,
    the centre of ``fallback``'s non-zero voxels (the brain), else the volume's centre."""
    union = np.asarray(regions, dtype=bool).any(0)
    for mask in (union, None if fallback is None else np.asarray(fallback) != 0):
        if mask is not None and mask.any():
            idx = np.nonzero(mask)
            return tuple(int(round(float(i.mean()))) for i in idx)  # type: ignore[return-value]
    return tuple(s // 2 for s in union.shape)  # type: ignore[return-value]


def _to_display(img: np.ndarray, spacing: tuple[float, float], scale: float) -> np.ndarray:
    """Resize so a pixel is square in mm and the panel ``scale`` pixels per mm."""
    from PIL import Image

    h, w = img.shape[:2]
    size = (max(1, round(w * spacing[0] * scale)), max(1, round(h * spacing[1] * scale)))
    if size == (w, h):
        return img
    return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.NEAREST))


def three_plane_overlay(
    volume: np.ndarray,
    regions: np.ndarray,
    names: Sequence[str],
    affine: np.ndarray | None = None,
    centre: Sequence[int] | None = None,
    colors: Mapping[str, Sequence[int]] | None = None,
    alpha: float = 0.45,
    title: str | None = None,
    min_size: int = 192,
    *,
    convention: str = DEFAULT_CONVENTION,
    orientation_known: bool = True,
) -> np.ndarray:
    """Axial, coronal and sagittal slices through the tumour's centre, side by side, with a legend
    and each panel's edge letters (R/L, A/P, S/I).

    Args:
        volume: ``(X, Y, Z)`` intensities in the file's voxel grid.
        regions: ``(R, X, Y, Z)`` boolean masks in the same grid, outer to inner.
        names: region names (legend, colours).
        affine: the grid's voxel -> world matrix (default: identity, an RAS array of 1 mm voxels);
            it decides how each plane is drawn and the panels' mm proportions.
        centre: slice indices ``(i, j, k)`` of the array; default :func:`tumour_centre`.
        colors: region name -> RGB (default :data:`DEFAULT_COLORS`).
        alpha: opacity of the region colours.
        title: text above the panels (e.g. the case id).
        min_size: small volumes are enlarged until their largest panel side has this many pixels.
        convention: ``radiological`` or ``neurological`` (:mod:`bts_monai.inference.display`).
        orientation_known: ``False`` for TIFF stacks: drawn as stored, no edge letters.

    Returns:
        ``(H, W, 3)`` uint8 RGB image.
    """
    from PIL import Image, ImageDraw

    volume = np.asarray(volume)
    affine = np.eye(4) if affine is None else np.asarray(affine)
    views = plane_views(affine, convention, orientation_known)
    sizes = voxel_sizes(affine)
    c = tuple(centre) if centre is not None else tumour_centre(regions, volume)
    cols = region_colors(list(names), colors)
    win = intensity_window(volume)
    # At least one pixel per voxel, and small volumes enlarged so a panel is ~min_size pixels.
    extent_mm = max(s * z for s, z in zip(volume.shape, sizes))
    scale = max(1.0 / min(sizes), min_size / max(extent_mm, 1e-6))
    panels = []
    for plane in PLANES:
        view = views[plane]
        img = render_slice(volume, regions, view, c[view.axis], cols, alpha, win)
        panels.append((view, _to_display(img, (sizes[view.cols_axis], sizes[view.rows_axis]), scale)))
    pad, top, legend_h = 6, 18 if title else 0, 20
    height = max(p.shape[0] for _, p in panels) + 2 * pad + top + legend_h + 14
    width = sum(p.shape[1] for _, p in panels) + pad * (len(panels) + 1)
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, 3), title, fill=(255, 255, 255))
    x = pad
    for view, p in panels:
        y = top + pad + 14
        canvas.paste(Image.fromarray(p), (x, y))
        draw.text((x, top + pad), f"{view.plane} {c[view.axis]}", fill=(200, 200, 200))
        _edge_letters(draw, view.labels, (x, y, x + p.shape[1], y + p.shape[0]))
        x += p.shape[1] + pad
    y = height - legend_h + 4
    x = pad
    for name, col in zip(names, cols):
        draw.rectangle([x, y, x + 10, y + 10], fill=tuple(col))
        draw.text((x + 14, y - 1), str(name), fill=(255, 255, 255))
        x += 24 + 7 * len(str(name))
    return np.asarray(canvas)


LETTER_COLOR = (255, 235, 59)
"""Colour of the edge letters on overlay panels (yellow, as the web page's)."""


def _edge_letters(draw: ImageDraw.ImageDraw, labels: Mapping[str, str], box: tuple[int, int, int, int]) -> None:
    """Each edge's letter inside the panel ``box`` (left, top, right, bottom), on a dark backing."""
    x0, y0, x1, y1 = box
    margin = 2
    for side, letter in labels.items():
        left, top, right, bottom = draw.textbbox((0, 0), letter)
        w, h = right - left, bottom - top
        if side == "left":
            at = (x0 + margin, (y0 + y1 - h) // 2)
        elif side == "right":
            at = (x1 - margin - w, (y0 + y1 - h) // 2)
        elif side == "top":
            at = ((x0 + x1 - w) // 2, y0 + margin)
        else:
            at = ((x0 + x1 - w) // 2, y1 - margin - h)
        draw.rectangle([at[0] - 1, at[1] - 1, at[0] + w + 1, at[1] + h + 1], fill=(0, 0, 0))
        draw.text((at[0] - left, at[1] - top), letter, fill=LETTER_COLOR)


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode an ``(H, W, 3)`` uint8 image as PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def save_overlay_png(path: str | os.PathLike[str], rgb: np.ndarray) -> None:
    """Write an RGB image as PNG atomically (temporary name in the same folder, then rename)."""
    from bts_monai.fileio import atomic_path

    data = png_bytes(rgb)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
