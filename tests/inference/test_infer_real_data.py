"""bts-infer on real BraTS 2018 and LGG cases ($BTS_REAL_DATA): outputs in the input's exact grid."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import tifffile

from bts_monai.cli.infer import main
from bts_monai.labels import get_scheme

pytestmark = [pytest.mark.real_data, pytest.mark.slow]


def test_real_brats_case(real_data, tiny_ckpt_roi128, tmp_path):
    case = real_data / "brats2018" / "Brats18_CBICA_ABM_1"
    out = tmp_path / "out.nii.gz"
    args = [str(case), "--ckpt", str(tiny_ckpt_roi128), "-o", str(out), "--report", str(tmp_path / "r.json")]
    assert main([*args, "--overlay", str(tmp_path / "o.png"), "-q"]) == 0
    seg, ref = nib.load(out), nib.load(case / "Brats18_CBICA_ABM_1_flair.nii.gz")
    assert seg.shape == ref.shape == (240, 240, 155)
    np.testing.assert_array_equal(seg.affine, ref.affine)
    for code in ("qform_code", "sform_code"):
        assert seg.header[code] == ref.header[code]
    assert set(np.unique(np.asarray(seg.dataobj))) <= set(get_scheme("brats2018").all_values)
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["voxel_size_mm"] == [1.0, 1.0, 1.0]
    assert (tmp_path / "o.png").stat().st_size > 1000


def test_real_lgg_patient(real_data, tmp_path, lgg_ckpt_tiny):
    pdir = real_data / "lgg" / "kaggle_3m" / "TCGA_CS_4942_19970222"
    out = tmp_path / "seg.tif"
    assert main([str(pdir), "--ckpt", str(lgg_ckpt_tiny), "-o", str(out), "-q"]) == 0
    masks = tifffile.imread(out)
    assert masks.shape == (20, 256, 256) and masks.dtype == np.uint8
    assert set(np.unique(masks)) <= set(get_scheme("lgg").all_values)
