"""Co-registration of DICOM series (bts_monai.inference.registration): a series on its own grid is
refused without --register, naming both series; with it, SimpleITK recovers a known rigid motion
of the real T1 against the T1ce to within a millimetre, and the report records the transform."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from dicom_helpers import pydicom, real_case, rigid, small_case, study_of
from scipy import ndimage

from bts_monai.cli.infer import main
from bts_monai.data.discovery import BRATS_MODALITIES
from bts_monai.errors import BtsInputError
from bts_monai.inference.dicom import DicomOptions, find_series, load_study
from bts_monai.inference.dicom_write import new_study, write_series
from bts_monai.inference.predictor import default_model_path

pytestmark = pytest.mark.real_data

pytest.importorskip("SimpleITK", reason="the dicom extra is not installed")

MOTION = ((5.0, -4.0, 6.0), (6.0, -5.0, 4.0))
"""The patient's motion between the T1ce and the T1 acquisitions: degrees about x, y, z (about
the brain's centre), then mm along x, y, z (RAS)."""


@pytest.fixture(scope="module")
def moved(real_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A study of the real case (2 mm brain box) whose T1 series was acquired after the patient
    moved (:data:`MOTION`), on a grid of its own (2.4 mm voxels, another origin and extent)."""
    root = tmp_path_factory.mktemp("dicom_reg")
    nifti = small_case(real_case(real_data), root / "nifti", step=2)
    study = study_of(nifti, root / "study")
    ref = nib.load(next(nifti.glob("*_t1ce.nii.gz")))
    t1 = np.asarray(nib.load(next(nifti.glob("*_t1.nii.gz"))).dataobj).astype(np.float32)
    brain = np.argwhere(t1 > 0)
    points = ref.affine[:3, :3] @ brain.T + ref.affine[:3, 3:4]  # brain voxel centres (RAS mm)
    motion = rigid(*MOTION, points.mean(axis=1))
    grid = ref.affine.copy()
    grid[:3, :3] *= 1.2
    grid[:3, 3] += [5.0, -3.0, 2.0]
    shape = tuple(int(s / 1.2) + 4 for s in t1.shape)
    # The moving series shows at world point q what the T1ce's grid holds at motion^-1 q.
    to_t1 = np.linalg.inv(ref.affine) @ np.linalg.inv(motion) @ grid
    ijk = np.indices(shape).reshape(3, -1)
    values = ndimage.map_coordinates(t1, to_t1[:3, :3] @ ijk + to_t1[:3, 3:4], order=1, cval=0.0)
    header = pydicom.dcmread(next((study / "t1ce").iterdir()), stop_before_pixels=True)
    shared = {k: header.get(k) for k in new_study()}
    shutil.rmtree(study / "t1")
    volume = np.rint(values).reshape(shape)
    write_series(volume, grid, study / "t1", description="AX T1 PRE", series_number=2, study=shared, shuffle_seed=5)
    return {"nifti": nifti, "study": study, "motion": motion, "points": points}


def _displacement_mm(found: np.ndarray, true: np.ndarray, points: np.ndarray) -> np.ndarray:
    """How far apart the two transforms put each point."""
    d = found - true
    return np.linalg.norm(d[:3, :3] @ points + d[:3, 3:4], axis=0)


def test_other_grid_without_register_names_both_series(moved):
    names = {s.description: s.name for s in find_series(moved["study"])}
    with pytest.raises(BtsInputError) as err:
        load_study(moved["study"], BRATS_MODALITIES)
    message = str(err.value)
    assert names["AX T1 PRE"] in message and names["AX T1 POST GD"] in message
    assert "different voxel grids" in message and "--register" in message and "\n" not in message
    with pytest.raises(BtsInputError, match="--register-to adc: the model reads only"):
        load_study(moved["study"], BRATS_MODALITIES, DicomOptions(register=True, reference="adc"))


def test_register_recovers_a_known_motion(moved, tmp_path):
    """bts-infer --register: the report's transform for T1 is the motion to within 1 mm over
    the brain; the resampled T1 matches the original; the other series pass through."""
    model = default_model_path("brats")
    if model is None:
        pytest.skip("the packaged default BraTS model is not installed")
    out = tmp_path / "out"
    argv = [str(moved["study"]), "--ckpt", str(model), "-q", "--register", "-o", str(out / "seg.nii.gz")]
    assert main([*argv, "--report", str(out / "r.json")]) == 0
    report = json.loads((out / "r.json").read_text())["dicom"]
    assert report["registered"] is True and set(report["registrations"]) == {"t1"}
    record = report["registrations"]["t1"]
    t1_uid = [s.uid for s in find_series(moved["study"]) if s.description == "AX T1 PRE"]
    assert record["series_instance_uid"] == t1_uid[0]
    error = _displacement_mm(np.array(record["matrix_ras"]), moved["motion"], moved["points"])
    assert error.mean() < 1.0 and error.max() < 1.5, (error.mean(), error.max())
    assert np.linalg.norm(record["translation_mm"]) > 5  # a real motion was found, not the identity
    # The T1 resampled onto the T1ce's grid is the original one again: the tumour the model finds
    # is the one it finds in the unmoved NIfTI case.
    assert main([str(moved["nifti"]), "--ckpt", str(model), "-q", "-o", str(out / "unmoved.nii.gz")]) == 0
    registered = np.asarray(nib.load(out / "seg.nii.gz").dataobj) > 0
    unmoved = np.asarray(nib.load(out / "unmoved.nii.gz").dataobj) > 0
    assert unmoved.sum() > 1000
    assert 2 * (registered & unmoved).sum() / (registered.sum() + unmoved.sum()) > 0.95
