"""Issue 20 items 7, 8, 9, 13: bad inputs are refused in one line (exit 2), nothing is left behind,
outputs never replace the user's data, one atomic writer, one brain-mask rule."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from infer_helpers import brats_config, save_tiny_checkpoint

from bts_monai.cli.infer import main as infer
from bts_monai.data.synthetic import make_brats_case

CASE = "BraTS2021_00042"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "run.ckpt", brats_config())


@pytest.fixture()
def case(tmp_path) -> Path:
    return make_brats_case(tmp_path / "in", CASE, shape=(24, 28, 20), seed=1)




# ---- 8: never overwrite the user's data -----------------------------------------------------------
def test_output_onto_an_input_is_refused(tmp_path, ckpt, case, capsys, one_line_error):
    flair = case / f"{CASE}_flair.nii.gz"
    before = flair.read_bytes()
    for extra in ([], ["--overwrite"]):
        assert infer([str(case), "--ckpt", str(ckpt), "-o", str(flair), "-q", *extra]) == 2
        one_line_error(str(flair), "is an input of this run")
    assert flair.read_bytes() == before


def test_default_output_inside_case_folder_keeps_ground_truth(ckpt, case, capsys, monkeypatch, one_line_error):
    monkeypatch.chdir(case)
    seg = case / f"{CASE}_seg.nii.gz"
    before = seg.read_bytes()
    assert infer([".", "--ckpt", str(ckpt), "-q"]) == 2
    one_line_error(f"{CASE}_seg.nii.gz", "refusing to write an output over it")
    assert seg.read_bytes() == before


def test_unwritable_output_refused_before_inference(tmp_path, ckpt, case, capsys, monkeypatch, one_line_error):
    from bts_monai.inference import predictor

    (tmp_path / "file").write_text("x")
    monkeypatch.setattr(predictor, "load_case", lambda *a: pytest.fail("read the case before checking outputs"))
    assert infer([str(case), "--ckpt", str(ckpt), "-o", str(tmp_path / "file" / "s.nii.gz"), "-q"]) == 2
    one_line_error("is a file, not a folder")


# ---- 9: bad files ----------------------------------------------------------------------------------
def _edited_checkpoint(src: Path, dst: Path, **changes) -> Path:
    from bts_monai.model.module import INFERENCE_KEY

    ckpt = torch.load(src, weights_only=True)
    ckpt[INFERENCE_KEY] = {**ckpt[INFERENCE_KEY], **changes}
    torch.save(ckpt, dst)
    return dst


@pytest.mark.parametrize(
    "changes, problem",
    [
        ({"modalities": ["flair", "t1", "t2"]}, "names 3 modalities"),
        ({"roi_size": [16, -16, 16]}, "positive whole numbers"),
    ],
)
def test_checkpoint_config_checked(tmp_path, ckpt, case, capsys, changes, problem, one_line_error):
    bad = _edited_checkpoint(ckpt, tmp_path / "bad.ckpt", **changes)
    assert infer([str(case), "--ckpt", str(bad), "-o", str(tmp_path / "s.nii.gz"), "-q"]) == 2
    one_line_error(str(bad), problem)
    assert not (tmp_path / "s.nii.gz").exists()


def test_header_extensions_not_copied(tmp_path, ckpt, case):
    flair = case / f"{CASE}_flair.nii.gz"
    img = nib.load(flair)
    img = nib.Nifti1Image(np.asarray(img.dataobj), img.affine, img.header)
    img.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"PatientName=Jane Doe"))
    img.header["descrip"] = b"Jane Doe"
    nib.save(img, flair)
    out = tmp_path / "s.nii.gz"
    assert infer([str(case), "--ckpt", str(ckpt), "-o", str(out), "-q"]) == 0
    seg = nib.load(out)
    assert len(seg.header.extensions) == 0 and b"Jane" not in seg.header["descrip"].tobytes()


# ---- 7: one brain mask -----------------------------------------------------------------------------
def test_not_skull_stripped_warns(caplog):
    from bts_monai.inference.io import warn_if_not_skull_stripped

    full = np.random.default_rng(0).normal(100, 5, (2, 12, 12, 12)).astype(np.float32)
    stripped = np.zeros_like(full)
    stripped[:, 3:9, 3:9, 3:9] = full[:, 3:9, 3:9, 3:9]
    assert warn_if_not_skull_stripped("scan.nii.gz", full)
    assert "does not look like skull-stripped MRI" in caplog.text
    assert not warn_if_not_skull_stripped("ok.nii.gz", stripped)
