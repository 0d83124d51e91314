"""The Predictor: networks over cases, every input form to files, batch mode, checkpoints."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch
from infer_helpers import MarkerNet, brats_config, lgg_config, marker_case, tiny_unet
from PIL import Image

from bts_monai.data.synthetic import BRATS_LIKE_AFFINE, make_brats_case, make_lgg_patient
from bts_monai.errors import BtsInputError
from bts_monai.inference import predictor as predictor_mod
from bts_monai.inference.predictor import PROBABILITY_SCALE, Predictor, default_model_path
from bts_monai.labels import get_scheme

SCHEME = get_scheme("brats2021")


@pytest.fixture(scope="module")
def synth_case(tmp_path_factory):
    return make_brats_case(tmp_path_factory.mktemp("cases"), "BraTS2021_00005", shape=(28, 32, 24), seed=3)


def test_regions_labels_probabilities_consistent(synth_case):
    p = Predictor(tiny_unet(), brats_config(), device="cpu")
    pred = p.predict(synth_case)
    assert pred.labels.shape == (28, 32, 24) and pred.labels.dtype == np.uint8
    assert set(np.unique(pred.labels)) <= set(SCHEME.all_values)
    assert pred.probabilities.shape == (3, 28, 32, 24)
    # Labels are rebuilt from thresholded region probabilities (nested BraTS regions).
    np.testing.assert_array_equal(pred.labels, SCHEME.from_regions(pred.probabilities > 0.5))
    # Outside the brain's box nothing is predicted (zero probability after padding back).
    assert pred.probabilities[:, 0].max() == 0


def test_softmax_labels_mode(synth_case):
    net = tiny_unet(out_channels=len(SCHEME.all_values))
    pred = Predictor(net, brats_config(label_mode="labels"), device="cpu").predict(synth_case)
    assert set(np.unique(pred.labels)) <= set(SCHEME.all_values)
    assert pred.probabilities.shape == (3, 28, 32, 24)
    assert float(pred.probabilities.max()) <= 1 + 1e-5


def test_options_tta_bf16_channels_last(synth_case):
    torch.manual_seed(0)
    net = tiny_unet()
    base = Predictor(net, brats_config(), device="cpu", channels_last=False).predict(synth_case)
    cl = Predictor(net, brats_config(), device="cpu", channels_last=True).predict(synth_case)
    np.testing.assert_allclose(cl.probabilities, base.probabilities, atol=1e-5)
    tta = Predictor(net, brats_config(), device="cpu", tta=True, overlap=0.25).predict(synth_case)
    assert tta.labels.shape == base.labels.shape
    bf16 = Predictor(net, brats_config(), device="cpu", precision="bf16").predict(synth_case)
    assert np.abs(bf16.probabilities - base.probabilities).max() < 0.05


def test_tta_of_a_symmetric_stub_is_exact(tmp_path):
    """Mirror TTA undoes each flip: a voxel-wise network gives the same answer with or without it."""
    case = marker_case(tmp_path, BRATS_LIKE_AFFINE)
    a = Predictor(MarkerNet(), brats_config(), device="cpu").predict(case)
    b = Predictor(MarkerNet(), brats_config(), device="cpu", tta=True).predict(case)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_bad_settings():
    with pytest.raises(ValueError, match="overlap"):
        Predictor(tiny_unet(), brats_config(), device="cpu", overlap=1.0)
    with pytest.raises(ValueError, match="precision"):
        Predictor(tiny_unet(), brats_config(), device="cpu", precision="16")
    with pytest.raises(ValueError, match="lacks"):
        Predictor(tiny_unet(), {"modalities": ["flair"]}, device="cpu")


def test_save_all_outputs(tmp_path, synth_case):
    pred = Predictor(tiny_unet(seed=2), brats_config(), device="cpu").predict(synth_case)
    out = tmp_path / "out" / "case_seg.nii.gz"
    written = pred.save(out, probabilities=True, report=tmp_path / "r.json", overlay=tmp_path / "o.png")
    names = sorted(p.name for p in written)
    assert names == [
        "case_prob_ET.nii.gz",
        "case_prob_TC.nii.gz",
        "case_prob_WT.nii.gz",
        "case_seg.nii.gz",
        "o.png",
        "r.json",
    ]
    seg = nib.load(out)
    prob = nib.load(tmp_path / "out" / "case_prob_WT.nii.gz")
    assert prob.get_data_dtype() == np.int16 and prob.dataobj.slope == pytest.approx(1 / PROBABILITY_SCALE)
    wt = SCHEME.region_names.index("WT")
    np.testing.assert_allclose(prob.get_fdata(), pred.probabilities[wt], atol=1 / PROBABILITY_SCALE)
    assert np.array_equal(np.asarray(seg.dataobj), pred.labels)
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["case_id"] == "BraTS2021_00005"
    assert {r["region"]: r["voxels"] for r in rep["regions"]}["WT"] == int((pred.labels > 0).sum())
    assert Image.open(tmp_path / "o.png").mode == "RGB"
    assert not [p for p in tmp_path.rglob(".tmp-*")]


def test_failed_save_leaves_nothing(tmp_path, synth_case, monkeypatch):
    pred = Predictor(tiny_unet(), brats_config(), device="cpu").predict(synth_case)

    def broken(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pred, "overlay", broken)
    with pytest.raises(KeyboardInterrupt):
        pred.save(tmp_path / "x_seg.nii.gz", probabilities=True, report=tmp_path / "r.json", overlay=tmp_path / "o.png")
    assert list(tmp_path.iterdir()) == []


def test_2d_model_on_volume_slice_by_slice(synth_case):
    """A 2D network runs along the last axis of the RAS volume; the output is in the input grid."""
    cfg = brats_config(spatial_dims=2, roi_size=[24, 24])
    net = tiny_unet(spatial_dims=2)
    pred = Predictor(net, cfg, device="cpu").predict(synth_case)
    assert pred.labels.shape == (28, 32, 24)
    # Slice by slice: a slice's result does not depend on its neighbours.
    x = torch.randn(1, 4, 24, 24, 5)
    p = Predictor(net, cfg, device="cpu")
    with torch.inference_mode():
        whole = p.inferer(x, p._network())
        alone = p.inferer(x[..., 2:3], p._network())
    torch.testing.assert_close(whole[..., 2:3], alone)


def test_lgg_patient_and_slice_outputs(tmp_path):
    pdir = make_lgg_patient(tmp_path / "in", "TCGA_XX_0002_20000101", n_slices=6, size=32)
    p = Predictor(tiny_unet(3, 1, spatial_dims=2), lgg_config(), device="cpu")
    pred = p.predict(pdir)
    assert pred.labels.shape == (32, 32, 6)
    assert set(np.unique(pred.labels)) <= set(get_scheme("lgg").all_values)
    pred.save(tmp_path / "stack.tif", report=tmp_path / "r.csv", overlay=tmp_path / "o.png")
    pages = tifffile.imread(tmp_path / "stack.tif")
    assert pages.shape == (6, 32, 32) and pages.dtype == np.uint8
    np.testing.assert_array_equal(pages[2], pred.labels[..., 2])
    assert "voxels" in (tmp_path / "r.csv").read_text()
    pred.save(tmp_path / "stack.nii.gz")
    assert nib.load(tmp_path / "stack.nii.gz").shape == (32, 32, 6)
    one = p.predict(pdir / f"{pdir.name}_3.tif")
    np.testing.assert_array_equal(one.labels[..., 0], pred.labels[..., 2])
    one.save(tmp_path / "one.tif")
    assert tifffile.imread(tmp_path / "one.tif").shape == (32, 32)


def test_run_batch_with_one_bad_case(tmp_path):
    root = tmp_path / "cases"
    for i in range(3):
        make_brats_case(root, f"BraTS2021_0001{i}", shape=(24, 28, 20), seed=i)
    (root / "BraTS2021_00011" / "BraTS2021_00011_t1ce.nii.gz").unlink()
    p = Predictor(tiny_unet(), brats_config(), device="cpu")
    out = tmp_path / "out"
    results = p.run([root], out, report=tmp_path / "volumes.csv", overlay=tmp_path / "png", progress=False)
    assert [(r.case_id, r.ok) for r in results] == [
        ("BraTS2021_00010", True),
        ("BraTS2021_00011", False),
        ("BraTS2021_00012", True),
    ]
    assert "no t1ce file" in results[1].error
    assert sorted(x.name for x in out.iterdir()) == ["BraTS2021_00010_seg.nii.gz", "BraTS2021_00012_seg.nii.gz"]
    assert sorted(x.name for x in (tmp_path / "png").iterdir()) == [
        "BraTS2021_00010_overlay.png",
        "BraTS2021_00012_overlay.png",
    ]
    csv = (tmp_path / "volumes.csv").read_text().splitlines()
    assert csv[0].startswith("case_id,kind,name,labels,voxels,volume_ml,model_name,") and len(csv) == 1 + 2 * 6
    assert all(r.volumes_ml for r in results if r.ok)


def test_run_single_bad_input_raises_and_writes_nothing(tmp_path):
    case = make_brats_case(tmp_path / "in", "BraTS2021_00020", shape=(24, 28, 20))
    vol = np.asarray(nib.load(case / "BraTS2021_00020_t2.nii.gz").dataobj).astype(np.float32)
    vol[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(vol, BRATS_LIKE_AFFINE), case / "BraTS2021_00020_t2.nii.gz")
    p = Predictor(tiny_unet(), brats_config(), device="cpu")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(BtsInputError, match="NaN or Inf"):
        p.run([case], out, report=out / "r.json", overlay=out / "o.png")
    assert list(out.iterdir()) == []
    with pytest.raises(BtsInputError, match="must be a folder"):
        p.run([case, case], out / "x.nii.gz")
    with pytest.raises(BtsInputError, match=".json or .csv"):
        p.run([case], out, report=out / "r.txt")


def test_predict_array(synth_case):
    p = Predictor(MarkerNet(), brats_config(), device="cpu")
    image = np.zeros((4, 20, 20, 20), np.float32)
    image[:, 4:16, 4:16, 4:16] = 100
    image[0, 5, 6, 7] = 5000
    pred = p.predict_array(image, np.diag([-1.0, -1, 1, 1]))
    assert [tuple(v) for v in np.argwhere(pred.labels)] == [(5, 6, 7)]
    with pytest.raises(BtsInputError, match="zero"):
        p.predict_array(np.zeros((4, 8, 8, 8)))


def test_from_checkpoint_real_project_checkpoint(tiny_ckpt, synth_case, tmp_path):
    p = Predictor.from_checkpoint(tiny_ckpt, device="cpu")
    assert p.modalities == ["flair", "t1", "t1ce", "t2"] and p.region_names == ["TC", "WT", "ET"]
    assert p.predict(synth_case).labels.shape == (28, 32, 24)


def test_from_checkpoint_bad_files(tmp_path):
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(BtsInputError) as e:
        Predictor.from_checkpoint(corrupt)
    assert e.value.path == str(corrupt)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    with pytest.raises(BtsInputError, match="not a bts_monai checkpoint"):
        Predictor.from_checkpoint(foreign)


def test_default_model_paths(tmp_path, monkeypatch):
    import bts_monai.model.packaged as packaged

    for kind in ("brats", "lgg"):
        folder = default_model_path(kind)
        assert folder is not None and (folder / "metadata.json").is_file()
    with pytest.raises(ValueError, match="unknown model kind"):
        default_model_path("dwi")
    monkeypatch.setattr(packaged, "MODELS_DIR", tmp_path)
    assert default_model_path("brats") is None
    assert "pass --ckpt PATH" in predictor_mod.NO_DEFAULT_MODEL
