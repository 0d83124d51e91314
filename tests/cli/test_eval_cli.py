"""``bts-eval``: exit codes, printed summary, CSV and plot files, one-line errors."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bts_monai.cli.eval import main
from bts_monai.labels import get_scheme

B21 = get_scheme("brats2021")
SHAPE = (16, 16, 12)


def label_map(shift: int = 0) -> np.ndarray:
    """WT, TC and ET as nested boxes in BraTS 2021 labels."""
    masks = np.zeros((B21.num_regions, *SHAPE), dtype=bool)
    boxes = {"WT": (3, 13), "TC": (5, 11), "ET": (6, 10)}
    for index, name in enumerate(B21.region_names):
        lo, hi = boxes[name]
        masks[index, lo + shift : hi + shift, lo:hi, 2:10] = True
    return B21.from_regions(masks)


def save(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


@pytest.fixture()
def dataset(tmp_path: Path) -> tuple[Path, Path]:
    """Ground truth for cases a, b, c in case folders; predictions for a, b and a stray z."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    for case in "abc":
        save(gt / case / f"{case}_seg.nii.gz", label_map())
    for case in "abz":
        save(pred / f"{case}.nii.gz", label_map(shift=1))
    return pred, gt


def test_eval_writes_csv_and_plot_and_lists_unmatched(
    dataset: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pred, gt = dataset
    out_csv, out_png = tmp_path / "res" / "metrics.csv", tmp_path / "res" / "metrics.png"
    code = main([str(pred), str(gt), "-o", str(out_csv), "--plot", str(out_png), "--lesion-wise", "--min-volume", "5"])
    stdout = capsys.readouterr().out
    assert code == 0
    assert "2 case(s), label scheme brats2021" in stdout
    for region in B21.region_names:
        assert any(line.startswith(region) for line in stdout.splitlines())
    assert "lesion_dice" in stdout
    assert "ground truth without prediction" in stdout and "  c  " in stdout
    assert "prediction(s) without ground truth" in stdout and "  z  " in stdout
    with open(out_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len([r for r in rows if r["case_id"] in ("a", "b")]) == 6
    assert {r["statistic"] for r in rows if r["case_id"] == "summary"} == {"mean", "std", "median", "p25", "p75"}
    assert out_png.stat().st_size > 0


def test_geometry_mismatch_exits_2_naming_both_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt = save(tmp_path / "gt" / "a_seg.nii.gz", label_map())
    pred = save(tmp_path / "pred" / "a.nii.gz", label_map(), affine=np.diag([1.0, 1.0, 2.0, 1.0]))
    code = main([str(pred), str(gt)])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bts-eval: error:")
    assert str(pred) in err and str(gt) in err


def test_bad_input_and_bad_arguments_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "missing"), str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([str(tmp_path), str(tmp_path), "--scheme", "nonsense"]) == 2
    assert main([str(tmp_path), str(tmp_path), "--dilation", "-1"]) == 2
    assert main(["--help"]) == 0


def test_module_entry_point(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    run = [sys.executable, "-m", "bts_monai.cli.eval"]
    done = subprocess.run([*run, "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and "--lesion-wise" in done.stdout
    done = subprocess.run([*run, "only-one-argument"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and "usage: bts-eval" in done.stderr


def test_a_failing_plot_leaves_no_csv(
    dataset: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 20 item 9: the CSV and the plot appear together or not at all; a plot format
    matplotlib cannot write is refused before the scoring."""
    from matplotlib.figure import Figure

    pred, gt = dataset
    out = tmp_path / "res"
    assert main([str(pred), str(gt), "-o", str(out / "m.csv"), "--plot", str(out / "m.xyz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "m.xyz: cannot plot to .xyz files" in err[0]
    assert not out.exists() or list(out.iterdir()) == []

    def broken(self, *args, **kwargs):
        raise RuntimeError("no font")  # a failure while drawing, after the CSV was staged

    monkeypatch.setattr(Figure, "savefig", broken)
    assert main([str(pred), str(gt), "-o", str(out / "m.csv"), "--plot", str(out / "m.png")]) == 2
    # the scoring's log lines (a prediction without ground truth) come first; one error line
    log_levels = ("DEBUG ", "INFO ", "WARNING ")
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith(log_levels)]
    assert len(err) == 1 and "m.png: cannot draw the plot (RuntimeError: no font)" in err[0]
    assert not out.exists() or list(out.iterdir()) == []
