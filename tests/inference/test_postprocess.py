"""Post-processing of the thresholded masks: the rule, the model's default, the override, the report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from infer_helpers import MARKER, MarkerNet, brain_volume, brats_config, write_nifti

from bts_monai.data.discovery import BRATS_MODALITIES
from bts_monai.errors import BtsInputError
from bts_monai.inference.postprocess import largest_component, postprocess_masks
from bts_monai.inference.predictor import Predictor
from bts_monai.model.packaged import MODELS_DIR, load_model_folder

BIG = (slice(8, 11), slice(20, 23), slice(6, 9))  # 27 voxels
SMALL = (20, 10, 16)  # one voxel, far from BIG


def test_largest_component_keeps_the_biggest_blob_of_the_union():
    masks = np.zeros((3, 12, 12, 12), bool)
    masks[0, 1:5, 1:5, 1:5] = True  # WT: 64 voxels
    masks[1, 2:4, 2:4, 2:4] = True  # TC inside it
    masks[2, 9:11, 9:11, 9:11] = True  # ET alone: 8 voxels, another component
    out = postprocess_masks(masks, "largest_component")
    np.testing.assert_array_equal(out[0], masks[0])
    np.testing.assert_array_equal(out[1], masks[1])
    assert not out[2].any()
    np.testing.assert_array_equal(postprocess_masks(masks, "none"), masks)
    assert not largest_component(np.zeros((4, 4, 4), bool)).any()
    diagonal = np.zeros((3, 3, 3), bool)
    diagonal[0, 0, 0] = diagonal[1, 1, 1] = True  # corners touch: not face-connected
    assert largest_component(diagonal).sum() == 1
    with pytest.raises(ValueError, match="post-processing 'biggest'"):
        postprocess_masks(masks, "biggest")


def _two_blob_case(root: Path, affine: np.ndarray) -> Path:
    case = root / "BraTS2021_00042"
    for i, m in enumerate(BRATS_MODALITIES):
        vol = brain_volume(seed=i)
        if m == "flair":
            assert vol[BIG].min() > 0 and vol[SMALL] > 0
            vol[BIG] = MARKER
            vol[SMALL] = MARKER
        write_nifti(case / f"{case.name}_{m}.nii.gz", vol.astype(np.int16), affine)
    return case


def test_predictor_applies_the_models_rule_and_the_override(tmp_path):
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    case = _two_blob_case(tmp_path, affine)
    raw = Predictor(MarkerNet(), brats_config(), device="cpu", backend="torch").predict(case)
    assert raw.labels[BIG].all() and raw.labels[SMALL] > 0
    model = Predictor(MarkerNet(), brats_config(postprocess="largest_component"), device="cpu", backend="torch")
    assert model.postprocess == "largest_component"
    kept = model.predict(case)
    assert kept.labels[BIG].all() and kept.labels[SMALL] == 0
    assert (kept.labels > 0).sum() == (raw.labels > 0).sum() - 1
    np.testing.assert_array_equal(kept.probabilities, raw.probabilities)  # probability maps stay raw
    assert model.provenance()["postprocess"] == "largest_component"
    off = Predictor(MarkerNet(), brats_config(postprocess="largest_component"), device="cpu", postprocess="none")
    np.testing.assert_array_equal(off.predict(case).labels, raw.labels)


def test_packaged_rule_is_checked(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(MODELS_DIR / "lgg_unet2d", folder)
    meta = json.loads((folder / "metadata.json").read_text())
    meta["inference"]["postprocess"] = "erode_everything"
    (folder / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(BtsInputError, match="post-processing 'erode_everything'"):
        load_model_folder(folder)
