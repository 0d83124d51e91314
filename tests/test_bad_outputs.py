"""Issue 20 item 9, outputs: a read-only folder, a disk that fills up, an unknown dataset name,
each refused through the CLI in one line (exit 2) with nothing left behind."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import pytest

from bts_monai import fileio
from bts_monai.cli.datalist import main as datalist
from bts_monai.cli.infer import main as infer
from bts_monai.data.synthetic import make_brats_case

sys.path.insert(0, str(Path(__file__).parent / "inference"))
from infer_helpers import brats_config, save_tiny_checkpoint  # noqa: E402

CASE = "BraTS2021_00043"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "run.ckpt", brats_config())


@pytest.fixture()
def case(tmp_path) -> Path:
    return make_brats_case(tmp_path / "in", CASE, shape=(20, 24, 18), seed=4)


def _outputs(out: Path) -> list[str]:
    return ["-o", str(out / "s.nii.gz"), "--report", str(out / "r.json"), "--overlay", str(out / "o.png"), "-q"]


def test_read_only_output_folder_refused_before_inference(tmp_path, ckpt, case, monkeypatch, capsys, one_line_error):
    """Root ignores file modes, so the folder's refusal is simulated where files are created."""
    from bts_monai.inference import predictor

    out = tmp_path / "ro"
    out.mkdir()
    real_open = os.open

    def read_only(path, flags, *args):
        if flags & os.O_CREAT and Path(path).parent == out:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, *args)

    monkeypatch.setattr(fileio.os, "open", read_only)
    monkeypatch.setattr(predictor, "load_case", lambda *a: pytest.fail("read the case before checking outputs"))
    assert infer([str(case), "--ckpt", str(ckpt), *_outputs(out)]) == 2
    one_line_error(str(out / "s.nii.gz"), "read-only")
    assert list(out.iterdir()) == []


def test_disk_full_while_writing_leaves_nothing(tmp_path, ckpt, case, monkeypatch, capsys, one_line_error):
    """The disk fills up on the overlay, after the segmentation was written to its temporary name."""
    out = tmp_path / "out"
    real = Path.write_bytes

    def full(self, data):
        if self.name.endswith(".png"):
            real(self, data[:100])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    assert infer([str(case), "--ckpt", str(ckpt), *_outputs(out)]) == 2
    one_line_error(str(out / "o.png"), "the disk is full")
    assert list(out.iterdir()) == []  # neither the finished segmentation nor any temporary


def test_unknown_dataset_name_is_a_usage_error(tmp_path, case, capsys):
    with pytest.raises(SystemExit) as stop:
        datalist([str(case.parent), "--dataset", "brats2099", "-o", str(tmp_path / "d.json")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "invalid choice: 'brats2099'" in err[-1] and "Traceback" not in "".join(err)
    assert not (tmp_path / "d.json").exists()
