"""``bts-preprocess``: folder or datalist in, cache out; user errors are one line and exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bts_monai.cli.preprocess import main
from bts_monai.data.cache import CacheSettings, PreprocessedCache
from bts_monai.data.discovery import make_datalist, write_datalist


def test_preprocesses_a_folder_then_reuses_it(brats21_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    out = tmp_path / "cache"
    assert main([str(brats21_root), "-o", str(out), "--workers", "1", "--no-progress"]) == 0
    line = capsys.readouterr().out.strip()
    assert "4 cases" in line and "built 4, reused 0" in line and "x the" in line
    cache = PreprocessedCache(out, CacheSettings())
    assert len(cache.case_ids()) == 4
    assert json.loads((cache.root / "settings.json").read_text())["digest"] == cache.settings.digest
    assert main([str(brats21_root), "-o", str(out), "--no-progress"]) == 0
    assert "built 0, reused 4" in capsys.readouterr().out


def test_datalist_modalities_and_spacing_make_their_own_cache(
    brats21_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
):
    dl = tmp_path / "datalist.json"
    write_datalist(make_datalist(brats21_root, val_fraction=0.25), dl)
    out = tmp_path / "cache"
    argv = ["--datalist", str(dl), "-o", str(out), "--workers", "2", "--no-progress"]
    argv += ["--modalities", "flair", "t1ce", "--spacing", "2", "2", "2", "--label-mode", "labels"]
    assert main(argv) == 0
    settings = CacheSettings(modalities=("flair", "t1ce"), spacing=(2.0, 2.0, 2.0), label_mode="labels")
    cache = PreprocessedCache(out, settings)
    ids = cache.case_ids()
    assert len(ids) == 4
    meta = cache.meta(ids[0])
    assert meta["image_shape"][0] == 2 and meta["resampled"] and meta["spacing"] == [2.0, 2.0, 2.0]
    assert meta["image_shape"][1] <= 24  # 48 voxels of 1 mm -> at most 24 of 2 mm
    assert [p.name for p in out.iterdir()] == [settings.digest]


def test_bad_input_is_one_line_and_status_2(tmp_path: Path, lgg_root: Path, capsys: pytest.CaptureFixture):
    assert main([str(tmp_path / "nowhere"), "-o", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert "nowhere" in err and "does not exist" in err and len(err.splitlines()) == 1
    assert main([str(lgg_root), "-o", str(tmp_path / "c"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "LGG" in err and len(err.splitlines()) == 1
    (tmp_path / "broken.json").write_text("{not json")
    assert main(["--datalist", str(tmp_path / "broken.json"), "-o", str(tmp_path / "c")]) == 2
    assert "broken.json" in capsys.readouterr().err


def test_argument_errors_exit_2(brats21_root: Path, tmp_path: Path):
    with pytest.raises(SystemExit) as info:
        main(["-o", str(tmp_path / "c")])  # neither DATA_ROOT nor --datalist
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main([str(brats21_root), "-o", str(tmp_path / "c"), "--modalities", "dwi"])
    assert info.value.code == 2


def test_nan_voxels_refused_and_nothing_left(tmp_path, capsys):
    """Issue 20: a case with NaN voxels is refused (exit 2), not cached as NaNs, and no settings.json stays."""
    import nibabel as nib
    import numpy as np

    from bts_monai.cli.preprocess import main as preprocess
    from bts_monai.data.synthetic import make_brats_case

    case = make_brats_case(tmp_path / "data", "BraTS2021_00007", shape=(20, 24, 16), seed=0)
    t1 = case / "BraTS2021_00007_t1.nii.gz"
    img = nib.load(t1)
    vol = np.asarray(img.dataobj).astype(np.float32)
    vol[10, 12, 8] = np.nan
    nib.save(nib.Nifti1Image(vol, img.affine), t1)
    out = tmp_path / "cache"
    assert preprocess([str(tmp_path / "data"), "-o", str(out), "--workers", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "error: " in err and str(t1) in err and "NaN" in err
    assert not out.exists()
