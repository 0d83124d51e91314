"""Input forms and bad inputs: each is recognised, or refused with the file and the problem named."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import tifffile
from infer_helpers import brain_volume, marker_case, oblique_affine, write_nifti

from bts_monai.data.discovery import BRATS_MODALITIES
from bts_monai.data.synthetic import BRATS_LIKE_AFFINE, make_lgg_patient
from bts_monai.errors import BtsInputError
from bts_monai.inference.io import (
    LGG_CHANNELS,
    ModelInputs,
    StagedFiles,
    expand_inputs,
    explicit_case,
    load_case,
    resolve_input,
)

MODEL_3D = ModelInputs(tuple(BRATS_MODALITIES), 3)
MODEL_LGG = ModelInputs(LGG_CHANNELS, 2, tiff=True)


def _load(path, model=MODEL_3D, **kw):
    return load_case(resolve_input(path, model, **kw), model)


@pytest.fixture()
def case(tmp_path):
    return marker_case(tmp_path, BRATS_LIKE_AFFINE)


def _replace(case, modality, data, affine=BRATS_LIKE_AFFINE):
    path = case / f"{case.name}_{modality}.nii.gz"
    write_nifti(path, data, affine)
    return path


def test_case_folder_in_model_order(case):
    loaded = _load(case)
    assert loaded.case_id == case.name and loaded.kind == "nifti"
    assert loaded.image.shape == (4, 30, 34, 26) and loaded.image.dtype == np.float32
    t2 = np.asarray(nib.load(case / f"{case.name}_t2.nii.gz").dataobj)
    np.testing.assert_array_equal(loaded.image[3], t2)
    sub = ModelInputs(("t2", "flair"), 3)
    assert np.array_equal(load_case(resolve_input(case, sub), sub).image[0], t2)


def test_4d_channel_order_option(tmp_path, case):
    vols = {m: np.asarray(nib.load(case / f"{case.name}_{m}.nii.gz").dataobj) for m in BRATS_MODALITIES}
    order = ["t2", "t1", "flair", "t1ce"]
    path = write_nifti(tmp_path / "x.nii.gz", np.stack([vols[m] for m in order], -1), BRATS_LIKE_AFFINE)
    loaded = _load(path, channel_order=order)
    for c, m in enumerate(BRATS_MODALITIES):
        np.testing.assert_array_equal(loaded.image[c], vols[m])
    with pytest.raises(BtsInputError, match="3 channels"):
        _load(write_nifti(tmp_path / "y.nii.gz", np.stack([vols[m] for m in order[:3]], -1), BRATS_LIKE_AFFINE))


def test_tiff_slice_and_patient_folder(tmp_path):
    pdir = make_lgg_patient(tmp_path, "TCGA_XX_0001_20000101", n_slices=11, size=24)
    case = resolve_input(pdir, MODEL_LGG)
    assert case.kind == "tiff" and case.case_id == pdir.name
    assert [int(p.rsplit("_", 1)[1].split(".")[0]) for p in case.slices] == list(range(1, 12))  # 10 after 9
    loaded = load_case(case, MODEL_LGG)
    assert loaded.image.shape == (3, 24, 24, 11) and loaded.voxel_size is None
    one = load_case(resolve_input(pdir / f"{pdir.name}_5.tif", MODEL_LGG), MODEL_LGG)
    np.testing.assert_array_equal(one.image[..., 0], loaded.image[..., 4])
    with pytest.raises(BtsInputError, match="is a mask"):
        resolve_input(pdir / f"{pdir.name}_5_mask.tif", MODEL_LGG)


def test_folder_of_cases_skips_outputs_and_extras(tmp_path, case):
    root = case.parent
    (root / "data.csv").write_text("a,b\n")
    write_nifti(root / "other.nii.gz", np.ones((4, 4, 4, 4), np.float32), np.eye(4))
    write_nifti(root / "old_seg.nii.gz", np.ones((4, 4, 4), np.uint8), np.eye(4))
    nested = marker_case(root / "more" / "deeper", BRATS_LIKE_AFFINE, case_id="BraTS2021_00099")
    assert expand_inputs([root]) == [
        case,
        nested.parent.parent.parent / "more" / "deeper" / nested.name,
        root / "other.nii.gz",
    ]
    assert expand_inputs([case]) == [case]
    (tmp_path / "empty").mkdir()
    with pytest.raises(BtsInputError, match="no case found"):
        expand_inputs([tmp_path / "empty"])


def test_explicit_files(case):
    files = {m: case / f"{case.name}_{m}.nii.gz" for m in BRATS_MODALITIES}
    ci = explicit_case(files, MODEL_3D)
    assert ci.case_id == case.name and list(ci.files) == list(BRATS_MODALITIES)
    with pytest.raises(BtsInputError, match="missing modality: --t1ce"):
        explicit_case({k: v for k, v in files.items() if k != "t1ce"}, MODEL_3D)


# ---- bad input: one line naming the file and the problem -----------------------------------------
def test_shapes_differ(case):
    bad = _replace(case, "t1", np.ones((30, 34, 25), np.int16))
    with pytest.raises(BtsInputError, match=r"shape \(30, 34, 25\) differs") as e:
        _load(case)
    assert e.value.path == str(bad)


def test_affines_differ(case):
    bad = _replace(case, "t2", brain_volume(), oblique_affine())
    with pytest.raises(BtsInputError, match="not co-registered") as e:
        _load(case)
    assert e.value.path == str(bad)


def test_missing_modality(case):
    (case / f"{case.name}_t1ce.nii.gz").unlink()
    with pytest.raises(BtsInputError, match="no t1ce file") as e:
        _load(case)
    assert e.value.path == str(case)


@pytest.mark.parametrize("content", [b"", b"this is not a NIfTI file at all" * 20])
def test_not_nifti(tmp_path, content):
    path = tmp_path / "scan.nii.gz"
    path.write_bytes(content)
    with pytest.raises(BtsInputError, match="cannot read as NIfTI") as e:
        _load(path)
    assert e.value.path == str(path)
    other = tmp_path / "scan.txt"
    other.write_text("x")
    with pytest.raises(BtsInputError, match="not a NIfTI file"):
        _load(other)


def test_truncated_nifti(case):
    path = case / f"{case.name}_t1.nii.gz"
    path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(BtsInputError, match="corrupt or truncated|cannot read") as e:
        _load(case)
    assert e.value.path == str(path)


def test_2d_file_to_3d_model(tmp_path):
    tif = tmp_path / "slice_1.tif"
    tifffile.imwrite(tif, np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(BtsInputError, match="2D image file, but the checkpoint is a 3D model") as e:
        _load(tif)
    assert e.value.path == str(tif)
    flat = write_nifti(tmp_path / "flat.nii.gz", np.ones((30, 34, 1, 4), np.float32), np.eye(4))
    with pytest.raises(BtsInputError, match="is a 2D image"):
        _load(flat)
    with pytest.raises(BtsInputError, match="holds 2D TIFF slices"):
        _load(tmp_path)


def test_nifti_to_2d_lgg_model(case):
    with pytest.raises(BtsInputError, match="TIFF slices"):
        resolve_input(case, MODEL_LGG)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_inf(case, bad):
    vol = brain_volume()
    vol[3, 4, 5] = bad
    path = _replace(case, "t1ce", vol.astype(np.float32))
    with pytest.raises(BtsInputError, match="1 NaN or Inf voxels") as e:
        _load(case)
    assert e.value.path == str(path)


def test_all_zero(case):
    path = _replace(case, "t2", np.zeros((30, 34, 26), np.int16))
    with pytest.raises(BtsInputError, match="every voxel is zero") as e:
        _load(case)
    assert e.value.path == str(path)


def test_missing_path(tmp_path):
    with pytest.raises(BtsInputError, match="does not exist"):
        _load(tmp_path / "nope")


def test_staged_files_are_all_or_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with StagedFiles() as staged:
            staged.add(tmp_path / "a.txt", lambda p: p.write_text("a"))
            staged.add(tmp_path / "b.txt", lambda p: (_ for _ in ()).throw(RuntimeError("disk full")))
    assert list(tmp_path.iterdir()) == []
    with StagedFiles() as staged:
        staged.add(tmp_path / "a.txt", lambda p: p.write_text("a"))
        assert not (tmp_path / "a.txt").exists()  # only a temporary so far
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
