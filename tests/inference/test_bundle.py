"""MONAI bundle export: the files, the bundle's own transforms, and labels equal to the Predictor's."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import nibabel as nib
import numpy as np
import pytest
import torch
from infer_helpers import brats_config, lgg_config, marker_case, oblique_affine, save_tiny_checkpoint

from bts_monai.data.discovery import BRATS_MODALITIES
from bts_monai.data.transforms import NormalizeInBrain
from bts_monai.errors import BtsInputError
from bts_monai.inference.predictor import Predictor
from bts_monai.labels import get_scheme
from bts_monai.model.bundle import (
    bundle_scripts,
    image_suffixes,
    inference_config,
    load_model,
    missing_bundle_packages,
    write_bundle,
)

needs_bundle_packages = pytest.mark.skipif(
    bool(missing_bundle_packages()), reason=f"running a bundle needs {missing_bundle_packages()} (the dev extra)"
)


def run_bundle(bundle: Path, dataset_dir: Path, output_dir: Path) -> subprocess.CompletedProcess[str]:
    """``python -m monai.bundle run`` in the bundle's folder, as its README says."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json"]
    cmd += ["--dataset_dir", str(dataset_dir), "--output_dir", str(output_dir)]
    return subprocess.run(cmd, cwd=bundle, capture_output=True, text=True, timeout=900)


def agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(share of equal voxels, share of equal voxels among those either calls tumour)."""
    tumour = (a > 0) | (b > 0)
    return float((a == b).mean()), float((a[tumour] == b[tumour]).mean()) if tumour.any() else 1.0


@pytest.fixture(scope="module")
def spaced_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random 3D UNet checkpoint that resamples to 1.5 mm (every geometry step is used)."""
    cfg = brats_config(spacing=[1.5, 1.5, 1.5])
    return save_tiny_checkpoint(tmp_path_factory.mktemp("bundle_ckpt") / "tiny.ckpt", cfg)


@pytest.fixture(scope="module")
def bundle(spaced_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    net, config, meta = load_model(spaced_ckpt)
    return write_bundle(net, config, tmp_path_factory.mktemp("bundles") / "tiny_bundle", meta)


@pytest.fixture(scope="module")
def scripts(bundle: Path) -> ModuleType:
    """The bundle's scripts/bts_transforms.py, imported from its file (not through sys.path)."""
    spec = importlib.util.spec_from_file_location("bundle_bts_transforms", bundle / "scripts" / "bts_transforms.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bundle_layout_and_metadata(bundle: Path, spaced_ckpt: Path) -> None:
    for name in ("configs/metadata.json", "configs/inference.json", "models/model.pt", "scripts/__init__.py"):
        assert (bundle / name).is_file(), name
    meta = json.loads((bundle / "configs/metadata.json").read_text())
    for key in ("schema", "version", "monai_version", "pytorch_version", "numpy_version", "task", "intended_use"):
        assert meta[key], key
    image = meta["network_data_format"]["inputs"]["image"]
    assert image["num_channels"] == 4 and list(image["channel_def"].values()) == list(BRATS_MODALITIES)
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert pred["num_channels"] == 3 and pred["channel_def"]["0"].startswith("TC")
    assert meta["bts_monai"]["spacing"] == [1.5, 1.5, 1.5]
    # The weights are the checkpoint's, loadable without unpickling code.
    state = torch.load(bundle / "models/model.pt", weights_only=True)
    net, _, _ = load_model(spaced_ckpt)
    want = net.state_dict()
    assert state.keys() == want.keys()
    assert all(torch.equal(state[k], want[k].float()) for k in want)
    config = json.loads((bundle / "configs/inference.json").read_text())
    assert config["inferer"]["roi_size"] == [16, 16, 16] and config["inferer"]["mode"] == "gaussian"
    assert config["threshold"] == 0.5
    assert (bundle / "scripts/bts_transforms.py").read_text() == bundle_scripts()


def test_bundle_network_is_the_checkpoints(bundle: Path, spaced_ckpt: Path) -> None:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(bundle / "configs/inference.json")
    built = parser.get_parsed_content("network_def")
    built.load_state_dict(torch.load(bundle / "models/model.pt", weights_only=True))
    net, _, _ = load_model(spaced_ckpt)
    x = torch.randn(1, 4, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(built.eval()(x), net(x))


def test_scripts_normalise_as_the_package(scripts: ModuleType) -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(50, 10, size=(4, 12, 11, 10)).astype(np.float32)
    image[:, :3] = 0  # background
    image[1, 5:7] = 0  # zero in one modality only, inside the brain
    for data in (image, torch.from_numpy(image)):
        got, want = scripts.NormalizeInBrain()(data), NormalizeInBrain()(data)
        assert type(got) is type(want)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    np.testing.assert_array_equal(np.asarray(scripts.is_nonzero(image)), image != 0)


@pytest.mark.parametrize("scheme_name", ["brats2021", "brats2023", "msd"])
def test_scripts_paint_labels_as_the_scheme(scripts: ModuleType, scheme_name: str) -> None:
    scheme = get_scheme(scheme_name)
    probs = torch.rand(scheme.num_regions, 9, 8, 7, generator=torch.Generator().manual_seed(1))
    config = brats_config(scheme=scheme_name)
    section = inference_config(config)
    painter = scripts.RegionsToLabelsd("pred", section["threshold"], section["paint_order"], scheme.background)
    got = painter({"pred": probs})["pred"]
    assert got.dtype == torch.uint8 and tuple(got.shape) == (1, 9, 8, 7)
    np.testing.assert_array_equal(got[0].numpy(), scheme.from_regions(probs.numpy() > 0.5))


def test_scripts_find_case_folders(scripts: ModuleType, tmp_path: Path) -> None:
    suffixes = image_suffixes(BRATS_MODALITIES)
    names_2023 = {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w"}
    old = tmp_path / "cases" / "Brats18_X_1"
    new = tmp_path / "cases" / "BraTS-GLI-00001-000"
    for m in BRATS_MODALITIES:
        old.mkdir(parents=True, exist_ok=True)
        (old / f"Brats18_X_1_{m}.nii.gz").touch()
        new.mkdir(parents=True, exist_ok=True)
        (new / f"BraTS-GLI-00001-000-{names_2023[m]}.nii.gz").touch()
    (old / "Brats18_X_1_seg.nii.gz").touch()
    (tmp_path / "cases" / "notes").mkdir()
    listed = scripts.case_datalist(tmp_path / "cases", suffixes)
    assert [Path(f).name for f in listed[0]["image"]] == [
        "BraTS-GLI-00001-000-t2f.nii.gz",
        "BraTS-GLI-00001-000-t1n.nii.gz",
        "BraTS-GLI-00001-000-t1c.nii.gz",
        "BraTS-GLI-00001-000-t2w.nii.gz",
    ]
    assert [Path(f).name for f in listed[1]["image"]] == [f"Brats18_X_1_{m}.nii.gz" for m in BRATS_MODALITIES]
    assert len(scripts.case_datalist(old, suffixes)) == 1  # one case folder
    names = scripts.CaseNames(suffixes[0])
    assert names({"filename_or_obj": listed[0]["image"][0]})["subject"] == "BraTS-GLI-00001-000"
    assert names({"filename_or_obj": listed[1]["image"][0]})["subject"] == "Brats18_X_1"
    (old / "Brats18_X_1_t2.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"no file ending in _t2\.nii\.gz"):
        scripts.case_datalist(old, suffixes)
    with pytest.raises(FileNotFoundError, match="no case folder"):
        scripts.case_datalist(tmp_path / "cases" / "notes", suffixes)


def test_refuses_what_a_bundle_cannot_express(tmp_path: Path) -> None:
    with pytest.raises(BtsInputError, match="3D NIfTI models only"):
        inference_config(lgg_config())
    with pytest.raises(BtsInputError, match="region"):
        inference_config(brats_config(label_mode="labels"))
    with pytest.raises(BtsInputError, match="MONAI network"):
        inference_config(brats_config(net={"class_path": "torch.nn.Conv3d", "init_args": {}}))


@needs_bundle_packages
def test_bundle_run_gives_the_predictors_labels(bundle: Path, spaced_ckpt: Path, tmp_path: Path) -> None:
    # An oblique, anisotropic scan: orientation, resampling, crop and their inverses all act.
    case = marker_case(tmp_path / "cases", oblique_affine())
    want = Predictor.from_checkpoint(spaced_ckpt, backend="torch", device="cpu").predict(case).labels
    assert len(np.unique(want)) == 4  # every label present: the comparison means something
    done = run_bundle(bundle, case, tmp_path / "out")
    assert done.returncode == 0, done.stderr[-3000:]
    out = nib.load(tmp_path / "out" / f"{case.name}_seg.nii.gz")
    got = np.asanyarray(out.dataobj)
    ref = nib.load(next(case.glob("*_flair.nii.gz")))
    assert got.shape == want.shape and got.dtype == np.uint8
    np.testing.assert_allclose(out.affine, ref.affine, atol=1e-5)
    print("bundle vs Predictor (torch), synthetic oblique case: agreement", agreement(got, want))
    np.testing.assert_array_equal(got, want)


@needs_bundle_packages
def test_bundle_run_reports_a_missing_dataset(bundle: Path, tmp_path: Path) -> None:
    done = run_bundle(bundle, tmp_path / "absent", tmp_path / "out")
    assert done.returncode != 0
    assert "is not a folder: pass --dataset_dir" in done.stderr


@pytest.mark.real_data
@needs_bundle_packages
def test_packaged_model_bundle_agrees_with_bts_infer(real_data: Path, tmp_path: Path) -> None:
    """The packaged model as a bundle, run by MONAI on a real case, against ``bts-infer``.

    Against ``bts-infer --backend torch`` (same network runtime) the chains are the same, so the
    labels should agree on every voxel (measured: 1.0). ``bts-infer``'s default runs the ONNX
    export on OpenVINO or ONNX Runtime, whose logits differ from torch's by up to ~3e-4: that moves
    only voxels whose probability sits at the threshold (measured on Brats18_2013_11_1 in two
    runs: agreement 0.999996-0.999997, 0.9997-0.9998 over the tumour; about 24-35 of 8.9 million
    voxels differ). The bounds: 0.999 over the volume, the issue's bar
    for a backend against torch, and 0.99 over the voxels either calls tumour, where the volume's
    background cannot hide a disagreement.
    """
    cases = real_data / "brats2018"
    case = cases / "Brats18_2013_11_1"
    if not case.is_dir():
        case = sorted(p for p in cases.iterdir() if p.is_dir())[0]
    bin_dir = Path(sys.executable).parent
    folder = tmp_path / "bundle"
    export = subprocess.run(
        [str(bin_dir / "bts-export-model"), "brats_unet_2mm", "--bundle", str(folder)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert export.returncode == 0, export.stderr[-2000:]
    done = run_bundle(folder, case, tmp_path / "bundle_out")
    assert done.returncode == 0, done.stderr[-3000:]
    infer = subprocess.run(
        [str(bin_dir / "bts-infer"), str(case), "-o", str(tmp_path / "infer_out") + "/"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert infer.returncode == 0, infer.stderr[-2000:]
    name = f"{case.name}_seg.nii.gz"
    got = np.asanyarray(nib.load(tmp_path / "bundle_out" / name).dataobj)
    default = np.asanyarray(nib.load(tmp_path / "infer_out" / name).dataobj)
    torch_labels = Predictor.from_packaged(backend="torch", device="cpu").predict(case).labels
    assert got.shape == default.shape == torch_labels.shape
    vs_default, vs_default_tumour = agreement(got, default)
    vs_torch, vs_torch_tumour = agreement(got, torch_labels)
    print(
        f"\n{case.name}: bundle vs bts-infer (default backend): agreement {vs_default:.6f} "
        f"({vs_default_tumour:.4f} over tumour voxels); vs bts-infer --backend torch: {vs_torch:.6f} "
        f"({vs_torch_tumour:.4f})"
    )
    assert (got > 0).sum() > 1000  # a real tumour was found, not two empty maps agreeing
    assert vs_default >= 0.999 and vs_default_tumour >= 0.99
    assert vs_torch >= 0.9999 and vs_torch_tumour >= 0.999
