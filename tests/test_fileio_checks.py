"""Issue 20 items 7, 9, 13: one atomic writer (temporary file, fsync, rename; all or nothing),
input headers checked before anything is allocated, one brain-mask rule."""

from __future__ import annotations

import errno
import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bts_monai import fileio
from bts_monai.data.checks import load_nifti
from bts_monai.data.transforms import brain_mask, deterministic_transforms
from bts_monai.errors import BtsInputError


def test_atomic_write_full_disk_leaves_nothing(tmp_path):
    def full(tmp):
        Path(tmp).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(BtsInputError, match="disk is full"):
        fileio.atomic_write(tmp_path / "out.bin", full)
    assert list(tmp_path.iterdir()) == []


def test_parent_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(BtsInputError, match="is a file, not a folder"):
        fileio.write_text(tmp_path / "f" / "out.json", "{}")
    with pytest.raises(BtsInputError, match="is a file, not a folder"):
        fileio.check_writable(tmp_path / "f" / "sub" / "out.json")


def test_check_writable_read_only(tmp_path, monkeypatch):
    real_open = os.open

    def refuse(path, flags, *a):
        if flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, *a)

    monkeypatch.setattr(fileio.os, "open", refuse)
    with pytest.raises(BtsInputError, match="read-only"):
        fileio.check_writable(tmp_path / "out.nii.gz")


def test_staged_commit_is_all_or_nothing(tmp_path, monkeypatch):
    old = tmp_path / "a.txt"
    old.write_text("old")
    staged = fileio.StagedFiles()
    staged.add(old, lambda t: t.write_text("new"))
    staged.add(tmp_path / "b.txt", lambda t: t.write_text("b"))
    real, calls = os.replace, []

    def second_fails(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(errno.EIO, "I/O error")
        return real(src, dst)

    monkeypatch.setattr(fileio.os, "replace", second_fails)
    with pytest.raises(BtsInputError, match="b.txt"):
        staged.commit()
    monkeypatch.undo()
    assert old.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def _lying_header(tmp_path: Path, gz: bool) -> Path:
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.int16)
    hdr.set_data_shape((10, 10, 10))
    raw = bytearray(hdr.binaryblock + b"\0" * 4 + np.ones(1000, np.int16).tobytes())
    hdr.set_data_shape((2400, 2400, 1550))
    raw[: len(hdr.binaryblock)] = hdr.binaryblock
    path = tmp_path / ("lie.nii.gz" if gz else "lie.nii")
    if gz:
        with gzip.open(path, "wb") as fh:
            fh.write(bytes(raw))
    else:
        path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_header_dimensions_checked_against_file_size(tmp_path, gz):
    with pytest.raises(BtsInputError, match=r"header is wrong"):
        load_nifti(_lying_header(tmp_path, gz))


def test_truncated_gzip_detected_from_trailer(tmp_path):
    path = tmp_path / "t.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(size=(20, 20, 20)).astype(np.float32), np.eye(4)), path)
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[: len(data) // 2]))  # a whole gzip of half the voxels
    with pytest.raises(BtsInputError, match="truncated"):
        load_nifti(path)


def test_singular_affine_and_rgb_refused(tmp_path):
    hdr = nib.Nifti1Header()
    hdr.set_sform(np.diag([1.0, 1.0, 0.0, 1.0]), code=1)
    hdr.set_qform(None, code=0)
    sing = tmp_path / "sing.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((6, 6, 6), np.int16), None, header=hdr), sing)
    with pytest.raises(BtsInputError, match="singular"):
        load_nifti(sing)
    rgb = tmp_path / "rgb.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((6, 6, 6), [("R", "u1"), ("G", "u1"), ("B", "u1")]), np.eye(4)), rgb)
    with pytest.raises(BtsInputError, match="RGB"):
        load_nifti(rgb)


def test_negative_valued_brain_is_not_cropped_away(tmp_path):
    vol = np.zeros((4, 20, 22, 18), np.float32)
    vol[:, 4:15, 5:17, 3:14] = -100.0 + np.random.default_rng(0).normal(0, 5, (4, 11, 12, 11))
    vol[1, 6, 7, 5] = 0.0  # zero in one channel, inside the brain: normalised like its neighbours
    paths = []
    for c in range(4):
        paths.append(tmp_path / f"m{c}.nii.gz")
        nib.save(nib.Nifti1Image(vol[c], np.eye(4)), paths[-1])
    out = deterministic_transforms("brats2021", with_label=False)({"image": [str(p) for p in paths]})["image"]
    assert tuple(out.shape[1:]) == (11, 12, 11)
    assert bool(brain_mask(out).all())
    assert float(out[1, 2, 2, 2]) > 5  # the zero voxel, z-scored with its channel's brain statistics
    np.testing.assert_allclose(out.mean(dim=(1, 2, 3)).numpy(), 0.0, atol=1e-4)


def test_unknown_brats_year_is_an_input_error(tmp_path):
    from bts_monai.data.discovery import discover
    from bts_monai.data.synthetic import make_brats_case

    make_brats_case(tmp_path / "data", "BraTS2021_00001", shape=(12, 12, 10), seed=0)
    with pytest.raises(BtsInputError, match="unknown dataset 'brats2099'"):
        discover(tmp_path / "data", "brats2099")
