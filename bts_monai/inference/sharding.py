"""Batch inference split over a cluster: each of N parts takes its share of the cases, and a rerun
skips the cases already done.

``bts-infer DIR -o OUT --num-parts N --part-id K`` (:meth:`~bts_monai.inference.predictor.
Predictor.run` with ``num_parts``/``part_id``) runs part ``K`` of ``N``: the cases are sorted by
case id and dealt out round-robin (case ``i`` of the sorted list goes to part ``i % N``, as
nnU-Net's ``-num_parts``/``-part_id`` deal theirs), so every case belongs to exactly one part,
each part gets a spread of the release rather than one end of it, and the share depends only on
the case ids: every array task that lists the same folder agrees. Inputs that would write under
one name (the same case id twice) go to the same part, where they are numbered as in one run.

``skip_existing`` (nnU-Net's ``--continue_prediction``) skips a case whose outputs are complete:
the segmentation and every other per-case file the run asks for (probability maps, overlay, DICOM
SEG) exist and read back whole, and the segmentation lies on the input's grid (same shape and
affine for NIfTI input, one page per slice for TIFF). A missing or truncated one (a job killed
while another program copied it, a full disk), or a segmentation of another scan under the same
name, makes the case run again and its files be replaced. The skipped cases'
volumes are counted from their segmentations, so a report still covers the whole part; they are
taken to come from the same model and settings, as nnU-Net takes them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from bts_monai.errors import BtsInputError

__all__ = [
    "check_part",
    "output_complete",
    "outputs_complete",
    "part_path",
    "same_grid",
    "select_part",
    "segmentation_labels",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")


def check_part(num_parts: int, part_id: int) -> None:
    """Refuse a share that does not exist.

    Raises:
        BtsInputError: ``num_parts < 1``, or ``part_id`` outside ``0 .. num_parts - 1``.
    """
    if isinstance(num_parts, bool) or not isinstance(num_parts, int) or num_parts < 1:
        raise BtsInputError(None, f"--num-parts must be a whole number of at least 1, not {num_parts!r}")
    if isinstance(part_id, bool) or not isinstance(part_id, int) or not 0 <= part_id < num_parts:
        raise BtsInputError(
            None, f"--part-id must be 0 to {num_parts - 1} with --num-parts {num_parts}, not {part_id!r}"
        )


def select_part(items: Sequence[T], num_parts: int, part_id: int, key: Callable[[T], str]) -> list[T]:
    """The items of part ``part_id`` of ``num_parts``, in their given order.

    Args:
        items: every case of the run, as every part lists them.
        num_parts: how many parts the run is split into.
        part_id: this part, from 0.
        key: an item's case id; the distinct ids, sorted, are dealt round-robin.

    Raises:
        BtsInputError: see :func:`check_part`.
    """
    check_part(num_parts, part_id)
    keys = [key(it) for it in items]
    mine = {k for i, k in enumerate(sorted(set(keys))) if i % num_parts == part_id}
    out = [it for it, k in zip(items, keys) if k in mine]
    logger.info("part %d of %d: %d of %d cases", part_id, num_parts, len(out), len(items))
    return out


def part_path(path: str | os.PathLike[str], num_parts: int, part_id: int) -> Path:
    """``volumes.csv`` -> ``volumes.part2of4.csv`` when the run is split: one file for all cases
    would be written by every part, each replacing the others'. Unsplit runs keep the name."""
    path = Path(path)
    if num_parts <= 1:
        return path
    return path.with_name(f"{path.stem}.part{part_id}of{num_parts}{path.suffix}")


def output_complete(path: str | os.PathLike[str]) -> bool:
    """Whether an output file exists and reads back whole (NIfTI voxels, TIFF pages, PNG pixels,
    DICOM elements; other files: not empty)."""
    p = Path(path)
    if not p.is_file():
        return False
    name = p.name.lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            np.asanyarray(nib.load(p).dataobj)  # every voxel: a cut gzip stream or short file raises
        elif name.endswith((".tif", ".tiff")):
            import tifffile

            tifffile.imread(p)
        elif name.endswith(".png"):
            from PIL import Image

            with Image.open(p) as im:
                im.load()  # raises "image file is truncated"
        elif name.endswith(".dcm"):
            import pydicom

            ds = pydicom.dcmread(p)
            if "PixelData" in ds:
                _ = ds.PixelData
                if len(ds.PixelData) == 0:
                    return False
        else:
            return p.stat().st_size > 0
    except Exception as exc:  # any reader's complaint means "not complete": the case runs again
        logger.info("%s is incomplete (%s: %s): the case runs again", p, type(exc).__name__, exc)
        return False
    return True


def outputs_complete(paths: Iterable[str | os.PathLike[str]]) -> bool:
    """Whether every one of a case's outputs is complete (:func:`output_complete`)."""
    return all(output_complete(p) for p in paths)


def same_grid(seg_path: str | os.PathLike[str], kind: str, files: dict[str, str], slices: Sequence[str]) -> bool:
    """Whether a written segmentation lies on its input's grid: for NIfTI input (``kind``
    ``"nifti"``/``"nifti4d"``, ``files`` the modality paths) the same spatial shape and affine as
    the first file's header; for TIFF (``slices``) one page per slice. DICOM studies are not
    checked (their grid is known only once the series are read). Only headers are read."""
    p = Path(seg_path)
    try:
        if kind in ("nifti", "nifti4d") and files:
            import nibabel as nib

            seg: Any = nib.load(p)
            ref: Any = nib.load(next(iter(files.values())))
            same = tuple(seg.shape[:3]) == tuple(ref.shape[:3]) and np.allclose(
                seg.affine, ref.affine, rtol=0, atol=1e-4
            )
        elif kind == "tiff" and slices:
            import tifffile

            with tifffile.TiffFile(p) as tif:
                same = len(tif.pages) == len(slices)
        else:
            return True
    except Exception as exc:  # an unreadable input is the case's own error, raised when it runs
        logger.info("could not compare %s with its input (%s): the case runs again", p, exc)
        return False
    if not same:
        logger.warning("%s is not on its input's grid (another scan's segmentation?): the case runs again", p)
    return bool(same)


def segmentation_labels(path: str | os.PathLike[str]) -> tuple[np.ndarray, tuple[float, ...] | None]:
    """A written segmentation's label map and voxel size in mm (``None`` for TIFF masks), for the
    report of a skipped case. TIFF pages (one per slice) come back with slices on the last axis,
    as they were written."""
    p = Path(path)
    if p.name.lower().endswith((".tif", ".tiff")):
        import tifffile

        data = np.asarray(tifffile.imread(p))
        return (data[..., None] if data.ndim == 2 else np.moveaxis(data, 0, -1)), None
    import nibabel as nib

    img: Any = nib.load(p)
    return np.asanyarray(img.dataobj), tuple(float(z) for z in img.header.get_zooms()[:3])
