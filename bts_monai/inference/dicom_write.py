"""NIfTI -> DICOM: write a volume as a single-frame MR series, and a BraTS case as a DICOM study.

The inverse of :func:`bts_monai.inference.dicom.load_series`, for tests, demos and trying the DICOM
path on a real case (``python -m bts_monai.inference.dicom_write CASE_DIR OUT_DIR``). The geometry
is exact: for the RAS affine ``A`` the LPS matrix is ``diag(-1, -1, 1) @ A``, slice ``k`` starts at
its column ``3`` plus ``k`` times its column ``2``, the direction cosines are its normalised columns
``0`` (along a row) and ``1`` (down a column), ``PixelSpacing`` their lengths (row spacing first).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MR_IMAGE_STORAGE", "SERIES_DESCRIPTIONS", "write_series", "write_study", "series_geometry"]

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"

SERIES_DESCRIPTIONS = {"flair": "AX T2 FLAIR", "t1": "AX T1 PRE", "t1ce": "AX T1 POST GD", "t2": "AX T2 FSE"}
"""What each BraTS modality is called in the series :func:`write_study` writes (typical scanner names)."""


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters (DICOM ``DS``) that keeps as many digits as fit."""
    for digits in range(16, 0, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{value:.0f}"


def series_geometry(affine: np.ndarray) -> tuple[list[float], list[float], np.ndarray, np.ndarray]:
    """``(ImageOrientationPatient, PixelSpacing, first slice origin (LPS), slice step (LPS))`` of
    a RAS affine."""
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)
    col_step, row_step = lps[:3, 0], lps[:3, 1]
    dx, dy = float(np.linalg.norm(col_step)), float(np.linalg.norm(row_step))
    iop = [*(col_step / dx), *(row_step / dy)]
    return [float(v) for v in iop], [dy, dx], lps[:3, 3].copy(), lps[:3, 2].copy()


def write_series(
    volume: np.ndarray,
    affine: np.ndarray,
    folder: str | os.PathLike[str],
    *,
    description: str,
    series_number: int = 1,
    study: dict[str, Any] | None = None,
    slope: float = 1.0,
    intercept: float = 0.0,
    shuffle_seed: int | None = None,
    series_uid: str | None = None,
) -> list[Path]:
    """Write ``volume`` ``(columns, rows, slices)`` with its RAS ``affine`` as one MR series.

    Args:
        volume: voxel values (after rescale); stored as ``(value - intercept) / slope`` in uint16
            or int16, which must be exact.
        affine: voxel -> RAS (mm).
        folder: where the files go (created).
        description: ``SeriesDescription`` (and ``ProtocolName``).
        series_number: ``SeriesNumber``.
        study: shared study attributes (from :func:`new_study`); a new study when ``None``.
        slope: ``RescaleSlope``.
        intercept: ``RescaleIntercept``.
        shuffle_seed: file names and ``InstanceNumber`` in a random order (readers must sort by
            position); ``None`` numbers them in slice order.
        series_uid: the ``SeriesInstanceUID`` (default: a new one).

    Returns:
        The files, in slice order.

    Raises:
        ValueError: values that the stored integers cannot hold exactly.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

    study = study or new_study()
    vol = np.asarray(volume, dtype=np.float64)
    stored = (vol - intercept) / slope
    rounded = np.rint(stored)
    if not np.allclose(stored, rounded, atol=1e-6):
        raise ValueError("values are not integers after removing the rescale slope and intercept")
    signed = rounded.min() < 0
    dtype = np.int16 if signed else np.uint16
    info = np.iinfo(dtype)
    if rounded.min() < info.min or rounded.max() > info.max:
        raise ValueError(f"stored values {rounded.min()}..{rounded.max()} do not fit {dtype.__name__}")
    pixels = rounded.astype(dtype)
    iop, spacing, origin, step = series_geometry(affine)
    n = vol.shape[2]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    order = np.arange(n)
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(n)
    out: list[Path] = []
    for k in range(n):
        sop_uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MR_IMAGE_STORAGE
        ds.SOPInstanceUID = sop_uid
        for key, value in study.items():
            setattr(ds, key, value)
        ds.Modality = "MR"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = description
        ds.ProtocolName = description
        ds.InstanceNumber = int(order[k]) + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
        ds.ImagePositionPatient = [_ds(v) for v in origin + k * step]
        ds.ImageOrientationPatient = [_ds(v) for v in iop]
        ds.PixelSpacing = [_ds(v) for v in spacing]
        ds.SliceThickness = _ds(float(np.linalg.norm(step)))
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(vol.shape[1]), int(vol.shape[0])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1 if signed else 0
        ds.RescaleSlope, ds.RescaleIntercept = _ds(slope), _ds(intercept)
        ds.PixelData = np.ascontiguousarray(pixels[:, :, k].T).tobytes()
        name = f"{generate_uid(prefix=None)[-12:]}.dcm" if shuffle_seed is not None else f"IM{k + 1:05d}.dcm"
        path = folder / name
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


def new_study(patient_id: str = "BTS-TEST", patient_name: str = "Test^Phantom") -> dict[str, Any]:
    """Attributes shared by every series of one new study (patient, study, frame of reference)."""
    from pydicom.uid import generate_uid

    return {
        "PatientID": patient_id,
        "PatientName": patient_name,
        "PatientBirthDate": "",
        "PatientSex": "O",
        "StudyInstanceUID": generate_uid(),
        "StudyID": "1",
        "StudyDate": "20260101",
        "StudyTime": "120000",
        "AccessionNumber": "",
        "ReferringPhysicianName": "",
        "FrameOfReferenceUID": generate_uid(),
        "Manufacturer": "bts_monai",
    }


def write_study(
    case_folder: str | os.PathLike[str],
    out: str | os.PathLike[str],
    modalities: Sequence[str] = ("flair", "t1", "t1ce", "t2"),
    shuffle_seed: int | None = 0,
) -> dict[str, list[Path]]:
    """Write a BraTS case folder (``<case>_<modality>.nii.gz``) as a DICOM study: one series per
    modality in ``out/<modality>/``, named as scanners name them (:data:`SERIES_DESCRIPTIONS`)."""
    import nibabel as nib

    case_folder, out = Path(case_folder), Path(out)
    study = new_study(patient_id=case_folder.name)
    written: dict[str, list[Path]] = {}
    for number, mod in enumerate(modalities, start=1):
        hits = sorted(case_folder.glob(f"*_{mod}.nii*"))
        if not hits:
            raise FileNotFoundError(f"{case_folder}: no *_{mod}.nii.gz")
        img = nib.load(hits[0])
        seed = None if shuffle_seed is None else shuffle_seed + number
        written[mod] = write_series(
            np.asarray(img.dataobj),
            img.affine,
            out / mod,
            description=SERIES_DESCRIPTIONS.get(mod, mod.upper()),
            series_number=number,
            study=study,
            shuffle_seed=seed,
        )
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bts_monai.inference.dicom_write CASE_DIR OUT_DIR``: a BraTS case as a DICOM study."""
    p = argparse.ArgumentParser(
        description="Write a BraTS NIfTI case folder as a DICOM study (one series per modality)."
    )
    p.add_argument("case", help="BraTS case folder (<case>_{flair,t1,t1ce,t2}.nii.gz)")
    p.add_argument("out", help="output study folder")
    args = p.parse_args(argv)
    written = write_study(args.case, args.out)
    for mod, files in written.items():
        print(f"{mod}: {len(files)} files in {Path(args.out) / mod}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
