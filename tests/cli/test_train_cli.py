"""The training CLI: configs parse and round-trip, a run leaves its files, resume, DDP, exit codes."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from bts_monai.cli.train import main, run_cli
from bts_monai.model.module import _RNG_KEY, BratsSegModule

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """LightningCLI warns when it sees both ``args`` and pytest's own command line."""
    monkeypatch.setattr(sys, "argv", ["lightning"])


def tiny_args(data_root: Path, run_dir: Path, *extra: str) -> list[str]:
    """The demo config shrunk to seconds: 4 tiny cases, a 2-level U-Net with 4 channels."""
    return [
        "fit",
        "--config",
        str(REPO / "configs" / "demo.yaml"),
        f"--trainer.default_root_dir={run_dir}",
        "--trainer.max_epochs=2",
        "--trainer.check_val_every_n_epoch=1",
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--model.net.init_args.channels=[4, 8]",
        "--model.net.init_args.strides=[2]",
        "--model.net.init_args.num_res_units=0",
        "--model.overlay_cases=1",
        "--data.synthetic=false",
        f"--data.data_root={data_root}",
        f"--data.split_file={run_dir.parent / 'split.json'}",
        "--data.cache=none",
        "--data.num_samples=1",
        *extra,
    ]


def _metrics_rows(run_dir: Path, version: int = 0) -> list[dict[str, str]]:
    with open(run_dir / "logs" / f"version_{version}" / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_print_config_parses_back(config: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """Every shipped config prints a complete config, and the printed config prints the same again."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    first = capsys.readouterr().out
    parsed = yaml.safe_load(first)
    for section in ("trainer", "model", "data", "checkpoint", "early_stopping", "learning_curve", "overlays"):
        assert section in parsed, section
    assert parsed["model"]["net"]["class_path"].startswith("monai.networks.nets.")
    assert parsed["trainer"]["precision"] is None  # no config hard-codes a precision
    dumped = tmp_path / "printed.yaml"
    dumped.write_text(first)
    with pytest.raises(SystemExit):
        run_cli(["fit", "--config", str(dumped), "--print_config"])
    assert yaml.safe_load(capsys.readouterr().out) == parsed


@pytest.mark.slow
def test_fit_leaves_checkpoints_logs_and_pictures(brats21_root: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    cli = run_cli(tiny_args(brats21_root, run))
    assert cli.trainer.current_epoch == 2
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and any(n.startswith("best-epoch") for n in ckpts)
    rows = _metrics_rows(run)
    val = [r for r in rows if r.get("val/dice_mean")]
    assert len(val) == 2
    assert {"val/dice_WT", "val/hd95_ET", "val/iou_TC", "val/loss"} <= set(rows[0])
    assert any(r.get("train/loss_epoch") for r in rows)
    assert (run / "logs" / "version_0" / "config.yaml").exists()
    assert list((run / "logs" / "version_0" / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / "learning_curve.png").read_bytes()[:8] == PNG_MAGIC
    overlays = list((run / "overlays").glob("*.png"))
    assert len(overlays) == 1 and overlays[0].read_bytes()[:8] == PNG_MAGIC


@pytest.mark.slow
def test_last_checkpoint_is_the_last_epoch_not_the_best(brats21_root: Path, tmp_path: Path, monkeypatch) -> None:
    """A fixed schedule ships ``last.ckpt``: it must hold the final weights even when the best
    (monitored) epoch is an earlier one. Monitoring "epoch" with mode min makes epoch 0 the best."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    cli = run_cli(tiny_args(brats21_root, run, "--checkpoint.monitor=epoch", "--checkpoint.mode=min"))
    (best_path,) = (run / "checkpoints").glob("best-*")
    assert best_path.name.startswith("best-epoch000")
    best = torch.load(best_path, map_location="cpu", weights_only=True)
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert best["epoch"] == 0 and last["epoch"] == 1 and last["global_step"] == cli.trainer.global_step
    final = cli.model.state_dict()
    assert last["state_dict"].keys() == final.keys()
    for key, value in final.items():
        assert torch.equal(last["state_dict"][key], value), key


@pytest.mark.slow
def test_resume_continues_the_run(brats21_root: Path, tmp_path: Path, monkeypatch) -> None:
    """Stop after epoch 1, resume with --ckpt_path last: epoch, step, optimizer and curve continue."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    args = tiny_args(brats21_root, run, "--trainer.precision=32-true")
    first = run_cli(args)
    steps_per_epoch = first.trainer.global_step // 2
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 1
    saved_steps = {int(s["step"]) for s in last["optimizer_states"][0]["state"].values()}
    assert saved_steps == {2 * steps_per_epoch}

    second = run_cli([*args, "--trainer.max_epochs=3", "--ckpt_path=last"])
    trainer = second.trainer
    assert trainer.current_epoch == 3
    assert trainer.global_step == 3 * steps_per_epoch  # resumed, not restarted
    state = trainer.optimizers[0].state_dict()["state"]
    assert {int(s["step"]) for s in state.values()} == {3 * steps_per_epoch}
    # The second invocation logs to a new version folder, but the curve covers the whole run.
    assert [r for r in _metrics_rows(run, 1) if r.get("val/dice_mean")]
    curve = next(cb for cb in trainer.callbacks if type(cb).__name__ == "LearningCurvePlot")
    assert [h["epoch"] for h in curve.history] == [0.0, 1.0, 2.0]


def test_rng_state_is_restored_before_the_next_step(tmp_path: Path) -> None:
    from bts_monai.model.module import build_network

    module = BratsSegModule(
        build_network(
            "monai.networks.nets.UNet",
            {"spatial_dims": 3, "in_channels": 4, "out_channels": 3, "channels": [4, 8], "strides": [2]},
        )
    )
    ckpt: dict = {}
    module.on_save_checkpoint(ckpt)
    expected = torch.rand(3)
    torch.rand(10)  # the streams move on
    module.on_load_checkpoint(ckpt)
    module.on_train_batch_start({}, 0)
    assert torch.equal(torch.rand(3), expected)
    module.on_train_batch_start({}, 1)  # only the first step after a load restores
    assert not torch.equal(torch.rand(3), expected)
    assert _RNG_KEY in ckpt


def test_bad_input_exits_2_with_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    code = main(
        [
            "fit",
            "--config",
            str(REPO / "configs" / "demo.yaml"),
            "--data.synthetic=false",
            f"--data.data_root={tmp_path / 'missing'}",
            f"--trainer.default_root_dir={tmp_path / 'run'}",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: ") and "missing" in err[-1] and "does not exist" in err[-1]


@pytest.mark.slow
def test_ddp_two_cpu_processes_reduce_metrics(brats21_root: Path, tmp_path: Path) -> None:
    """Lightning's DDP strategy (gloo) on 2 CPU processes: each case is scored once, on all ranks."""
    run = tmp_path / "run"
    args = tiny_args(
        brats21_root,
        run,
        "--trainer.strategy=ddp",
        "--trainer.devices=2",
        "--trainer.accelerator=cpu",
        "--trainer.precision=32-true",
        "--trainer.max_epochs=1",
        "--data.val_fraction=0.5",
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "bts_monai.cli.train", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "distributed_backend=gloo" in proc.stderr + proc.stdout
    val = [r for r in _metrics_rows(run) if r.get("val/cases")]
    # Two validation cases, one per process: the logged numbers are over both.
    assert [float(r["val/cases"]) for r in val] == [2.0]
    assert (run / "checkpoints" / "last.ckpt").exists()
