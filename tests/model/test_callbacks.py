"""The pictures: learning curve and prediction overlays are valid PNGs written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bts_monai.model.callbacks import LearningCurvePlot, PredictionOverlays

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_learning_curve_png_and_state(tmp_path: Path) -> None:
    cb = LearningCurvePlot()
    cb.history = [
        {"epoch": 0.0, "train_loss": 1.2, "val_loss": None, "train_dice": 0.1, "val_dice": None},
        {"epoch": 1.0, "train_loss": 0.9, "val_loss": 0.95, "train_dice": 0.3, "val_dice": 0.25},
    ]
    out = tmp_path / "run" / "learning_curve.png"
    cb.draw(out)
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary left
    again = LearningCurvePlot()
    again.load_state_dict(cb.state_dict())
    assert again.history == cb.history


def test_overlay_png(tmp_path: Path) -> None:
    img = np.random.default_rng(0).normal(size=(24, 20)).astype(np.float32)
    ref = np.zeros((3, 24, 20), dtype=bool)
    ref[1, 5:15, 5:15] = True
    ref[0, 8:12, 8:12] = True
    pred = np.roll(ref, 2, axis=1)
    payload = {"case_id": "case/1", "image": img, "ref": ref, "pred": pred, "region_names": ["TC", "WT", "ET"]}
    out = tmp_path / "overlays" / "case_1.png"
    PredictionOverlays.draw(payload, out, epoch=3)
    assert out.read_bytes()[:8] == PNG_MAGIC
