"""Issue 20 item 10: a stopped training run loses nothing.

``bts-train fit`` in its own process gets SIGTERM (what schedulers send) after a few steps and
before the first validation: it exits with status 143, leaves a resumable ``last.ckpt`` at the
step it stopped, and ``--ckpt_path last`` continues from that epoch and step (not from 0).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
from step_marker import read_marks  # noqa: E402

pytestmark = pytest.mark.slow


def _command(data_root: Path, run: Path, marks: Path, *extra: str) -> list[str]:
    marker = [{"class_path": "step_marker.StepMarker", "init_args": {"path": str(marks)}}]
    return [
        sys.executable,
        "-m",
        "bts_monai.cli.train",
        "fit",
        "--config",
        str(REPO / "configs" / "demo.yaml"),
        f"--trainer.default_root_dir={run}",
        "--trainer.max_epochs=1000",
        "--trainer.check_val_every_n_epoch=1000",  # no validation before the stop
        "--trainer.num_sanity_val_steps=0",
        "--trainer.precision=32-true",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.callbacks={json.dumps(marker)}",
        "--model.net.init_args.channels=[4, 8]",
        "--model.net.init_args.strides=[2]",
        "--model.net.init_args.num_res_units=0",
        "--model.overlay_cases=0",
        "--data.synthetic=false",
        f"--data.data_root={data_root}",
        f"--data.split_file={run.parent / 'split.json'}",
        "--data.cache=none",
        "--data.num_samples=1",
        *extra,
    ]


def test_sigterm_saves_a_checkpoint_exits_143_and_resumes(brats21_root: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(REPO)]), "OMP_NUM_THREADS": "1"}
    run, marks = tmp_path / "run", tmp_path / "marks.jsonl"
    log = tmp_path / "stderr.txt"
    with open(log, "w") as stderr:  # a file, not a pipe: a full pipe would stall the run
        proc = subprocess.Popen(_command(brats21_root, run, marks), env=env, cwd=tmp_path, stdout=stderr, stderr=stderr)
        try:
            deadline = time.monotonic() + 600
            while not any(m["event"] == "step" and m["step"] >= 2 for m in read_marks(str(marks))):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"training ended or hung before its second step: {log.read_text()[-3000:]}")
                time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
    err = log.read_text()
    assert proc.returncode == 143, err[-3000:]
    assert "stopped by SIGTERM; the run resumes with --ckpt_path last" in err

    seen = read_marks(str(marks))
    assert not [m for m in seen if m["event"] == "validation"]  # stopped before the first validation
    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    last_step = [m for m in seen if m["event"] == "step"][-1]
    assert saved["global_step"] == last_step["step"] >= 2  # saved at the step it stopped
    assert saved["optimizer_states"] and saved["loops"]["fit_loop"]  # the whole training state

    resumed_marks = tmp_path / "resumed.jsonl"
    stop_at = saved["global_step"] + 2
    again = _command(brats21_root, run, resumed_marks, "--ckpt_path=last", f"--trainer.max_steps={stop_at}")
    done = subprocess.run(again, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    marks2 = read_marks(str(resumed_marks))
    start = marks2[0]
    assert start["event"] == "train_start"
    # Where it stopped, not epoch 0 and step 0 (the next epoch when it stopped after an epoch's last step).
    assert start["step"] == saved["global_step"] > 0
    assert start["epoch"] in (last_step["epoch"], last_step["epoch"] + 1)
    assert [m["step"] for m in marks2 if m["event"] == "step"] == [saved["global_step"] + 1, stop_at]
