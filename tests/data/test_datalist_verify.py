"""Issue 20 item 9: ``bts-datalist --verify`` catches what ``bts-infer`` refuses, one line naming the file.

Each broken file below is refused by both commands (exit status 2, one ``error:`` line naming the
file at fault and the problem), and ``bts-datalist`` then writes no datalist. Both run the checks
of :mod:`bts_monai.data.checks`.
"""

from __future__ import annotations

import gzip
import sys
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile

from bts_monai.cli.datalist import main as datalist
from bts_monai.cli.infer import main as infer
from bts_monai.data.synthetic import make_brats_case, make_lgg_patient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "inference"))
from infer_helpers import brats_config, lgg_config, save_tiny_checkpoint  # noqa: E402

CASE = "BraTS2021_00042"
PATIENT = "TCGA_SY_1000_20010100"
SHAPE = (24, 28, 20)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ckpt")
    return {
        "brats": save_tiny_checkpoint(folder / "brats.ckpt", brats_config()),
        "lgg": save_tiny_checkpoint(folder / "lgg.ckpt", lgg_config()),
    }


@pytest.fixture()
def dataset(tmp_path) -> Path:
    root = tmp_path / "data"
    make_brats_case(root / "brats", CASE, shape=SHAPE, seed=1)
    make_lgg_patient(root / "kaggle_3m", PATIENT, n_slices=5, size=32, seed=2)
    return root


def _flair(root: Path) -> Path:
    return root / "brats" / CASE / f"{CASE}_flair.nii.gz"


def _slice(root: Path, n: int = 3) -> Path:
    return root / "kaggle_3m" / PATIENT / f"{PATIENT}_{n}.tif"


def truncated_nifti(root: Path) -> Path:
    path = _flair(root)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])  # a download cut short
    return path


def all_zero_nifti(root: Path) -> Path:
    path = _flair(root)
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.int16), img.affine), path)
    return path


def rgb24_nifti(root: Path) -> Path:
    path = _flair(root)
    rgb = np.zeros(SHAPE, [("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["G"] = 100
    nib.save(nib.Nifti1Image(rgb, nib.load(path).affine), path)
    return path


def nan_nifti(root: Path) -> Path:
    path = _flair(root)
    img = nib.load(path)
    vol = np.asarray(img.dataobj).astype(np.float32)
    vol[5, 5, 5] = np.nan
    nib.save(nib.Nifti1Image(vol, img.affine), path)
    return path


def lying_header_nifti(root: Path) -> Path:
    """A header that claims far more voxels than the file holds (checked before allocating)."""
    path = _flair(root)
    img = nib.load(path)
    raw = bytearray(gzip.decompress(path.read_bytes()))
    hdr = img.header.copy()
    hdr.set_data_shape((2400, 2400, 1550))
    raw[: len(hdr.binaryblock)] = hdr.binaryblock
    path.write_bytes(gzip.compress(bytes(raw)))
    return path


def one_channel_slice(root: Path) -> Path:
    path = _slice(root)
    tifffile.imwrite(path, tifffile.imread(path)[..., 1])
    return path


def four_channel_slice(root: Path) -> Path:
    path = _slice(root)
    rgb = tifffile.imread(path)
    tifffile.imwrite(path, np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=-1))
    return path


def odd_sized_slice(root: Path) -> Path:
    path = _slice(root)
    tifffile.imwrite(path, np.pad(tifffile.imread(path), ((0, 4), (0, 0), (0, 0))))
    return path


def truncated_slice(root: Path) -> Path:
    path = _slice(root)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path


BROKEN: list[tuple[Callable[[Path], Path], str, str, str]] = [
    # (make, which model reads it, what bts-datalist says, what bts-infer says)
    (truncated_nifti, "brats", "truncated", "truncated"),
    (all_zero_nifti, "brats", "every voxel is zero", "every voxel is zero"),
    (rgb24_nifti, "brats", "colour (RGB) voxels", "colour (RGB) voxels"),
    (nan_nifti, "brats", "NaN or Inf", "NaN or Inf"),
    (lying_header_nifti, "brats", "header is wrong", "header is wrong"),
    (one_channel_slice, "lgg", "1 channel(s)", "differs from"),
    (four_channel_slice, "lgg", "4 channel(s)", "differs from"),
    (odd_sized_slice, "lgg", "differs from", "differs from"),
    (truncated_slice, "lgg", "cannot read as TIFF", "cannot read as TIFF"),
]


@pytest.mark.parametrize(("make", "kind", "verify_says", "infer_says"), BROKEN, ids=[b[0].__name__ for b in BROKEN])
def test_verify_refuses_what_infer_refuses(
    tmp_path, dataset, checkpoints, make, kind, verify_says, infer_says, one_line_error
):
    out = tmp_path / "datalist.json"
    assert datalist([str(dataset), "-o", str(out)]) == 0  # header checks alone let it through
    out.unlink()
    bad = make(dataset)

    assert datalist([str(dataset), "--verify", "-o", str(out)]) == 2
    one_line_error(str(bad), verify_says)
    assert not out.exists()

    target = dataset / "brats" / CASE if kind == "brats" else dataset / "kaggle_3m" / PATIENT
    seg = tmp_path / ("s.nii.gz" if kind == "brats" else "s.tif")
    assert infer([str(target), "--ckpt", str(checkpoints[kind]), "-o", str(seg), "-q"]) == 2
    one_line_error(str(bad), infer_says)
    assert not seg.exists()


def test_verify_passes_a_good_dataset(tmp_path, dataset, capsys):
    out = tmp_path / "datalist.json"
    assert datalist([str(dataset), "--verify", "-o", str(out)]) == 0
    assert out.is_file() and "5 slices" in capsys.readouterr().out
