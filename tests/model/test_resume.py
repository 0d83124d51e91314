"""Exact resume: N steps uninterrupted equal k steps, SIGTERM, resume to N — weight for weight."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from bts_monai.data.datamodule import BratsDataModule
from bts_monai.data.sampling import EpochSampler, SeededDataset, sample_seed
from bts_monai.model.callbacks import CheckpointOnStop
from bts_monai.model.module import BratsSegModule, build_network

torch.set_num_threads(1)

NET = {"spatial_dims": 3, "in_channels": 4, "out_channels": 3, "channels": [4, 8], "strides": [2], "dropout": 0.2}
TOTAL_STEPS = 7  # three training cases, one per batch: two epochs and a step


class _StopAt(pl.Callback):
    """Sends this process SIGTERM once training has finished ``step`` steps, as a scheduler would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            signal.raise_signal(signal.SIGTERM)


def _module() -> BratsSegModule:
    torch.manual_seed(0)
    net = build_network("monai.networks.nets.UNet", NET)
    return BratsSegModule(net, optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9), sw_batch_size=8)


def _dm(root: Path, split: Path, workers: int) -> BratsDataModule:
    return BratsDataModule(
        data_root=str(root),
        roi_size=[16, 16, 16],
        num_samples=2,
        batch_size=1,
        val_fraction=0.25,
        split_file=str(split),
        augment=True,
        spatial_augment=True,
        num_workers=workers,
        augment_seed=123,
    )


def _fit(tmp: Path, root: Path, workers: int, callbacks: list, ckpt: Path | None = None) -> BratsSegModule:
    pl.seed_everything(7, verbose=False)
    module = _module()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        precision="32-true",
        max_steps=TOTAL_STEPS,
        deterministic=True,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp),
        callbacks=callbacks,
    )
    trainer.fit(module, _dm(root, tmp.parent / "split.json", workers), ckpt_path=str(ckpt) if ckpt else None)
    assert trainer.global_step == TOTAL_STEPS
    return module


_IDS = {(4, 0): "mid-epoch", (3, 0): "epoch-end", (4, 1): "mid-epoch-1-worker", (3, 1): "epoch-end-1-worker"}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stop_step", "workers"),
    [(4, 0), (3, 0), (4, 1), (3, 1)],
    ids=["mid-epoch", "epoch-end", "mid-epoch-1-worker", "epoch-end-1-worker"],
)
def test_stop_and_resume_gives_the_uninterrupted_weights(
    brats21_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop_step: int, workers: int
) -> None:
    """Random crops, flips, affine, noise and dropout all continue where the stopped run was."""
    if not os.environ.get("BTS_RESUME_CHILD"):
        # The test raises a real SIGTERM in its own process: run it in a fresh interpreter, so the
        # signal meets only this run (inside the whole suite, other libraries' native threads made
        # the in-process signal crash the test process).
        node = f"{__file__}::test_stop_and_resume_gives_the_uninterrupted_weights[{_IDS[(stop_step, workers)]}]"
        env = dict(os.environ, BTS_RESUME_CHILD="1")
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", node]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
        return
    monkeypatch.chdir(tmp_path)
    reference = _fit(tmp_path / "straight", brats21_root, workers, [])

    stopper = CheckpointOnStop(dirpath=str(tmp_path / "ckpt"))
    with pytest.raises(SystemExit):
        _fit(tmp_path / "stopped", brats21_root, workers, [_StopAt(stop_step), stopper])
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == stop_step
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # Lightning gave the handler back

    resumed = _fit(tmp_path / "resumed", brats21_root, workers, [], ckpt=tmp_path / "ckpt" / "last.ckpt")
    ref, got = reference.state_dict(), resumed.state_dict()
    assert ref.keys() == got.keys()
    for key in ref:
        assert torch.equal(ref[key], got[key]), key


def test_samples_depend_on_seed_epoch_and_index_only(brats21_root: Path, tmp_path: Path, monkeypatch) -> None:
    """The same key gives the same patch whatever was drawn before it; the epoch changes it."""
    monkeypatch.chdir(tmp_path)
    dm = _dm(brats21_root, tmp_path / "split.json", 0)
    dm.setup("fit")
    ds = SeededDataset(dm.train_ds, seed=5)
    first = ds[(0, 1)][0]["image"]
    ds[(0, 0)], ds[(3, 2)]  # other draws in between
    assert torch.equal(ds[(0, 1)][0]["image"], first)
    assert not torch.equal(ds[(1, 1)][0]["image"], first)
    assert sample_seed(5, 0, 1) != sample_seed(5, 1, 0)


def test_epoch_sampler_orders_by_seed_and_epoch_and_skips_once() -> None:
    data = list(range(10))
    a, b = EpochSampler(data, seed=3), EpochSampler(data, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    keys = list(a)
    assert keys == list(b) and sorted(i for _, i in keys) == data and {e for e, _ in keys} == {2}
    b.resume(2, 4)
    assert list(b) == keys[4:]
    assert list(b) == keys  # the skip applies to the resumed epoch's first pass only
    b.resume(1, 4)
    assert list(b) == keys  # not this epoch
