"""How slices are shown: the one display-orientation convention of overlays and the web viewer.

Everything that draws a slice or maps a clicked pixel back to a voxel asks this module: the PNG
overlays of ``bts-infer --overlay`` (:mod:`bts_monai.inference.overlay`), the planes the web page
shows and the edge letters and flips it is sent (:mod:`bts_monai.serve.views`), and through those
flips the page's crosshair and click mapping.

The convention, as 3D Slicer, ITK-SNAP and FSLeyes draw it:

* axial slices show anterior at the top, coronal and sagittal slices superior at the top;
* axial and coronal slices show the patient's right on the image's **left** under the
  ``radiological`` convention (the default, as if facing the patient), on the image's right under
  the ``neurological`` one (as if looking from behind);
* sagittal slices show anterior on the left under both (the convention only mirrors left-right).

Which array axis points where comes from the affine (:func:`nibabel.orientations.aff2axcodes`:
each voxel axis takes the closest world axis), so arrays are shown in their own voxel grid,
whatever their orientation (RAS, LPS, oblique): nothing is resampled, and a pixel maps to exactly
one voxel of the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "CONVENTIONS",
    "DEFAULT_CONVENTION",
    "PLANES",
    "PlaneView",
    "check_convention",
    "plane_views",
    "voxel_sizes",
]

CONVENTIONS: tuple[str, ...] = ("radiological", "neurological")
"""Ways to draw left and right: ``radiological`` (patient's right on the image's left) or
``neurological`` (patient's right on the image's right)."""

DEFAULT_CONVENTION = "radiological"
"""What overlays and the web page use unless told otherwise (as 3D Slicer and ITK-SNAP do)."""

PLANES: tuple[str, ...] = ("axial", "coronal", "sagittal")
"""The three planes, in the order they are drawn."""

_OPPOSITE = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}
_AXIS_OF = {"R": "LR", "L": "LR", "A": "AP", "P": "AP", "S": "SI", "I": "SI"}
# plane -> (world axis held fixed, world axis along the columns, world axis along the rows,
#           letter at the top). The left letter of the columns depends on the convention.
_LAYOUT = {
    "axial": ("SI", "LR", "AP", "A"),
    "coronal": ("AP", "LR", "SI", "S"),
    "sagittal": ("LR", "AP", "SI", "S"),
}


def check_convention(convention: str) -> str:
    """``convention`` if it is one of :data:`CONVENTIONS`.

    Raises:
        ValueError: any other name.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown display convention {convention!r}; choose from {', '.join(CONVENTIONS)}")
    return convention


def _left_letter(columns: str, convention: str) -> str:
    """The letter on the image's left edge for a plane whose columns run along world axis ``columns``."""
    if columns == "LR":
        return "R" if convention == "radiological" else "L"
    return "A"  # sagittal: anterior on the left in both conventions


@dataclass(frozen=True)
class PlaneView:
    """How one plane of a 3D array is drawn: which array axes become rows and columns, and flips.

    Image pixel ``(row, col)`` of slice ``index`` shows voxel ``v`` with ``v[axis] = index``,
    ``v[rows_axis] = rows - 1 - row if flip_rows else row`` and likewise for columns.

    Args:
        plane: ``axial``, ``coronal`` or ``sagittal``.
        axis: the array axis held fixed (the slice number runs along it).
        rows_axis: the array axis along the image's rows (top to bottom).
        cols_axis: the array axis along the image's columns (left to right).
        flip_rows: row 0 shows the last voxel along ``rows_axis``.
        flip_cols: column 0 shows the last voxel along ``cols_axis``.
        labels: edge letters ``{"left", "right", "top", "bottom"}`` (R/L, A/P, S/I); empty when
            the orientation is unknown (TIFF stacks).
    """

    plane: str
    axis: int
    rows_axis: int
    cols_axis: int
    flip_rows: bool
    flip_cols: bool
    labels: dict[str, str] = field(default_factory=dict)

    def cut(self, volume: np.ndarray, index: int) -> np.ndarray:
        """Slice ``index`` of ``(..., X, Y, Z)`` as displayed: ``(..., rows, cols)``, row 0 at the top."""
        volume = np.asarray(volume)
        lead = volume.ndim - 3
        sl = np.take(volume, int(index), axis=lead + self.axis)
        # The two remaining array axes keep their order; swap them when rows come after columns.
        if self.rows_axis > self.cols_axis:
            sl = np.swapaxes(sl, -1, -2)
        flips = [a for a, f in ((-2, self.flip_rows), (-1, self.flip_cols)) if f]
        return np.flip(sl, axis=flips) if flips else sl

    def pixel_to_voxel(self, row: int, col: int, index: int, shape: Sequence[int]) -> tuple[int, int, int]:
        """The voxel ``(i, j, k)`` shown at pixel ``(row, col)`` of slice ``index`` of an array of ``shape``."""
        voxel = [0, 0, 0]
        voxel[self.axis] = int(index)
        voxel[self.rows_axis] = int(shape[self.rows_axis]) - 1 - int(row) if self.flip_rows else int(row)
        voxel[self.cols_axis] = int(shape[self.cols_axis]) - 1 - int(col) if self.flip_cols else int(col)
        return voxel[0], voxel[1], voxel[2]

    def voxel_to_pixel(self, voxel: Sequence[int], shape: Sequence[int]) -> tuple[int, int]:
        """The pixel ``(row, col)`` where ``voxel`` appears in its slice (inverse of :meth:`pixel_to_voxel`)."""
        r, c = int(voxel[self.rows_axis]), int(voxel[self.cols_axis])
        row = int(shape[self.rows_axis]) - 1 - r if self.flip_rows else r
        col = int(shape[self.cols_axis]) - 1 - c if self.flip_cols else c
        return row, col

    def describe(self, shape: Sequence[int], spacing: Sequence[float]) -> dict[str, Any]:
        """The plane as the web page needs it (JSON): axes, sizes, flips, width/height in mm, letters."""
        rows, cols = int(shape[self.rows_axis]), int(shape[self.cols_axis])
        return {
            "axis": self.axis,
            "slices": int(shape[self.axis]),
            "rows_axis": self.rows_axis,
            "cols_axis": self.cols_axis,
            "rows": rows,
            "cols": cols,
            "flip_rows": self.flip_rows,
            "flip_cols": self.flip_cols,
            "aspect": (cols * float(spacing[self.cols_axis])) / (rows * float(spacing[self.rows_axis])),
            "labels": dict(self.labels),
        }


def _axcodes(affine: np.ndarray) -> tuple[str, str, str] | None:
    """Closest world direction (R/L/A/P/S/I) of each voxel axis, or ``None`` when they do not
    name three different world axes (a degenerate affine)."""
    import nibabel as nib

    codes = nib.orientations.aff2axcodes(np.asarray(affine, dtype=np.float64))
    if any(c is None for c in codes) or len({_AXIS_OF[c] for c in codes}) != 3:  # type: ignore[index]
        return None
    return codes[0], codes[1], codes[2]  # type: ignore[return-value]


def plane_views(
    affine: np.ndarray, convention: str = DEFAULT_CONVENTION, orientation_known: bool = True
) -> dict[str, PlaneView]:
    """How each of :data:`PLANES` is drawn for an array with this voxel -> world ``affine``.

    Args:
        affine: the array's 4x4 voxel -> world (RAS mm) matrix, as in its NIfTI header.
        convention: one of :data:`CONVENTIONS`.
        orientation_known: ``False`` for stacks of 2D slices whose files say nothing about
            orientation (their display affine only says how to lay them out): no edge letters,
            and no mirroring by convention, so slices show as stored.

    Returns:
        Plane name -> :class:`PlaneView`.

    Raises:
        ValueError: an unknown convention, or an affine whose axes are degenerate.
    """
    check_convention(convention)
    codes = _axcodes(affine)
    if codes is None:
        raise ValueError("the affine's voxel axes do not point along three different directions")
    if not orientation_known:
        # The display affine of a TIFF stack is made so the radiological layout shows it as stored.
        convention = "radiological"
    axis_of = {_AXIS_OF[c]: i for i, c in enumerate(codes)}
    out = {}
    for plane, (fixed, columns, rows, top) in _LAYOUT.items():
        left = _left_letter(columns, convention)
        cols_axis, rows_axis = axis_of[columns], axis_of[rows]
        # Without a flip, index 0 is on the left (top) and the index grows towards codes[axis].
        labels = {"left": left, "right": _OPPOSITE[left], "top": top, "bottom": _OPPOSITE[top]}
        out[plane] = PlaneView(
            plane,
            axis=axis_of[fixed],
            rows_axis=rows_axis,
            cols_axis=cols_axis,
            flip_rows=codes[rows_axis] == top,
            flip_cols=codes[cols_axis] == left,
            labels=labels if orientation_known else {},
        )
    return out


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """Voxel size (mm) along each array axis: the lengths of the affine's columns."""
    return np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(0))
