"""``lightning`` / ``bts-train``: this package's LightningCLI (fit, validate, test, predict).

``lightning fit --config configs/demo.yaml`` trains; ``lightning fit --config X --print_config``
prints the complete configuration; ``--ckpt_path last`` resumes the run in ``default_root_dir``.

Besides the trainer, model and data sections, the CLI adds configurable callbacks that every run
has: ``checkpoint`` (best by validation mean Dice, and last), ``early_stopping``,
``learning_curve`` and ``overlays`` (PNGs in the run folder), and ``stop_checkpoint`` (on SIGTERM,
``checkpoints/last.ckpt`` is saved and the command exits with status 143). Unless the config names loggers,
a run folder gets a CSV and a TensorBoard log; unless it names a ``precision``, one is chosen for
the hardware (:func:`bts_monai.model.precision.auto_precision`).

Run folder (``trainer.default_root_dir``)::

    checkpoints/best-epochNNN-dice0.XXXX.ckpt, last.ckpt
    logs/version_N/metrics.csv, config.yaml, hparams.yaml, tensorboard/
    learning_curve.png, overlays/<case>.png
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException

from bts_monai.cli._common import EXIT_BAD_INPUT, setup_logging
from bts_monai.data.datamodule import BratsDataModule
from bts_monai.errors import BtsInputError
from bts_monai.model.callbacks import CheckpointOnStop, LearningCurvePlot, PredictionOverlays
from bts_monai.model.module import BratsSegModule
from bts_monai.model.precision import resolve_precision

__all__ = ["BtsLightningCLI", "default_loggers", "main"]

logger = logging.getLogger(__name__)

DEFAULT_ROOT_DIR = "runs/bts"
EXIT_SIGTERM = 128 + int(signal.SIGTERM)
"""Exit status after a SIGTERM (143), as a shell reports a process the signal killed."""


def default_loggers(root_dir: str) -> list[Any]:
    """CSV and TensorBoard loggers sharing ``<root_dir>/logs/version_N`` (a new N per invocation)."""
    csv = CSVLogger(root_dir, name="logs")
    tensorboard = TensorBoardLogger(root_dir, name="logs", version=f"version_{csv.version}", sub_dir="tensorboard")
    return [csv, tensorboard]


class BtsLightningCLI(LightningCLI):
    """LightningCLI with this project's callbacks, run folder layout and automatic precision."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Add the callbacks every run has, with defaults a config can change."""
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/dice_mean",
                "checkpoint.mode": "max",
                # last.ckpt is CheckpointOnStop's, written after every epoch: Lightning's save_last
                # copies only a top-k save, i.e. the best epoch (see CheckpointOnStop).
                "checkpoint.save_last": False,
                "checkpoint.save_top_k": 1,
                "checkpoint.filename": "best-epoch{epoch:03d}-dice{val/dice_mean:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.set_defaults(
            {"early_stopping.monitor": "val/dice_mean", "early_stopping.mode": "max", "early_stopping.patience": 5}
        )
        parser.add_lightning_class_args(LearningCurvePlot, "learning_curve")
        parser.add_lightning_class_args(PredictionOverlays, "overlays")
        parser.add_lightning_class_args(CheckpointOnStop, "stop_checkpoint")

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """Fill in the run folder's loggers and checkpoint folder, and the precision, when not configured."""
        config = self._get(self.config_init, "trainer", default={})
        root = config.get("default_root_dir") or DEFAULT_ROOT_DIR
        kwargs.setdefault("default_root_dir", root)
        if config.get("logger") in (None, True):
            kwargs["logger"] = default_loggers(root)
        kwargs["precision"] = resolve_precision(config.get("precision"), config.get("accelerator"))
        # A fixed checkpoint folder (not per log version) is what lets `--ckpt_path last` find the run.
        checkpoint = self._get(self.config_init, "checkpoint", default=None)
        if isinstance(checkpoint, ModelCheckpoint) and checkpoint.dirpath is None:
            checkpoint.dirpath = os.path.realpath(os.path.join(root, "checkpoints"))
        return super().instantiate_trainer(**kwargs)


def run_cli(args: Sequence[str] | dict[str, Any] | None = None, run: bool = True) -> BtsLightningCLI:
    """Build (and with ``run``, execute) the CLI; ``args`` as on the command line, or ``sys.argv``."""
    return BtsLightningCLI(
        BratsSegModule,
        BratsDataModule,
        trainer_defaults={"default_root_dir": DEFAULT_ROOT_DIR},
        seed_everything_default=0,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"parser_mode": "yaml"},
        args=list(args) if isinstance(args, (list, tuple)) else args,
        run=run,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lightning`` and ``bts-train``; bad input exits with status 2 and one line.

    A SIGTERM (a scheduler's stop, ``scancel``, ``kill``) saves ``last.ckpt`` and exits with 143.
    """
    setup_logging()
    try:
        run_cli(argv)
    except BtsInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except SIGTERMException:
        print("stopped by SIGTERM; the run resumes with --ckpt_path last", file=sys.stderr)
        return EXIT_SIGTERM
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
