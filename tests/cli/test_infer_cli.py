"""``bts-infer``: every input form, outputs in the input's grid, one-line errors with exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch

from bts_monai.cli.infer import main
from bts_monai.data.discovery import BRATS_MODALITIES
from bts_monai.data.synthetic import make_brats_case, make_lgg_patient


def _checkpoint(path: Path, kind: str) -> Path:
    """A real project checkpoint (the training module's save hook) of a tiny random UNet."""
    from bts_monai.data.datamodule import LGG_CHANNELS
    from bts_monai.model.module import BratsSegModule, build_network

    torch.manual_seed(0)
    dims, chans, outs = (3, 4, 3) if kind == "brats" else (2, 3, 1)
    net = build_network(
        "monai.networks.nets.UNet",
        {"spatial_dims": dims, "in_channels": chans, "out_channels": outs, "channels": [4, 8], "strides": [2]},
    )
    cfg = {
        "modalities": list(BRATS_MODALITIES) if kind == "brats" else list(LGG_CHANNELS),
        "dataset": "brats2021" if kind == "brats" else "lgg",
        "scheme": "brats2021" if kind == "brats" else "lgg",
        "label_mode": "regions",
        "spatial_dims": dims,
        "roi_size": [16, 16, 16] if kind == "brats" else [32, 32],
        "intensity": "zscore" if kind == "brats" else "unit",
        "spacing": None,
    }
    module = BratsSegModule(net, data_config=cfg)
    ckpt: dict = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "run.ckpt", "brats")


@pytest.fixture(scope="module")
def lgg_ckpt(tmp_path_factory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "lgg.ckpt", "lgg")


@pytest.fixture()
def case(tmp_path) -> Path:
    return make_brats_case(tmp_path / "in", "BraTS2021_00042", shape=(24, 28, 20), seed=1)




def test_case_folder_with_report_and_overlay(tmp_path, ckpt, case, capsys):
    out = tmp_path / "o" / "out.nii.gz"
    args = [str(case), "--ckpt", str(ckpt), "-o", str(out), "--report", str(tmp_path / "r.json")]
    assert main([*args, "--overlay", str(tmp_path / "o.png"), "-q"]) == 0
    seg, ref = nib.load(out), nib.load(case / "BraTS2021_00042_flair.nii.gz")
    assert seg.shape == ref.shape and np.array_equal(seg.affine, ref.affine)
    assert seg.header["qform_code"] == ref.header["qform_code"] and seg.header["sform_code"] == ref.header["sform_code"]
    assert seg.get_data_dtype() == np.uint8
    rep = json.loads((tmp_path / "r.json").read_text())
    assert [r["region"] for r in rep["regions"]] == ["TC", "WT", "ET"]
    assert (tmp_path / "o.png").stat().st_size > 0
    assert str(out) in capsys.readouterr().out


def test_explicit_files_default_output_probabilities(tmp_path, ckpt, case, monkeypatch):
    monkeypatch.chdir(tmp_path)
    files = [a for m in BRATS_MODALITIES for a in (f"--{m}", str(case / f"BraTS2021_00042_{m}.nii.gz"))]
    assert main([*files, "--ckpt", str(ckpt), "--probabilities", "--threads", "1", "-q"]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.nii.gz")) == [
        "BraTS2021_00042_prob_ET.nii.gz",
        "BraTS2021_00042_prob_TC.nii.gz",
        "BraTS2021_00042_prob_WT.nii.gz",
        "BraTS2021_00042_seg.nii.gz",
    ]


def test_4d_nifti_with_channel_order(tmp_path, ckpt, case):
    order = ["t2", "flair", "t1ce", "t1"]
    ref = nib.load(case / "BraTS2021_00042_flair.nii.gz")
    vols = {m: np.asarray(nib.load(case / f"BraTS2021_00042_{m}.nii.gz").dataobj) for m in BRATS_MODALITIES}
    four = tmp_path / "four.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([vols[m] for m in order], -1), ref.affine), four)
    assert main([str(case), "--ckpt", str(ckpt), "-o", str(tmp_path / "a.nii.gz"), "-q"]) == 0
    args = [str(four), "--ckpt", str(ckpt), "-o", str(tmp_path / "b.nii.gz"), "--channel-order", ",".join(order)]
    assert main([*args, "-q"]) == 0
    a, b = (np.asarray(nib.load(tmp_path / f"{x}.nii.gz").dataobj) for x in "ab")
    np.testing.assert_array_equal(a, b)


def test_folder_of_cases_one_bad(tmp_path, ckpt, capsys):
    root = tmp_path / "cases"
    for i in range(3):
        make_brats_case(root, f"BraTS2021_0010{i}", shape=(20, 24, 16), seed=i)
    (root / "BraTS2021_00101" / "BraTS2021_00101_t1.nii.gz").write_text("garbage")
    out = tmp_path / "out"
    code = main([str(root), "--ckpt", str(ckpt), "-o", str(out), "--report", str(tmp_path / "v.csv"), "-q"])
    assert code == 2
    table = capsys.readouterr().out
    assert "BraTS2021_00101  FAILED" in table and "cannot read as NIfTI" in table
    assert "2 of 3 cases segmented, 1 failed" in table
    assert sorted(p.name for p in out.iterdir()) == ["BraTS2021_00100_seg.nii.gz", "BraTS2021_00102_seg.nii.gz"]
    assert (tmp_path / "v.csv").read_text().count("BraTS2021_001") == 12


def test_lgg_patient_folder(tmp_path, lgg_ckpt):
    pdir = make_lgg_patient(tmp_path, "TCGA_XX_0003_20000101", n_slices=5, size=32)
    assert main([str(pdir), "--ckpt", str(lgg_ckpt), "-o", str(tmp_path / "out") + "/", "-q"]) == 0
    assert tifffile.imread(tmp_path / "out" / "TCGA_XX_0003_20000101_seg.tif").shape == (5, 32, 32)


def test_no_checkpoint_and_no_packaged_model(case, capsys, tmp_path, monkeypatch, one_line_error):
    import bts_monai.model.packaged as packaged

    monkeypatch.setattr(packaged, "MODELS_DIR", tmp_path / "no_models")
    assert main([str(case)]) == 2
    one_line_error("no packaged default model is installed for this input; pass --ckpt PATH")


def test_unknown_model_name(case, capsys, one_line_error):
    assert main([str(case), "--model", "nope"]) == 2
    one_line_error("no packaged model named 'nope'")


def test_list_models(capsys):
    assert main(["--list-models"]) == 0
    out = capsys.readouterr().out
    assert "lgg_unet2d" in out and "Research only" in out


def _nan(case: Path) -> Path:
    path = case / "BraTS2021_00042_t1ce.nii.gz"
    img = nib.load(path)
    vol = np.asarray(img.dataobj).astype(np.float32)
    vol[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(vol, img.affine), path)
    return path


def _shape(case: Path) -> Path:
    path = case / "BraTS2021_00042_t2.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((24, 28, 19), np.int16), nib.load(path).affine), path)
    return path


def _affine(case: Path) -> Path:
    path = case / "BraTS2021_00042_t1.nii.gz"
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), np.diag([2.0, 1, 1, 1])), path)
    return path


def _zero(case: Path) -> Path:
    path = case / "BraTS2021_00042_flair.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((24, 28, 20), np.int16), nib.load(path).affine), path)
    return path


def _missing(case: Path) -> Path:
    (case / "BraTS2021_00042_t1ce.nii.gz").unlink()
    return case


def _not_nifti(case: Path) -> Path:
    path = case.parent / "scan.nii.gz"
    path.write_text("not an image")
    return path


def _tiff(case: Path) -> Path:
    path = case.parent / "slice_1.tif"
    tifffile.imwrite(path, np.ones((16, 16, 3), np.uint8))
    return path


@pytest.mark.parametrize(
    "make, problem",
    [
        (_nan, "NaN or Inf"),
        (_shape, "differs from"),
        (_affine, "not co-registered"),
        (_zero, "every voxel is zero"),
        (_missing, "no t1ce file"),
        (_not_nifti, "cannot read as NIfTI"),
        (_tiff, "2D image file, but the checkpoint is a 3D model"),
    ],
)
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, ckpt, case, capsys, make, problem, one_line_error):
    bad = make(case)
    target = case if bad.parent == case else bad
    out = tmp_path / "out"
    out.mkdir()
    args = [str(target), "--ckpt", str(ckpt), "-o", str(out / "s.nii.gz"), "--report", str(out / "r.json")]
    assert main([*args, "--overlay", str(out / "o.png"), "--probabilities"]) == 2
    one_line_error(str(bad), problem)
    assert list(out.iterdir()) == []


def test_bad_checkpoints(tmp_path, case, capsys, one_line_error):
    corrupt = tmp_path / "c.ckpt"
    corrupt.write_bytes(b"\x80\x02garbage")
    assert main([str(case), "--ckpt", str(corrupt)]) == 2
    one_line_error(str(corrupt))
    foreign = tmp_path / "f.ckpt"
    torch.save({"state_dict": {}}, foreign)
    assert main([str(case), "--ckpt", str(foreign)]) == 2
    one_line_error(str(foreign), "not a bts_monai checkpoint")
    assert main([str(case), "--ckpt", str(tmp_path / "none.ckpt")]) == 2
    one_line_error("does not exist")


def test_bad_options(tmp_path, ckpt, case, capsys, one_line_error):
    assert main([str(case), "--ckpt", str(ckpt), "--overlap", "1.5"]) == 2
    one_line_error("overlap")
    assert main([str(case), "--ckpt", str(ckpt), "-o", str(tmp_path / "x.txt")]) == 2
    one_line_error("output must end in .nii.gz")
    assert main(["--ckpt", str(ckpt)]) == 2
    one_line_error("no input")
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
