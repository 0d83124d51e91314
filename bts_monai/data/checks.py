"""Checks of input files, shared by ``bts-datalist --verify``, the DataModule, the cache and inference,
so what one refuses the others refuse too, with the same one-line message.

* NIfTI headers (:func:`check_nifti_header`): greyscale voxels (not RGB or complex), an invertible
  affine, and dimensions × data type that the file can actually hold, checked from the file's size
  (``.nii``) or the gzip trailer (``.nii.gz``) *before* anything is allocated: a 90-byte file whose
  header claims 2400×2400×1550 voxels is refused instead of asking for 17 GiB.
* Voxel values (:func:`check_voxels`): no NaN or Inf, not all zero.
* LGG slices (:func:`read_rgb_slice`, :func:`check_slice_shapes`): readable, RGB, and the size of
  the patient's other slices; the message names the slice at fault.
* Whole files, decoded (:func:`verify_nifti`, :func:`verify_lgg_patient`): what ``bts-datalist
  --verify`` runs on every file, so a dataset it passes holds nothing inference would refuse.

Every check raises :class:`~bts_monai.errors.BtsInputError` naming the file and the problem.
"""

from __future__ import annotations

import collections
import os
import re
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bts_monai.errors import BtsInputError

if TYPE_CHECKING:
    from bts_monai.labels import LabelScheme

__all__ = [
    "GZIP_MAX_RATIO",
    "check_nifti_header",
    "check_slice_shapes",
    "read_tiff_stack",
    "check_voxels",
    "load_nifti",
    "read_rgb_slice",
    "read_tiff",
    "read_voxels",
    "verify_lgg_patient",
    "verify_nifti",
]

GZIP_MAX_RATIO = 1032
"""Deflate's largest expansion (a 258-byte match per 2-bit code, RFC 1951): no ``.nii.gz`` of ``n``
bytes can hold more than about ``1032 * n`` bytes of voxels."""

_NIFTI = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)
_GIB = 2**30


def load_nifti(path: str | os.PathLike[str]) -> Any:
    """Open a NIfTI file (header only; voxels stay on disk) and check its header.

    Raises:
        BtsInputError: missing, a folder, not ``.nii``/``.nii.gz``, unreadable, or a header that
            fails :func:`check_nifti_header`.
    """
    import nibabel as nib

    path = Path(path)
    if not path.exists():
        raise BtsInputError(path, "does not exist")
    if not path.is_file():
        raise BtsInputError(path, "is a folder, not a NIfTI file")
    if not _NIFTI.search(path.name):
        raise BtsInputError(path, "not a NIfTI file (expected .nii or .nii.gz)")
    try:
        img = nib.load(path)
    except Exception as exc:  # nibabel raises many types for foreign or corrupt files
        raise BtsInputError(path, f"cannot read as NIfTI ({type(exc).__name__}: {exc})") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise BtsInputError(path, f"not a NIfTI image ({type(img).__name__})")
    check_nifti_header(path, img)
    return img


def check_nifti_header(path: str | os.PathLike[str], img: Any) -> None:
    """The header describes greyscale voxels on an invertible grid that the file can hold.

    Raises:
        BtsInputError: RGB or complex voxels, a singular or non-finite affine, or dimensions ×
            data type larger than the file's contents.
    """
    dtype = np.dtype(img.get_data_dtype())
    if dtype.fields is not None:
        raise BtsInputError(path, f"holds colour (RGB) voxels ({dtype}); MRI modalities are greyscale volumes")
    if dtype.kind not in "biuf":
        raise BtsInputError(path, f"holds {dtype} voxels; expected integer or floating-point intensities")
    shape = tuple(int(s) for s in img.shape)
    if not shape or min(shape) < 1:
        raise BtsInputError(path, f"the header's shape {shape} has no voxels")
    affine = np.asarray(img.affine, dtype=float)
    linear = affine[:3, :3]
    scale = max(float(np.abs(linear).max()) if np.isfinite(linear).all() else 0.0, 1e-12)
    if not np.isfinite(affine).all() or abs(float(np.linalg.det(linear))) < 1e-6 * scale**3:
        raise BtsInputError(
            path, "the header's affine (voxel-to-world matrix) is singular or not finite: the scan's geometry is broken"
        )
    _check_size(Path(path), img, shape, dtype)


def _voxel_offset(img: Any) -> int:
    offset = getattr(img.dataobj, "offset", None)
    return int(offset if offset is not None else img.header.get_data_offset())


def _check_size(path: Path, img: Any, shape: tuple[int, ...], dtype: np.dtype) -> None:
    needed = _voxel_offset(img) + int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    on_disk = path.stat().st_size
    claim = f"its header's shape {shape} of {dtype} needs {needed / _GIB:.3g} GiB" if needed > _GIB else None
    claim = claim or f"its header's shape {shape} of {dtype} needs {needed} bytes"
    if not path.name.lower().endswith(".gz"):
        if on_disk < needed:
            raise BtsInputError(path, f"is truncated or its header is wrong: {claim}, the file holds {on_disk}")
        return
    if needed > GZIP_MAX_RATIO * on_disk + 2**16:
        raise BtsInputError(
            path, f"its header is wrong or the file is truncated: {claim}, more than {on_disk} gzip bytes can hold"
        )
    if _gzip_isize(path) >= needed:  # the trailer's size (mod 2^32) suffices: the common, fast case
        return
    # A small trailer size may be a truncated file, a multi-member gzip or a file over 4 GiB:
    # count the decompressed bytes (streaming, nothing kept) to know.
    got = _gunzipped_size(path, needed)
    if got < needed:
        raise BtsInputError(path, f"is truncated or its header is wrong: {claim}, the file decompresses to {got}")


def _gzip_isize(path: Path) -> int:
    with open(path, "rb") as fh:
        fh.seek(-4, os.SEEK_END)
        return int.from_bytes(fh.read(4), "little")


def _gunzipped_size(path: Path, stop_at: int) -> int:
    """Decompressed size of a (multi-member) gzip file, counting no further than ``stop_at``."""
    total = 0
    d = zlib.decompressobj(wbits=31)
    with open(path, "rb") as fh:
        while total < stop_at:
            chunk = fh.read(1 << 20)
            if not chunk:
                break
            while chunk:
                try:
                    total += len(d.decompress(chunk))
                except zlib.error:
                    return total
                if d.eof:
                    chunk, d = d.unused_data, zlib.decompressobj(wbits=31)
                else:
                    chunk = b""
    return total


def check_voxels(path: str | os.PathLike[str] | None, arr: np.ndarray, what: str = "") -> None:
    """No NaN or Inf voxels, and not every voxel zero.

    Args:
        path: the file, for the message.
        arr: its voxels.
        what: prefix of the problem, e.g. ``"channel 2 (t1ce) "``.

    Raises:
        BtsInputError: naming ``path``.
    """
    finite = np.isfinite(arr)
    if not finite.all():
        raise BtsInputError(path, f"{what}contains {int(arr.size - finite.sum())} NaN or Inf voxels")
    if not arr.any():
        raise BtsInputError(path, f"{what}is empty: every voxel is zero")


def read_tiff(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode one TIFF file.

    Raises:
        BtsInputError: the file is missing, truncated or not a TIFF (names this file).
    """
    import tifffile

    try:
        return np.asarray(tifffile.imread(path))
    except Exception as exc:  # tifffile raises many types for foreign or cut files
        text = " ".join(str(exc).split())[:200]
        raise BtsInputError(path, f"cannot read as TIFF ({type(exc).__name__}: {text})") from exc


def read_rgb_slice(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode one LGG image slice: ``(H, W, 3)``.

    Raises:
        BtsInputError: unreadable, or not three channels (greyscale, RGBA...).
    """
    arr = read_tiff(path)
    channels = 1 if arr.ndim == 2 else int(arr.shape[-1])
    if arr.ndim not in (2, 3) or channels != 3:
        raise BtsInputError(
            path,
            f"has shape {arr.shape}, {channels} channel(s): LGG slices are RGB (pre-contrast, FLAIR, post-contrast)",
        )
    return arr


def check_slice_shapes(paths: Sequence[str | os.PathLike[str]], shapes: Sequence[tuple[int, ...]]) -> None:
    """Every slice of a patient has the same size; the odd one out (against the most common size)
    is named, not its neighbour.

    Raises:
        BtsInputError: naming the first slice whose shape is not the most common one.
    """
    if not shapes:
        return
    common, _ = collections.Counter(shapes).most_common(1)[0]
    for p, s in zip(paths, shapes):
        if s != common:
            n_same = sum(x == common for x in shapes)
            raise BtsInputError(p, f"slice shape {s} differs from the {common} of the patient's {n_same} other slices")


def read_voxels(path: str | os.PathLike[str], img: Any) -> np.ndarray:
    """Decode a checked NIfTI image's voxels.

    Raises:
        BtsInputError: the data cannot be decoded (a truncated or corrupt file).
    """
    try:
        return np.asanyarray(img.dataobj)
    except Exception as exc:  # EOFError, zlib.error, OSError... from a cut or damaged file
        raise BtsInputError(path, f"cannot read the voxels, the file is corrupt or truncated ({exc})") from exc


def verify_nifti(
    path: str | os.PathLike[str],
    scheme: LabelScheme | None = None,
    channels: Sequence[str] | None = None,
) -> None:
    """Decode a whole NIfTI file and check it as inference and training read it.

    Args:
        path: the file.
        scheme: for a label map: its values must be integers of this scheme (an all-zero label
            map is a case without tumour, and fine). ``None``: an image, whose voxels must be
            finite and not all zero (each channel of a 4D image on its own).
        channels: names of a 4D image's channels, for the message.

    Raises:
        BtsInputError: naming the file and the problem (see :func:`load_nifti`, :func:`check_voxels`).
    """
    img = load_nifti(path)
    data = read_voxels(path, img)
    if scheme is not None:
        values = np.unique(data)
        if not np.array_equal(values, np.round(values)):
            raise BtsInputError(path, "holds non-integer values; expected a label map")
        scheme.check_values(values, path)
    elif data.ndim == 4:
        names = list(channels or [])
        for c in range(data.shape[3]):
            name = f" ({names[c]})" if c < len(names) else ""
            check_voxels(path, data[..., c], f"channel {c}{name} ")
    else:
        check_voxels(path, data)
    img.uncache()


def verify_lgg_patient(
    images: Sequence[str | os.PathLike[str]], masks: Sequence[str | os.PathLike[str] | None], scheme: LabelScheme
) -> None:
    """Decode every slice of an LGG patient and check it as inference reads it: RGB slices of one
    size (:func:`read_rgb_slice`, :func:`check_slice_shapes`), not all of them zero, and masks of
    the slice's size with the scheme's values.

    Raises:
        BtsInputError: naming the slice (or mask) at fault and the problem.
    """
    arrays = [read_rgb_slice(p) for p in images]
    check_slice_shapes(images, [tuple(a.shape) for a in arrays])
    if arrays and not any(a.any() for a in arrays):
        raise BtsInputError(Path(images[0]).parent, "is empty: every pixel of every slice is zero")
    for image, arr, mask in zip(images, arrays, masks):
        if mask is None:
            continue
        m = read_tiff(mask)
        if m.shape != arr.shape[:2]:
            raise BtsInputError(mask, f"mask shape {m.shape} differs from its slice's {arr.shape[:2]} ({image})")
        scheme.check_values(np.unique(m), mask)


def read_tiff_stack(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> np.ndarray:
    """Read TIFF slices and stack them along a new last axis, channels first, as float32.

    An RGB slice ``(H, W, 3)`` becomes ``(3, H, W)``; a mask ``(H, W)`` becomes ``(1, H, W)``;
    ``N`` files give ``(C, H, W, N)``. Slice order is the order given (discovery sorts numerically).

    Raises:
        BtsInputError: no file, an unreadable file, or slices of different sizes (naming the odd one out).
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        raise BtsInputError(None, "no TIFF slices given")
    arrays = []
    for p in paths:
        a = read_tiff(p)
        arrays.append(a[None] if a.ndim == 2 else np.moveaxis(a, -1, 0))
    check_slice_shapes(paths, [tuple(a.shape) for a in arrays])
    return np.stack(arrays, axis=-1).astype(np.float32)
