"""``bts-demo``, the README's first command, in a fresh process as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import pytest

pytestmark = pytest.mark.slow


def test_demo_runs_its_four_steps_quietly(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    run = subprocess.run(
        [sys.executable, "-m", "bts_monai.cli.demo", "--workdir", str(work)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    for step in ("[1/4]", "[2/4]", "[3/4]", "[4/4]"):
        assert step in run.stdout, out
    # the synthetic sample's volumes mean nothing (the model was trained on real MRI): it says so
    assert "a synthetic sample" in run.stdout and "--case" in run.stdout, out
    # MONAI's notices about its absent GPU DICOM decoder are noise a CPU user cannot act on
    assert "nvImageCodec" not in out and "NvImgCodec" not in out, out
    (seg,) = (work / "segmentation").glob("*_seg.nii.gz")
    (flair,) = (work / "sample").rglob(f"{seg.name.removesuffix('_seg.nii.gz')}_flair.nii.gz")
    assert nib.load(seg).shape == nib.load(flair).shape
    assert (work / "segmentation" / seg.name.replace("_seg.nii.gz", "_report.json")).is_file()
