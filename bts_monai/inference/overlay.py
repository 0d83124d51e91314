"""Tumour regions in colour over an MRI slice: the one overlay renderer (CLI, web page, training).

Volumes are RAS-ordered arrays ``(X, Y, Z)`` (use :func:`bts_monai.inference.geometry.ras_oriented`
for a file's own axes). Slices are drawn the way 3D Slicer and ITK-SNAP show them by default:
superior (axial: anterior) at the top, the patient's right on the image's left in axial and
coronal views (radiological convention), anterior on the left in sagittal views. Regions are
painted in the order given, so pass them outer to inner (WT, TC, ET) to keep the nested ones
visible. Only numpy and Pillow are used: no display is needed.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "AXES",
    "DEFAULT_COLORS",
    "region_colors",
    "intensity_window",
    "slice_2d",
    "render_slice",
    "tumour_centre",
    "three_plane_overlay",
    "png_bytes",
    "save_overlay_png",
]

AXES = {"sagittal": 0, "coronal": 1, "axial": 2}
"""View name -> the RAS axis its slices cut."""

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


def slice_2d(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The ``index``-th slice across RAS ``axis`` of ``(..., X, Y, Z)``, as displayed (rows top-down)."""
    sl = np.take(volume, int(index), axis=volume.ndim - 3 + int(axis))
    # (..., u, v): u runs to the right or anterior, v upward; rows go down, columns go left.
    return np.flip(np.swapaxes(sl, -1, -2), axis=(-2, -1))


def render_slice(
    volume: np.ndarray,
    regions: np.ndarray | None,
    axis: int,
    index: int,
    colors: Sequence[Sequence[int]] | None = None,
    alpha: float = 0.45,
    window: tuple[float, float] | None = None,
) -> np.ndarray:
    """One slice of ``volume`` in grey with ``regions`` blended in colour.

    Args:
        volume: ``(X, Y, Z)`` RAS-ordered intensities.
        regions: ``(R, X, Y, Z)`` boolean masks (or ``None``), painted in this order (a pixel takes
            the colour of the last region that covers it).
        axis: 0 sagittal, 1 coronal, 2 axial (see :data:`AXES`).
        index: slice number along ``axis``.
        colors: one RGB colour per region (default :func:`region_colors` of generic names).
        alpha: opacity of the region colours.
        window: intensity range mapped to black..white (default: :func:`intensity_window` of the slice).

    Returns:
        ``(H, W, 3)`` uint8 RGB image.
    """
    grey = slice_2d(np.asarray(volume, dtype=np.float32), axis, index)
    lo, hi = window if window is not None else intensity_window(grey)
    grey = np.clip((grey - lo) / max(hi - lo, 1e-6), 0.0, 1.0) * 255.0
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    if regions is not None and len(regions):
        masks = slice_2d(np.asarray(regions, dtype=bool), axis, index)
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
    zooms: Sequence[float] = (1.0, 1.0, 1.0),
    centre: Sequence[int] | None = None,
    colors: Mapping[str, Sequence[int]] | None = None,
    alpha: float = 0.45,
    title: str | None = None,
    min_size: int = 192,
) -> np.ndarray:
    """Axial, coronal and sagittal slices through the tumour's centre, side by side, with a legend.

    Args:
        volume: ``(X, Y, Z)`` RAS-ordered intensities.
        regions: ``(R, X, Y, Z)`` boolean masks, outer to inner.
        names: region names (legend, colours).
        zooms: voxel size along X, Y, Z in mm (panels are drawn with square mm).
        centre: slice indices ``(x, y, z)``; default :func:`tumour_centre`.
        colors: region name -> RGB (default :data:`DEFAULT_COLORS`).
        alpha: opacity of the region colours.
        title: text above the panels (e.g. the case id).
        min_size: small volumes are enlarged until their largest panel side has this many pixels.

    Returns:
        ``(H, W, 3)`` uint8 RGB image.
    """
    from PIL import Image, ImageDraw

    volume = np.asarray(volume)
    c = tuple(centre) if centre is not None else tumour_centre(regions, volume)
    cols = region_colors(list(names), colors)
    win = intensity_window(volume)
    zx, zy, zz = (float(z) for z in zooms)
    # At least one pixel per voxel, and small volumes enlarged so a panel is ~min_size pixels.
    extent_mm = max(s * z for s, z in zip(volume.shape, (zx, zy, zz)))
    scale = max(1.0 / min(zx, zy, zz), min_size / max(extent_mm, 1e-6))
    panels = []
    for view, axis, spacing in (("axial", 2, (zx, zy)), ("coronal", 1, (zx, zz)), ("sagittal", 0, (zy, zz))):
        img = render_slice(volume, regions, axis, c[axis], cols, alpha, win)
        panels.append((view, _to_display(img, spacing, scale)))
    pad, top, legend_h = 6, 18 if title else 0, 20
    height = max(p.shape[0] for _, p in panels) + 2 * pad + top + legend_h + 14
    width = sum(p.shape[1] for _, p in panels) + pad * (len(panels) + 1)
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, 3), title, fill=(255, 255, 255))
    x = pad
    for view, p in panels:
        canvas.paste(Image.fromarray(p), (x, top + pad + 14))
        draw.text((x, top + pad), f"{view} {c[AXES[view]]}", fill=(200, 200, 200))
        x += p.shape[1] + pad
    y = height - legend_h + 4
    x = pad
    for name, col in zip(names, cols):
        draw.rectangle([x, y, x + 10, y + 10], fill=tuple(col))
        draw.text((x + 14, y - 1), str(name), fill=(255, 255, 255))
        x += 24 + 7 * len(str(name))
    return np.asarray(canvas)


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode an ``(H, W, 3)`` uint8 image as PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def save_overlay_png(path: str | os.PathLike[str], rgb: np.ndarray) -> None:
    """Write an RGB image as PNG atomically (temporary name in the same folder, then rename)."""
    from bts_monai.inference.io import atomic_path

    data = png_bytes(rgb)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
