"""Helpers of the DICOM tests: small real cases as NIfTI folders, DICOM studies made from them,
and the edits that break a study in one known way."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bts_monai.data.discovery import BRATS_MODALITIES

pydicom = pytest.importorskip("pydicom", reason="the dicom extra (pydicom, highdicom, SimpleITK) is not installed")

CASE = "Brats18_2013_11_1"
"""The real BraTS 2018 case the fixtures are made from (a large tumour with all three labels)."""


def real_case(real_data: Path) -> Path:
    """The folder of :data:`CASE` under ``$BTS_REAL_DATA``."""
    return real_data / "brats2018" / CASE


def rotation(degrees: tuple[float, float, float]) -> np.ndarray:
    """``Rz @ Ry @ Rx`` for rotations about x, y, z in degrees."""
    ax, ay, az = np.radians(degrees)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def rigid(degrees: tuple[float, float, float], shift_mm: tuple[float, float, float], centre: np.ndarray) -> np.ndarray:
    """A 4x4 rigid transform rotating about ``centre`` (mm) and then shifting."""
    out = np.eye(4)
    out[:3, :3] = rotation(degrees)
    out[:3, 3] = centre - out[:3, :3] @ centre + np.asarray(shift_mm)
    return out


def small_case(case: Path, dest: Path, step: int = 2, oblique: bool = False, margin: int = 4) -> Path:
    """The real case's brain box (plus ``margin`` voxels of background), every ``step``-th voxel,
    as a BraTS case folder ``dest/<case>`` of int16 NIfTI (labels too). ``oblique`` turns its
    grid by 20, -12 and 8 degrees (the voxels stay as they are: the scanner's oblique slices)."""
    imgs = {m: nib.load(case / f"{case.name}_{m}.nii.gz") for m in (*BRATS_MODALITIES, "seg")}
    data = {m: np.asarray(img.dataobj) for m, img in imgs.items()}
    brain = np.any([data[m] != 0 for m in BRATS_MODALITIES], axis=0)
    idx = np.argwhere(brain)
    lo = np.maximum(idx.min(0) - margin * step, 0)
    hi = np.minimum(idx.max(0) + margin * step + 1, brain.shape)
    crop = tuple(slice(int(a), int(b), step) for a, b in zip(lo, hi))
    affine = imgs["flair"].affine.copy()
    affine[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    affine[:3, :3] = affine[:3, :3] * step
    if oblique:
        centre = affine[:3, :3] @ (np.array([len(range(*s.indices(n))) for s, n in zip(crop, brain.shape)]) / 2)
        affine = rigid((20.0, -12.0, 8.0), (3.5, -2.25, 1.0), centre + affine[:3, 3]) @ affine
    out = dest / case.name
    out.mkdir(parents=True)
    for m, arr in data.items():
        img = nib.Nifti1Image(arr[crop].astype(np.int16 if m != "seg" else np.uint8), affine)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        nib.save(img, out / f"{case.name}_{m}.nii.gz")
    return out


def study_of(case_folder: Path, dest: Path, shuffle_seed: int | None = 0) -> Path:
    """A DICOM study (one series per modality, shuffled file names) of a BraTS case folder."""
    from bts_monai.inference.dicom_write import write_study

    write_study(case_folder, dest, shuffle_seed=shuffle_seed)
    return dest


def nifti_labels(case_folder: Path) -> np.ndarray:
    """The case's ground-truth labels."""
    return np.asarray(nib.load(next(case_folder.glob("*_seg.nii.gz"))).dataobj)


def copy_study(study: Path, dest: Path) -> Path:
    """A copy of a study to break."""
    shutil.copytree(study, dest)
    return dest


def series_files(study: Path, modality: str) -> list[tuple[float, Path]]:
    """``(position along the slice normal, file)`` of a series of :func:`study_of`, in slice order."""
    out = []
    for f in sorted((study / modality).iterdir()):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        normal = np.cross(iop[:3], iop[3:])
        out.append((float(np.array([float(v) for v in ds.ImagePositionPatient]) @ normal), f))
    return sorted(out)


def edit(path: Path, **attrs) -> None:
    """Set attributes of one DICOM file in place."""
    ds = pydicom.dcmread(path)
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.save_as(path, enforce_file_format=True)
