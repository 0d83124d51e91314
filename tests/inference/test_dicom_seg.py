"""DICOM SEG out (bts_monai.inference.dicom_seg): a real case given as a DICOM study is segmented
exactly as the same case given as NIfTI, and the DICOM SEG read back with highdicom holds that
segmentation voxel for voxel, on the reference series' frames, with the standard's codes."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from dicom_helpers import pydicom, real_case, small_case, study_of

from bts_monai.cli.infer import main
from bts_monai.inference.dicom import find_series, load_series
from bts_monai.inference.dicom_seg import SEGMENT_CODES, read_dicom_seg, write_dicom_seg
from bts_monai.inference.dicom_seg import main as seg_main
from bts_monai.inference.predictor import Predictor, default_model_path
from bts_monai.labels import get_scheme

pytestmark = pytest.mark.real_data

hd = pytest.importorskip("highdicom", reason="the dicom extra is not installed")


@pytest.fixture(scope="module")
def model() -> Path:
    path = default_model_path("brats")
    if path is None:
        pytest.skip("the packaged default BraTS model is not installed")
    return path


def _reference_series(study: Path, seg: pydicom.Dataset):
    """The source series a SEG references, read (headers in slice order)."""
    (ref,) = seg.ReferencedSeriesSequence
    (series,) = [s for s in find_series(study) if s.uid == ref.SeriesInstanceUID]
    return load_series(series)


@pytest.mark.slow
def test_real_case_round_trip(real_data, model, tmp_path):
    """The whole real case (240x240x155, four series of shuffled files): DICOM -> segmentation ->
    DICOM SEG -> highdicom equals the NIfTI path's segmentation of the same case, voxel for voxel;
    the NIfTI output and the report are those of the NIfTI path, plus the series used."""
    case = real_case(real_data)
    study = study_of(case, tmp_path / "study")
    predictor = Predictor.from_checkpoint(model)
    from_nifti = predictor.predict(case)
    from_dicom = predictor.predict(study)
    assert {1, 2, 4} <= set(np.unique(from_nifti.labels).tolist())  # the model finds all three labels
    np.testing.assert_array_equal(from_dicom.labels, from_nifti.labels)
    out = tmp_path / "out"
    out.mkdir()
    written = from_dicom.save(out / "seg.nii.gz", report=out / "r.json", dicom_seg=out / "seg.dcm")
    assert sorted(p.name for p in written) == ["r.json", "seg.dcm", "seg.nii.gz"]
    nifti_out = nib.load(out / "seg.nii.gz")
    np.testing.assert_array_equal(np.asarray(nifti_out.dataobj), from_nifti.labels)
    np.testing.assert_allclose(nifti_out.affine, nib.load(next(case.glob("*_t1ce.nii.gz"))).affine, atol=1e-5)

    ds = pydicom.dcmread(out / "seg.dcm")
    assert ds.Modality == "SEG" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    source = _reference_series(study, ds)
    assert source.series.description == "AX T1 POST GD"  # the reference (t1ce) series
    scheme = get_scheme("brats2021")
    back = read_dicom_seg(out / "seg.dcm", source.headers, scheme)
    np.testing.assert_array_equal(back, from_nifti.labels)
    algorithm = ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == (
        predictor.config["model_name"],
        predictor.config["model_version"],
    )
    report = json.loads((out / "r.json").read_text())
    assert report["regions"] == from_nifti.report()["regions"]
    assert report["dicom"]["reference_series"] == source.series.uid
    assert report["dicom"]["registered"] is False


def test_oblique_study_through_bts_infer(real_data, model, tmp_path):
    """bts-infer on an oblique study (2 mm brain box, rotated grid): its NIfTI output is the NIfTI
    path's; every SEG frame lies on its source slice (position, orientation, spacing, frame of
    reference) and the segments carry CID 7168 codes and the model's identity."""
    nifti = small_case(real_case(real_data), tmp_path / "nifti", step=2, oblique=True)
    study = study_of(nifti, tmp_path / "study", shuffle_seed=3)
    out = tmp_path / "out"
    common = [str(model), "-q"]
    assert main([str(nifti), "--ckpt", *common, "-o", str(out / "nifti_seg.nii.gz")]) == 0
    assert main([str(study), "--ckpt", *common, "-o", str(out / "seg.nii.gz"), "--dicom-seg", str(out / "s.dcm")]) == 0
    want = np.asarray(nib.load(out / "nifti_seg.nii.gz").dataobj)
    assert {1, 2, 4} <= set(np.unique(want).tolist())
    np.testing.assert_array_equal(np.asarray(nib.load(out / "seg.nii.gz").dataobj), want)

    ds = pydicom.dcmread(out / "s.dcm")
    source = _reference_series(study, ds)
    np.testing.assert_array_equal(read_dicom_seg(out / "s.dcm", source.headers, get_scheme("brats2021")), want)
    by_uid = {str(h.SOPInstanceUID): h for h in source.headers}
    assert (ds.Rows, ds.Columns) == (source.headers[0].Rows, source.headers[0].Columns)
    assert ds.FrameOfReferenceUID == source.headers[0].FrameOfReferenceUID
    shared = ds.SharedFunctionalGroupsSequence[0]
    iop = [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient]
    np.testing.assert_allclose(iop, [float(v) for v in source.headers[0].ImageOrientationPatient], atol=1e-6)
    np.testing.assert_allclose(
        [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing],
        [float(v) for v in source.headers[0].PixelSpacing],
        atol=1e-6,
    )
    assert abs(iop[0]) < 0.99  # the grid is oblique
    frames = ds.PerFrameFunctionalGroupsSequence
    assert len(frames) == int(ds.NumberOfFrames) > 0
    for frame in frames:
        (src,) = frame.DerivationImageSequence[0].SourceImageSequence
        header = by_uid[src.ReferencedSOPInstanceUID]
        np.testing.assert_allclose(
            [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient],
            [float(v) for v in header.ImagePositionPatient],
            atol=1e-4,
        )
    # The inspection command says the same: equal to the NIfTI path's segmentation, exit 0.
    assert seg_main([str(out / "s.dcm"), str(study), "--compare", str(out / "nifti_seg.nii.gz")]) == 0
    codes = {s.SegmentLabel: s.SegmentedPropertyTypeCodeSequence[0] for s in ds.SegmentSequence}
    assert [(c.CodeValue, c.CodingSchemeDesignator) for c in codes.values()] == [
        ("6574001", "SCT"),
        ("79654002", "SCT"),
        ("C113842", "NCIt"),
    ]


def test_segment_codes_are_the_standards():
    """The codes match DICOM's CID 7168 (Brain Lesion Segmentation Type With Necrosis) as pydicom
    ships it, and every tumour label of the BraTS schemes has one."""
    from pydicom.sr.codedict import codes

    cid = codes.cid7168
    standard = {c.value: (c.scheme_designator, c.meaning) for c in (cid.Necrosis, cid.Edema, cid.EnhancingLesion)}
    for label, (_, (value, scheme, meaning), _) in SEGMENT_CODES.items():
        assert standard[value] == (scheme, meaning), label
    for name in ("brats2021", "brats2023"):
        s = get_scheme(name)
        assert {s.labels[v] for v in s.foreground_labels} <= set(SEGMENT_CODES)


def test_empty_segmentation_is_a_valid_seg(real_data, tmp_path):
    """No tumour found: the SEG is still written (all frames, all empty) and reads back as zeros."""
    nifti = small_case(real_case(real_data), tmp_path / "nifti", step=4)
    study = study_of(nifti, tmp_path / "study")
    (series,) = [s for s in find_series(study) if s.description == "AX T1 POST GD"]
    vol = load_series(series)
    scheme = get_scheme("brats2021")
    write_dicom_seg(tmp_path / "empty.dcm", np.zeros(vol.shape, np.uint8), vol.headers, scheme)
    back = read_dicom_seg(tmp_path / "empty.dcm", vol.headers, scheme)
    assert back.shape == vol.shape and not back.any()
