"""Callbacks of every training run: pictures in the run folder, and a checkpoint when stopped.

* :class:`LearningCurvePlot` — ``learning_curve.png``: loss and mean Dice per epoch, train and
  validation, redrawn after every epoch. Its history is part of the checkpoint, so a resumed run
  keeps drawing the whole curve.
* :class:`PredictionOverlays` — ``overlays/<case>.png``: for the first few validation cases, the
  slice with most tumour with the ground truth beside the prediction, one colour per region.
* :class:`CheckpointOnStop` — ``checkpoints/last.ckpt`` when a scheduler stops the run (SIGTERM),
  wherever in the epoch it is, so ``--ckpt_path last`` continues instead of restarting.

The pictures are drawn only on the global-zero process and write atomically (temporary file, then rename), so
a viewer never sees half a PNG. They use matplotlib's object API, never pyplot's global state.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

__all__ = ["CheckpointOnStop", "LearningCurvePlot", "PredictionOverlays", "REGION_COLOURS", "save_figure_atomic"]

logger = logging.getLogger(__name__)

REGION_COLOURS: dict[str, tuple[float, float, float]] = {
    "WT": (0.20, 0.80, 0.20),
    "TC": (1.00, 0.85, 0.10),
    "ET": (0.90, 0.10, 0.10),
    "RC": (0.20, 0.50, 1.00),
    "abnormality": (0.95, 0.25, 0.60),
}
"""Overlay colour of each region; other names cycle through :data:`_EXTRA_COLOURS`."""

_EXTRA_COLOURS = [(0.6, 0.3, 0.9), (0.1, 0.8, 0.8), (1.0, 0.5, 0.0), (0.5, 0.5, 0.5)]


def _run_dir(trainer: pl.Trainer, folder: str | None) -> Path:
    return Path(folder) if folder else Path(trainer.default_root_dir)


def save_figure_atomic(fig: Any, path: str | os.PathLike[str], dpi: int = 100) -> None:
    """Save a matplotlib figure as PNG via a temporary file in the same folder."""
    from bts_monai.fileio import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png", bbox_inches="tight"))


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _value(metrics: dict[str, Any], *keys: str) -> float | None:
    for key in keys:
        if key in metrics:
            v = float(metrics[key])
            return v if np.isfinite(v) else None
    return None


class LearningCurvePlot(Callback):
    """Redraw ``learning_curve.png`` (loss and mean Dice per epoch, train and val) after every epoch.

    Args:
        folder: where to write it (default: the trainer's ``default_root_dir``, the run folder).
        filename: the PNG's name.
    """

    def __init__(self, folder: str | None = None, filename: str = "learning_curve.png") -> None:
        self.folder = folder
        self.filename = filename
        self.history: list[dict[str, float | None]] = []
        self._validated_epoch: int | None = None

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Note that this epoch has validation numbers (validation may run every n epochs)."""
        if not trainer.sanity_checking:
            self._validated_epoch = trainer.current_epoch

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Record this epoch's numbers (validation has run by now) and redraw."""
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        validated = self._validated_epoch == trainer.current_epoch
        row = {
            "epoch": float(trainer.current_epoch),
            "train_loss": _value(m, "train/loss_epoch", "train/loss"),
            "val_loss": _value(m, "val/loss") if validated else None,
            "train_dice": _value(m, "train/dice_mean"),
            "val_dice": _value(m, "val/dice_mean") if validated else None,
        }
        self.history = [h for h in self.history if h["epoch"] != row["epoch"]] + [row]
        if trainer.is_global_zero:
            try:
                self.draw(_run_dir(trainer, self.folder) / self.filename)
            except Exception as exc:  # a picture must never stop a training run
                logger.warning("could not draw the learning curve: %s", exc)

    def draw(self, path: str | os.PathLike[str]) -> None:
        """Draw the recorded history to ``path``."""
        fig = _figure(10, 4)
        ax_loss, ax_dice = fig.subplots(1, 2)
        epochs = [h["epoch"] for h in self.history]
        for ax, key, title in ((ax_loss, "loss", "loss (DiceCE)"), (ax_dice, "dice", "mean Dice")):
            for split, style in (("train", "-o"), ("val", "-s")):
                ys = [h[f"{split}_{key}"] for h in self.history]
                pts = [(e, y) for e, y in zip(epochs, ys) if y is not None]
                if pts:
                    ax.plot(*zip(*pts), style, label=split, markersize=3)
            ax.set_xlabel("epoch")
            ax.set_title(title)
            ax.grid(alpha=0.3)
            ax.legend()
        ax_dice.set_ylim(0, 1)
        save_figure_atomic(fig, path)

    def state_dict(self) -> dict[str, Any]:
        """The history, kept in checkpoints so a resumed run draws the whole curve."""
        return {"history": [dict(h) for h in self.history]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the history."""
        self.history = [dict(h) for h in state_dict.get("history", [])]


def _colour(name: str, index: int) -> tuple[float, float, float]:
    return REGION_COLOURS.get(name, _EXTRA_COLOURS[index % len(_EXTRA_COLOURS)])


def _paint(ax: Any, image: np.ndarray, masks: np.ndarray, names: Sequence[str], title: str) -> None:
    img = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(img, [1, 99]) if img.size else (0.0, 1.0)
    img = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.repeat(img.T[..., None], 3, axis=-1)  # transpose: rows = second array axis, like a radiologist's view
    # Largest regions first, so nested smaller ones (ET inside TC inside WT) stay visible.
    order = sorted(range(len(names)), key=lambda i: -int(masks[i].sum()))
    for i in order:
        m = masks[i].T.astype(bool)
        rgb[m] = 0.45 * rgb[m] + 0.55 * np.asarray(_colour(names[i], i))
    ax.imshow(rgb, origin="lower")
    ax.set_title(title, fontsize=9)
    ax.axis("off")


class PredictionOverlays(Callback):
    """Write ``overlays/<case>.png`` (ground truth next to prediction) for a few validation cases.

    The module hands over one slice per case in ``validation_step``'s output (``"overlay"``); how
    many cases is the module's ``overlay_cases``. Files are refreshed every ``every_n_epochs``
    validation epochs and named after the case, so the folder shows the latest state.

    Args:
        folder: the run folder (default: the trainer's ``default_root_dir``); pictures go to its
            ``overlays/`` subfolder.
        every_n_epochs: redraw every this many epochs.
    """

    def __init__(self, folder: str | None = None, every_n_epochs: int = 1) -> None:
        self.folder = folder
        self.every_n_epochs = max(1, every_n_epochs)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Draw the overlay the module returned for this case, if any."""
        if trainer.sanity_checking or not trainer.is_global_zero or not isinstance(outputs, dict):
            return
        payload = outputs.get("overlay")
        if payload is None or trainer.current_epoch % self.every_n_epochs:
            return
        path = _run_dir(trainer, self.folder) / "overlays" / f"{_safe_name(payload['case_id'])}.png"
        try:
            self.draw(payload, path, epoch=trainer.current_epoch)
        except Exception as exc:  # a picture must never stop a training run
            logger.warning("could not draw the overlay of %s: %s", payload["case_id"], exc)

    @staticmethod
    def draw(payload: dict[str, Any], path: str | os.PathLike[str], epoch: int | None = None) -> None:
        """Draw one case: image with reference regions | image with predicted regions."""
        from matplotlib.patches import Patch

        names = payload["region_names"]
        fig = _figure(8, 4.4)
        ax_ref, ax_pred = fig.subplots(1, 2)
        _paint(ax_ref, payload["image"], payload["ref"], names, "ground truth")
        when = f" (epoch {epoch})" if epoch is not None else ""
        _paint(ax_pred, payload["image"], payload["pred"], names, f"prediction{when}")
        handles = [Patch(color=_colour(n, i), label=n) for i, n in enumerate(names)]
        fig.legend(handles=handles, loc="lower center", ncol=len(names), frameon=False)
        fig.suptitle(payload["case_id"], fontsize=10)
        save_figure_atomic(fig, path)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "case"


class CheckpointOnStop(Callback):
    """Keep ``last.ckpt`` the state of the last finished epoch, and save it when the run is
    stopped by SIGTERM (what schedulers send).

    Every epoch: Lightning's ``ModelCheckpoint(save_last=True)`` writes ``last.ckpt`` only when it
    saves a top-k checkpoint (Lightning 2.x), so with ``save_top_k=1`` on the validation Dice it
    is the *best* epoch's weights, not the last: a fixed schedule's "last checkpoint" would be
    chosen on the validation cases. This saves the whole state after each training epoch (after
    its validation), atomically, so ``last.ckpt`` is the schedule's end when ``fit`` ends and a
    killed run loses at most one epoch.

    Lightning turns SIGTERM into a ``SIGTERMException`` after the training batch in progress (or
    during validation), which would end ``fit`` with nothing saved since the last validation.
    This saves the whole training state first — weights, optimizer, scheduler, loop progress, the
    loaders' position and the random generators — where ``--ckpt_path last`` looks for it. It
    saves at the end of the training batch, the state Lightning's own step checkpoints have and
    resume from exactly (a checkpoint taken later, as the exception unwinds at an epoch's last
    batch, resumes one epoch ahead); a SIGTERM outside training steps (validation, set-up) is
    saved as the exception passes. The CLI then exits with status 143 (128 + SIGTERM).

    Args:
        dirpath: the checkpoint folder (default: the run's ``ModelCheckpoint`` folder, else
            ``<default_root_dir>/checkpoints``).
        filename: the checkpoint's name.
    """

    def __init__(self, dirpath: str | None = None, filename: str = "last.ckpt") -> None:
        self.dirpath = dirpath
        self.filename = filename
        self.saved: Path | None = None

    def path(self, trainer: pl.Trainer) -> Path:
        """Where the checkpoint goes."""
        if self.dirpath:
            return Path(self.dirpath) / self.filename
        ckpt = trainer.checkpoint_callback
        if isinstance(ckpt, ModelCheckpoint) and ckpt.dirpath:
            return Path(ckpt.dirpath) / self.filename
        return Path(trainer.default_root_dir) / "checkpoints" / self.filename

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Forget a previous fit's checkpoint."""
        self.saved = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """After each epoch (and its validation): ``last.ckpt`` is this state."""
        if trainer.sanity_checking or trainer.received_sigterm:
            return
        self._write(trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        """After a step, if any process got SIGTERM: save, and make every process stop here."""
        stop = bool(trainer.received_sigterm)
        if trainer.world_size > 1:
            stop = bool(trainer.strategy.reduce_boolean_decision(stop, all=False))
        if not stop:
            return
        # Lightning raises SIGTERMException where this flag is set; setting it on every rank
        # makes them all stop after this same step (no rank left waiting in a collective).
        trainer._signal_connector.received_sigterm = True
        self._save(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """On SIGTERM during ``fit`` outside a training step, save as the exception passes."""
        if isinstance(exception, SIGTERMException) and trainer.state.fn == "fit" and self.saved is None:
            self._save(trainer)

    def _write(self, trainer: pl.Trainer) -> Path:
        """``last.ckpt``, atomically: a kill while writing leaves the previous one whole."""
        path = self.path(trainer)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        if trainer.is_global_zero:
            path.parent.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(tmp)  # every rank takes part; rank zero writes
        if trainer.is_global_zero:
            os.replace(tmp, path)
        return path

    def _save(self, trainer: pl.Trainer) -> None:
        """The SIGTERM save: written, said, and remembered (so the exception does not save again)."""
        path = self._write(trainer)
        if trainer.is_global_zero:
            logger.warning(
                "stopped by SIGTERM at epoch %d, step %d: saved %s (resume with --ckpt_path last)",
                trainer.current_epoch,
                trainer.global_step,
                path,
            )
        self.saved = path
