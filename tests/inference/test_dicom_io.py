"""DICOM in (bts_monai.inference.dicom): a real case written as a DICOM study reads back as the
NIfTI case, voxel for voxel; series are matched by description or by the user's --series; each
kind of bad study is one line naming the series and the problem, exit 2, nothing written."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from dicom_helpers import copy_study, edit, pydicom, real_case, series_files, small_case, study_of

from bts_monai.cli.infer import main
from bts_monai.data.discovery import BRATS_MODALITIES
from bts_monai.errors import BtsInputError
from bts_monai.inference.dicom import DicomOptions, find_series, load_study, parse_series_overrides

pytestmark = pytest.mark.real_data


@pytest.fixture(scope="module")
def cases(real_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The real case's brain box at 4 mm (axial) and at 2 mm on an oblique grid, as NIfTI
    folders and as DICOM studies with shuffled file names."""
    root = tmp_path_factory.mktemp("dicom_io")
    tiny = small_case(real_case(real_data), root / "tiny", step=4)
    oblique = small_case(real_case(real_data), root / "oblique", step=2, oblique=True)
    return {
        "tiny": tiny,
        "tiny_study": study_of(tiny, root / "tiny_study"),
        "oblique": oblique,
        "oblique_study": study_of(oblique, root / "oblique_study", shuffle_seed=7),
    }


@pytest.mark.parametrize("which", ["tiny", "oblique"])
def test_study_reads_as_the_nifti_case(cases, which):
    """Slices come in position order (file names and InstanceNumber are shuffled), voxels and the
    LPS -> RAS affine are the NIfTI case's, on an axial and on an oblique grid."""
    study = load_study(cases[f"{which}_study"], BRATS_MODALITIES)
    in_slice_order = [f for _, f in series_files(cases[f"{which}_study"], "flair")]
    assert [f.name for f in in_slice_order] != sorted(f.name for f in in_slice_order)
    numbers = [int(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber) for f in in_slice_order]
    assert numbers != sorted(numbers)
    for c, m in enumerate(BRATS_MODALITIES):
        img = nib.load(next(cases[which].glob(f"*_{m}.nii.gz")))
        np.testing.assert_array_equal(study.image[c], np.asarray(img.dataobj))
        np.testing.assert_allclose(study.affine, img.affine, atol=1e-6)
    assert study.reference_modality == "t1ce"
    assert study.report()["series"]["t1ce"]["description"] == "AX T1 POST GD"
    assert not study.registrations


def test_series_overrides_and_ambiguous_names(cases, tmp_path):
    """Series whose names say nothing are chosen with --series (by UID or description); two
    FLAIR-looking series are refused with a hint."""
    study = copy_study(cases["tiny_study"], tmp_path / "study")
    for i, m in enumerate(BRATS_MODALITIES):
        for f in (study / m).iterdir():
            edit(f, SeriesDescription=f"SEQ {i}", ProtocolName=f"SEQ {i}")
    with pytest.raises(BtsInputError, match="no flair series found.*--series flair="):
        load_study(study, BRATS_MODALITIES)
    uids = {s.description: s.uid for s in find_series(study)}
    overrides = parse_series_overrides(
        ["flair=SEQ 0", f"t1={uids['SEQ 1']}", "t1ce=seq 2", f"t2={uids['SEQ 3']}"], BRATS_MODALITIES
    )
    got = load_study(study, BRATS_MODALITIES, DicomOptions(series=overrides))
    for c, m in enumerate(BRATS_MODALITIES):
        want = np.asarray(nib.load(next(cases["tiny"].glob(f"*_{m}.nii.gz"))).dataobj)
        np.testing.assert_array_equal(got.image[c], want)
    with pytest.raises(BtsInputError, match="unknown modality 'adc'"):
        parse_series_overrides(["adc=SEQ 0"], BRATS_MODALITIES)
    for f in (study / "t2").iterdir():
        edit(f, SeriesDescription="AX FLAIR 2", ProtocolName="AX FLAIR 2")
    for f in (study / "flair").iterdir():
        edit(f, SeriesDescription="AX FLAIR", ProtocolName="AX FLAIR")
    with pytest.raises(BtsInputError, match="2 series look like flair.*--series flair="):
        load_study(study, ["flair"])


def test_unstripped_study_warns_in_one_line(cases, tmp_path, caplog):
    """A study whose background is not zero (a head, not a skull-stripped brain) is read, with
    one one-line warning that says why results will be poor."""
    study = copy_study(cases["tiny_study"], tmp_path / "study")
    for m in BRATS_MODALITIES:
        for f in (study / m).iterdir():
            ds = pydicom.dcmread(f)
            ds.PixelData = (ds.pixel_array + 40).astype(ds.pixel_array.dtype).tobytes()
            ds.save_as(f)
    with caplog.at_level(logging.WARNING):
        load_study(study, BRATS_MODALITIES)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert "skull-stripped" in warnings[0] and str(study) in warnings[0]


# ---- bad studies: bts-infer refuses them in one line, exit 2, nothing written ----------------------
def _refused(study: Path, ckpt: Path, tmp_path: Path, one_line_error, *needles: str) -> str:
    out = tmp_path / "out"
    out.mkdir()
    argv = [str(study), "--ckpt", str(ckpt), "--backend", "torch", "-q", "-o", str(out / "seg.nii.gz")]
    argv += ["--dicom-seg", str(out / "seg.dcm"), "--report", str(out / "r.json")]
    assert main(argv) == 2
    assert list(out.iterdir()) == []
    return one_line_error(*needles)


def _series_name(study: Path, modality: str) -> str:
    (s,) = [s for s in find_series(study / modality)]
    return s.name


def test_non_dicom_folder(tmp_path, tiny_ckpt, one_line_error):
    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "IM0001.dcm").write_bytes(b"not DICOM at all" * 20)
    (folder / "notes.txt").write_text("scanner export")
    _refused(folder, tiny_ckpt, tmp_path, one_line_error, str(folder), "DICOM files")


def test_missing_slice(cases, tmp_path, tiny_ckpt, one_line_error):
    study = copy_study(cases["tiny_study"], tmp_path / "study")
    slices = series_files(study, "flair")
    slices[len(slices) // 2][1].unlink()
    _refused(study, tiny_ckpt, tmp_path, one_line_error, _series_name(study, "flair"), "1 slice(s) missing")


def test_duplicate_slice(cases, tmp_path, tiny_ckpt, one_line_error):
    study = copy_study(cases["tiny_study"], tmp_path / "study")
    _, f = series_files(study, "t2")[3]
    shutil.copy(f, study / "t2" / "copy.dcm")
    edit(study / "t2" / "copy.dcm", SOPInstanceUID=pydicom.uid.generate_uid())
    _refused(study, tiny_ckpt, tmp_path, one_line_error, _series_name(study, "t2"), "duplicate slices")


def test_inconsistent_slice_spacing(cases, tmp_path, tiny_ckpt, one_line_error):
    study = copy_study(cases["tiny_study"], tmp_path / "study")
    slices = series_files(study, "t1")
    for _, f in slices[len(slices) // 2 :]:  # every later slice 1 mm further along the normal
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        ipp = np.array([float(v) for v in ds.ImagePositionPatient]) + np.cross(iop[:3], iop[3:])
        edit(f, ImagePositionPatient=[f"{v:.6f}" for v in ipp])
    _refused(study, tiny_ckpt, tmp_path, one_line_error, _series_name(study, "t1"), "inconsistent slice spacing")


def test_undecodable_compressed_transfer_syntax(cases, tmp_path, tiny_ckpt, one_line_error):
    """JPEG Lossless (process 14) needs pylibjpeg or GDCM, neither of which the extra installs;
    the frame is not valid JPEG either, so no decoder could read it."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLosslessSV1

    study = copy_study(cases["tiny_study"], tmp_path / "study")
    _, f = series_files(study, "t1ce")[2]
    ds = pydicom.dcmread(f)
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3" + bytes(64) + b"\xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.save_as(f, enforce_file_format=True)
    _refused(study, tiny_ckpt, tmp_path, one_line_error, _series_name(study, "t1ce"), "cannot decode", "JPEG Lossless")


def test_localizer_mixed_into_a_series(cases, tmp_path, tiny_ckpt, one_line_error):
    study = copy_study(cases["tiny_study"], tmp_path / "study")
    _, f = series_files(study, "flair")[0]
    shutil.copy(f, study / "flair" / "loc.dcm")
    edit(
        study / "flair" / "loc.dcm",
        SOPInstanceUID=pydicom.uid.generate_uid(),
        ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"],
        ImageOrientationPatient=["0", "1", "0", "0", "0", "-1"],
    )
    _refused(study, tiny_ckpt, tmp_path, one_line_error, _series_name(study, "flair"), "localizer", "loc.dcm")


def test_missing_sequence(cases, tmp_path, tiny_ckpt, one_line_error):
    study = copy_study(cases["tiny_study"], tmp_path / "study")
    shutil.rmtree(study / "t2")
    _refused(study, tiny_ckpt, tmp_path, one_line_error, "no t2 series found", "--series t2=")


# ---- a zipped study uploaded to bts-serve ----------------------------------------------------------
def _zip_study(study: Path, path: Path, extra: dict[str, bytes] | None = None) -> bytes:
    """The study as a zip archive (its folders kept), plus ``extra`` members."""
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(study.rglob("*")):
            if f.is_file():
                zf.write(f, f"{study.name}/{f.relative_to(study)}")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path.read_bytes()


def _post(client, name: str, data: bytes):
    boundary = "dicomzipboundary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
        "Content-Type: application/zip\r\n\r\n"
    ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return client.post("/api/jobs", content=body, headers={"content-type": f"multipart/form-data; boundary={boundary}"})


def test_zipped_study_on_bts_serve(cases, tmp_path, tiny_ckpt):
    """A zip of a study dropped on bts-serve's page is segmented like the study folder; member
    names never become paths (``../``, macOS ``__MACOSX/`` junk); a broken study in a zip is
    refused in one line naming the zip and the series."""
    pytest.importorskip("fastapi")
    import time

    from fastapi.testclient import TestClient

    from bts_monai.inference.predictor import Predictor
    from bts_monai.serve.app import create_app

    predictor = Predictor.from_checkpoint(tiny_ckpt, device="cpu", backend="torch")
    junk = {"__MACOSX/tiny_study/._IM1.dcm": b"\0" * 200, "../../escaped.dcm": b"not DICOM" * 30}
    good = _zip_study(cases["tiny_study"], tmp_path / "study.zip", junk)
    broken = copy_study(cases["tiny_study"], tmp_path / "broken")
    series_files(broken, "flair")[5][1].unlink()
    bad = _zip_study(broken, tmp_path / "broken.zip")
    work = tmp_path / "work"
    with TestClient(create_app(predictor, work)) as client:
        resp = _post(client, "study.zip", good)
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["id"]
        for _ in range(600):
            job = client.get(f"/api/jobs/{job_id}").json()
            if job["state"] in ("done", "failed"):
                break
            time.sleep(0.1)
        assert job["state"] == "done", job
        refused = _post(client, "broken.zip", bad)
    assert refused.status_code == 422
    message = refused.json()["error"]
    assert "broken.zip" in message and "AX T2 FLAIR" in message and "1 slice(s) missing" in message
    assert "\n" not in message and str(work) not in message
    assert not list(tmp_path.rglob("escaped.dcm")) and not (tmp_path.parent / "escaped.dcm").exists()
