"""The geometry round trip: a marker voxel comes back where it was, in the input's exact header."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from infer_helpers import BRATS_MODALITIES, MARKER, brain_volume, brats_config, marker_case, oblique_affine, write_nifti

from bts_monai.data.synthetic import BRATS_LIKE_AFFINE
from bts_monai.inference import geometry
from bts_monai.inference.predictor import Predictor
from bts_monai.labels import get_scheme

LPS = BRATS_LIKE_AFFINE
# Axes stored as (S, R, P): a permutation as well as a flip.
PERMUTED = np.array([[0.0, 1.2, 0, -20], [0, 0, -1.0, 15], [2.0, 0, 0, -8], [0, 0, 0, 1]])

AFFINES = {"lps": LPS, "oblique": oblique_affine(), "permuted": PERMUTED, "ras": np.diag([1.0, 1.0, 1.0, 1.0])}


def _assert_same_header(out: nib.Nifti1Image, ref: nib.Nifti1Image) -> None:
    assert out.shape == ref.shape[:3]
    np.testing.assert_array_equal(out.affine, ref.affine)
    for which in ("qform", "sform"):
        got, code = getattr(out, f"get_{which}")(coded=True)
        want, want_code = getattr(ref, f"get_{which}")(coded=True)
        assert int(code) == int(want_code), which
        np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(out.header.get_zooms()[:3], ref.header.get_zooms()[:3])


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_marker_voxel_lands_where_it_was(tmp_path, marker_net, name):
    marker = (9, 21, 7)
    case = marker_case(tmp_path, AFFINES[name], marker, qcode=1, scode=2)
    pred = Predictor(marker_net, brats_config(), device="cpu").predict(case)
    et = get_scheme("brats2021").paint_order()[-1][1]
    assert [tuple(int(i) for i in v) for v in np.argwhere(pred.labels)] == [marker]
    assert pred.labels[marker] == et and pred.labels.dtype == np.uint8

    out = tmp_path / "seg.nii.gz"
    pred.save(out)
    ref = nib.load(case / f"{case.name}_flair.nii.gz")
    img = nib.load(out)
    _assert_same_header(img, ref)
    assert img.get_data_dtype() == np.uint8
    assert [tuple(v) for v in np.argwhere(np.asarray(img.dataobj))] == [marker]


def test_marker_survives_resampling(tmp_path, marker_net):
    """With a training ``spacing``, the volume is resampled for the network and back."""
    case = marker_case(tmp_path, np.diag([1.0, 1.0, 1.0, 1.0]), (12, 15, 10))
    pred = Predictor(marker_net, brats_config(spacing=[0.5, 0.5, 0.5]), device="cpu").predict(case)
    found = np.argwhere(pred.labels)
    assert pred.labels.shape == (30, 34, 26)
    assert len(found) >= 1 and np.abs(found - np.array([12, 15, 10])).max() <= 1


def test_model_space_is_training_space():
    """Preprocessing is training's deterministic transforms minus the loaders: channels, RAS, crop, z-score."""
    t = geometry.model_space_transforms(brats_config())
    names = [type(s).__name__ for s in t.transforms]
    # SelectChannelsd picks a 4D (MSD) input's modalities; NormalizeInBraind z-scores inside the one brain mask.
    assert names == ["SelectChannelsd", "Orientationd", "CropForegroundd", "NormalizeInBraind", "CastToTyped"]
    image = np.stack([brain_volume(seed=i) for i in range(4)])
    x = geometry.to_model_space(image, LPS, t)
    assert tuple(x.shape[1:]) < image.shape[1:]  # cropped to the brain
    inside = x[0][x[0] != 0]
    assert abs(float(inside.mean())) < 1e-3 and abs(float(inside.std()) - 1) < 1e-2
    # LPS -> RAS flips the first two axes
    assert torch.allclose(x.affine[:3, :3].diagonal(), torch.ones(3, dtype=x.affine.dtype))
    back = geometry.to_input_grid(torch.ones(1, *x.shape[1:]), x, t)
    assert tuple(back.shape[1:]) == image.shape[1:]
    np.testing.assert_array_equal(back[0].numpy() > 0, (image > 0).any(0) | _box_mask(image))


def _box_mask(image: np.ndarray) -> np.ndarray:
    fg = (image > 0).any(0)
    idx = np.nonzero(fg)
    mask = np.zeros_like(fg)
    mask[tuple(slice(i.min(), i.max() + 1) for i in idx)] = True
    return mask


def test_ras_oriented_for_display():
    vol = np.zeros((4, 5, 6))
    vol[0, 0, 0] = 1
    out, zooms = geometry.ras_oriented(vol, np.diag([-2.0, -1.0, 3.0, 1.0]))
    assert out.shape == (4, 5, 6) and out[3, 4, 0] == 1
    np.testing.assert_allclose(zooms, [2, 1, 3])
    out, zooms = geometry.ras_oriented(vol, PERMUTED)
    assert out.shape == (5, 6, 4) and out[0, 5, 0] == 1  # (S, R, P) storage -> (R, A, S)
    np.testing.assert_allclose(zooms, [1.2, 1.0, 2.0])


def test_4d_input_and_explicit_files_round_trip(tmp_path, marker_net):
    """The 4D-NIfTI and explicit-files forms give the same marker in the same header."""
    aff = oblique_affine()
    case = marker_case(tmp_path, aff, (10, 20, 8))
    vols = [np.asarray(nib.load(case / f"{case.name}_{m}.nii.gz").dataobj) for m in BRATS_MODALITIES]
    four = write_nifti(tmp_path / "case4d.nii.gz", np.stack(vols, -1), aff, 2, 1)
    p = Predictor(marker_net, brats_config(), device="cpu")
    pred = p.predict(four)
    assert [tuple(v) for v in np.argwhere(pred.labels)] == [(10, 20, 8)]
    pred.save(tmp_path / "o4.nii.gz")
    _assert_same_header(nib.load(tmp_path / "o4.nii.gz"), nib.load(four))
    files = {m: str(case / f"{case.name}_{m}.nii.gz") for m in BRATS_MODALITIES}
    assert np.array_equal(p.predict(files).labels, pred.labels)
    assert MARKER > 0
