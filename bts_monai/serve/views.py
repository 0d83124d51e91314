"""The viewer's data: a finished case laid out for slicing, and one plane of it rendered as PNG.

When a job finishes, :func:`prepare_view` stores the scan (in the file's own voxel grid, windowed
to 8 bits per modality), the region masks and the label map as ``.npy`` files, and a
``view.json`` with each plane's geometry from :func:`bts_monai.inference.display.plane_views`:
which array axes are the image's rows and columns, their flips and the edge letters. The page
draws its crosshair and maps clicks to voxels with those flips only, so the letters, the slices
and the click mapping all follow the one convention of :mod:`bts_monai.inference.display`.
:func:`render_plane` cuts one plane (memory-mapped) and draws it with
:func:`bts_monai.inference.overlay.render_slice`, the renderer ``bts-infer --overlay`` uses.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bts_monai.fileio import atomic_open, write_text
from bts_monai.inference import overlay
from bts_monai.inference.display import DEFAULT_CONVENTION, PLANES, PlaneView, plane_views, voxel_sizes

__all__ = ["PLANES", "plane_geometry", "prepare_view", "render_plane"]


def plane_geometry(
    shape: Sequence[int],
    affine: np.ndarray,
    convention: str = DEFAULT_CONVENTION,
    orientation_known: bool = True,
) -> dict[str, dict[str, Any]]:
    """How each plane of an array of ``shape`` with this ``affine`` is shown, for the page.

    Args:
        shape: the array's spatial shape.
        affine: its voxel -> world matrix.
        convention: ``radiological`` or ``neurological``.
        orientation_known: whether to name the image's edges (R/L, A/P, S/I); ``False`` for
            stacks of 2D slices whose orientation the files do not say.

    Returns:
        Per plane (:meth:`~bts_monai.inference.display.PlaneView.describe`): ``axis`` (fixed),
        ``slices``, ``cols_axis``/``rows_axis`` with their sizes ``cols``/``rows`` and
        ``flip_cols``/``flip_rows``, ``aspect`` (width/height in mm), ``labels`` (edge letters).
    """
    spacing = voxel_sizes(affine)
    views = plane_views(affine, convention, orientation_known)
    return {plane: views[plane].describe(shape, spacing) for plane in PLANES}


def _view_of(plane: str, geom: dict[str, Any]) -> PlaneView:
    """The :class:`PlaneView` a ``view.json`` plane entry describes."""
    keys = ("axis", "rows_axis", "cols_axis", "flip_rows", "flip_cols", "labels")
    return PlaneView(plane, **{k: geom[k] for k in keys})


def _to_uint8(volume: np.ndarray) -> np.ndarray:
    """One modality scaled to 0..255 over :func:`~bts_monai.inference.overlay.intensity_window`."""
    lo, hi = overlay.intensity_window(volume)
    scaled = (np.asarray(volume, dtype=np.float32) - lo) / max(hi - lo, 1e-6)
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_open(path, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array))


def prepare_view(
    folder: str | os.PathLike[str],
    image: np.ndarray,
    modalities: Sequence[str],
    masks: np.ndarray,
    layers: dict[str, list[dict[str, Any]]],
    affine: np.ndarray,
    label_map: np.ndarray | None = None,
    orientation_known: bool = True,
    convention: str = DEFAULT_CONVENTION,
) -> dict[str, Any]:
    """Store a finished case for the viewer and return its description (also saved as ``view.json``).

    Args:
        folder: the job's view folder (created).
        image: ``(C, *spatial)`` scan in the file's voxel grid, channels in ``modalities`` order.
        modalities: channel names.
        masks: boolean ``(R, *spatial)`` region masks in the same grid.
        layers: ``{"regions": [...], "labels": [...]}``: per overlay ``name``, ``title``, ``color``
            (CSS) and its source: ``region`` (index into ``masks``) or label ``value``.
        affine: voxel -> world matrix of the grid (for TIFF stacks, the display affine of
            :func:`bts_monai.inference.io.tiff_display_affine`).
        label_map: the scheme's label map in the same grid, when ``layers`` has labels.
        orientation_known: ``False`` for stacks of 2D slices (no edge letters).
        convention: how left and right are drawn (:mod:`bts_monai.inference.display`).

    Returns:
        ``shape``, ``spacing``, ``center`` (voxel indices of the file's grid), ``modalities``,
        ``default_modality``, ``layers``, ``convention`` and ``planes`` (:func:`plane_geometry`).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    display = np.stack([_to_uint8(channel) for channel in image])
    regions = np.asarray(masks, dtype=bool)
    _save_npy(folder / "image.npy", display)
    _save_npy(folder / "regions.npy", regions)
    if label_map is not None:
        _save_npy(folder / "labels.npy", np.asarray(label_map))
    shape = [int(s) for s in display.shape[1:]]
    meta = {
        "shape": shape,
        "spacing": [float(z) for z in voxel_sizes(affine)],
        "center": [int(c) for c in overlay.tumour_centre(regions, display.max(0))],
        "modalities": list(modalities),
        "default_modality": "flair" if "flair" in modalities else modalities[0],
        "layers": layers,
        "convention": convention,
        "planes": plane_geometry(shape, affine, convention, orientation_known),
    }
    write_text(folder / "view.json", json.dumps(meta))
    return meta


def _rgb(css: str) -> tuple[int, int, int]:
    c = css.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def _one_slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """``volume[..., index, ...]`` along spatial ``axis``, kept 3D (one voxel thick).

    Handing :func:`~bts_monai.inference.overlay.render_slice` only this slab keeps it from
    converting the whole memory-mapped volume on every request.
    """
    where = [slice(None)] * volume.ndim
    where[volume.ndim - 3 + axis] = slice(index, index + 1)
    return np.asarray(volume[tuple(where)])


def render_plane(
    folder: str | os.PathLike[str],
    plane: str,
    index: int | None = None,
    modality: str | None = None,
    mode: str = "regions",
    layers: Sequence[str] | None = None,
    opacity: float = 0.45,
) -> bytes:
    """One plane of a prepared case as PNG: the modality in grey, chosen overlays in colour.

    Args:
        folder: a folder written by :func:`prepare_view`.
        plane: ``axial``, ``coronal`` or ``sagittal``.
        index: slice number along the plane's fixed axis (default: through the tumour's centre).
        modality: which channel (default: FLAIR, or the first).
        mode: ``regions`` (overlapping tumour regions) or ``labels`` (the label map's classes).
        layers: names of the overlays to draw (default: all of the mode's), painted in the
            case's order (outer to inner), whatever order they are given in.
        opacity: overlay opacity, 0..1.

    Raises:
        ValueError: an unknown plane, modality, mode or layer, or an index or opacity out of range.
    """
    folder = Path(folder)
    meta = json.loads((folder / "view.json").read_text())
    if plane not in PLANES:
        raise ValueError(f"unknown plane {plane!r}; choose from {', '.join(PLANES)}")
    geom = meta["planes"][plane]
    view = _view_of(plane, geom)
    axis = view.axis
    index = meta["center"][axis] if index is None else int(index)
    if not 0 <= index < geom["slices"]:
        raise ValueError(f"{plane} slice {index} is outside 0..{geom['slices'] - 1}")
    modality = modality or meta["default_modality"]
    if modality not in meta["modalities"]:
        raise ValueError(f"unknown modality {modality!r}; this case has {', '.join(meta['modalities'])}")
    modes = [k for k, v in meta["layers"].items() if v]
    if mode not in modes:
        raise ValueError(f"unknown overlay mode {mode!r}; choose from {', '.join(modes)}")
    available = meta["layers"][mode]
    names = [layer["name"] for layer in available]
    wanted = names if layers is None else list(layers)
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise ValueError(f"unknown {mode} {', '.join(unknown)}; this case has {', '.join(names)}")
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity {opacity} is outside 0..1")
    chosen = [layer for layer in available if layer["name"] in wanted]
    image = np.load(folder / "image.npy", mmap_mode="r")
    grey = _one_slice(image[meta["modalities"].index(modality)], axis, index)
    if mode == "labels":
        labels = _one_slice(np.load(folder / "labels.npy", mmap_mode="r"), axis, index)
        masks = np.stack([labels == layer["value"] for layer in chosen]) if chosen else None
    else:
        regions = np.load(folder / "regions.npy", mmap_mode="r")
        masks = np.stack([_one_slice(regions[layer["region"]], axis, index) for layer in chosen]) if chosen else None
    rgb = overlay.render_slice(
        grey, masks, view, 0, [_rgb(layer["color"]) for layer in chosen], alpha=opacity, window=(0.0, 255.0)
    )
    return overlay.png_bytes(rgb)
