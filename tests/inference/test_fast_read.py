"""NIfTI reads of inference: isal decodes ``.nii.gz``, zlib where isal is missing, the same arrays."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bts_monai.data.checks import load_nifti
from bts_monai.inference import io as infer_io
from bts_monai.inference.io import ModelInputs, explicit_case, load_case, read_voxels

igzip = pytest.importorskip("isal.igzip", reason="isal is part of the base install")


def _scaled_volume(path: Path, seed: int = 0) -> np.ndarray:
    """An int16 volume with a non-trivial slope and intercept (the scaling must survive the fast read)."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 3000, size=(19, 17, 13)).astype(np.int16)
    img = nib.Nifti1Image(data, np.diag([-1.0, -1.0, 1.5, 1.0]))
    img.header.set_slope_inter(0.37, 2.5)
    nib.save(img, path)
    return np.asanyarray(nib.load(path).dataobj)  # what nibabel itself reads (zlib)


@pytest.fixture()
def decoders(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records each gzip stream ``read_voxels`` opens with isal."""
    opened: list[str] = []
    real = igzip.open

    def counting_open(path, *args, **kwargs):
        opened.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(igzip, "open", counting_open)
    return opened


def test_isal_gives_nibabels_array(tmp_path: Path, decoders: list[str]) -> None:
    path = tmp_path / "scaled.nii.gz"
    want = _scaled_volume(path)
    got = read_voxels(path, load_nifti(path))
    assert decoders == [str(path)]  # the isal path ran
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_zlib_when_isal_is_missing(tmp_path: Path, decoders: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "scaled.nii.gz"
    want = _scaled_volume(path, seed=1)
    monkeypatch.setattr(infer_io, "_igzip", lambda: None)
    got = read_voxels(path, load_nifti(path))
    assert decoders == []
    np.testing.assert_array_equal(got, want)


def test_uncompressed_files_skip_the_decoder(tmp_path: Path, decoders: list[str]) -> None:
    path = tmp_path / "plain.nii"
    want = _scaled_volume(path, seed=2)
    np.testing.assert_array_equal(read_voxels(path, load_nifti(path)), want)
    assert decoders == []


def test_cases_load_the_same_with_and_without_isal(
    tmp_path: Path, decoders: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = ModelInputs(("flair", "t1", "t1ce", "t2"))
    files = {}
    for i, m in enumerate(model.modalities):
        files[m] = str(tmp_path / f"case_{m}.nii.gz")
        _scaled_volume(Path(files[m]), seed=10 + i)
    fast = load_case(explicit_case(files, model), model)
    assert len(decoders) == 4
    monkeypatch.setattr(infer_io, "_igzip", lambda: None)
    slow = load_case(explicit_case(files, model), model)
    assert fast.image.dtype == np.float32
    np.testing.assert_array_equal(fast.image, slow.image)


def test_truncated_gzip_is_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "case_flair.nii.gz"
    _scaled_volume(path)
    img = load_nifti(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    out = np.empty(img.shape, dtype=np.float32)
    with pytest.raises(infer_io.BtsInputError, match="corrupt or truncated"):
        infer_io._read_voxels(path, img, out)


@pytest.mark.real_data
def test_real_brats_modalities_identical(real_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    case = sorted((real_data / "brats2018").iterdir())[0]
    for path in sorted(case.glob("*_t1ce.nii.gz")) + sorted(case.glob("*_seg.nii.gz")):
        img = load_nifti(path)
        fast = read_voxels(path, img)
        with monkeypatch.context() as m:
            m.setattr(infer_io, "_igzip", lambda: None)
            slow = read_voxels(path, img)
        assert fast.dtype == slow.dtype
        np.testing.assert_array_equal(fast, slow)
