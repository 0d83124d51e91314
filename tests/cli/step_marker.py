"""A test-only Lightning callback: one JSON line per event (training start, each step, validation),
so a test driving ``bts-train`` in a subprocess knows where the run is and where it resumed."""

from __future__ import annotations

import json
from typing import Any

import pytorch_lightning as pl


class StepMarker(pl.Callback):
    """Appends ``{"event": ..., "epoch": ..., "step": ...}`` lines to ``path``, flushed at once."""

    def __init__(self, path: str) -> None:
        self.path = path

    def _mark(self, trainer: pl.Trainer, event: str) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"event": event, "epoch": trainer.current_epoch, "step": trainer.global_step}) + "\n")
            fh.flush()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._mark(trainer, "train_start")

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self._mark(trainer, "step")

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._mark(trainer, "validation")


def read_marks(path: str) -> list[dict[str, Any]]:
    """The lines written so far (none when the file does not exist yet)."""
    try:
        with open(path) as fh:
            return [json.loads(line) for line in fh if line.endswith("\n")]
    except FileNotFoundError:
        return []
