"""Issue 20 item 5: the inference settings training validated with travel with the model.

A tiny model trained (a few steps on the synthetic sample) with threshold 0.3, a 24³ window,
overlap 0.2, constant blending and no flips carries them in its checkpoint, in the
``metadata.json`` ``bts-export-model`` writes, and into the Predictor's defaults; flags override.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bts_monai.cli.export import main as export
from bts_monai.cli.train import run_cli
from bts_monai.inference.predictor import Predictor
from bts_monai.model.spec import INFERENCE_KEY, INFERENCE_SETTINGS

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

TRAINED = {"threshold": 0.3, "sw_roi_size": [24, 24, 24], "sw_overlap": 0.2, "sw_mode": "constant", "mirror_axes": []}
"""What the run below validates with; every value differs from the defaults (0.5, the 32³ training
patch, 0.5, gaussian, all three axes)."""


@pytest.fixture(scope="module")
def trained(brats21_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``last.ckpt`` of two training steps and one validation, through the training CLI."""
    run = tmp_path_factory.mktemp("run")
    args = [
        "fit",
        "--config",
        str(REPO / "configs" / "demo.yaml"),
        f"--trainer.default_root_dir={run}",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.precision=32-true",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--model.net.init_args.channels=[4, 8]",
        "--model.net.init_args.strides=[2]",
        "--model.net.init_args.num_res_units=0",
        "--model.overlay_cases=0",
        "--model.threshold=0.3",
        "--model.sw_roi_size=[24, 24, 24]",
        "--model.sw_overlap=0.2",
        "--model.sw_mode=constant",
        "--data.augment=false",  # no flips: test-time mirroring may use no axis
        "--data.synthetic=false",
        f"--data.data_root={brats21_root}",
        f"--data.split_file={run / 'split.json'}",
        "--data.cache=none",
        "--data.num_samples=1",
    ]
    old_argv, sys.argv = sys.argv, ["lightning"]  # LightningCLI warns about pytest's own argv
    try:
        run_cli(args)
    finally:
        sys.argv = old_argv
    return run / "checkpoints" / "last.ckpt"


def _settings(predictor: Predictor) -> dict:
    return {k: predictor.settings[k] for k in INFERENCE_SETTINGS}


def test_checkpoint_metadata_and_predictor_carry_the_trained_settings(trained: Path, tmp_path: Path) -> None:
    saved = torch.load(trained, map_location="cpu", weights_only=True)[INFERENCE_KEY]
    assert {k: saved[k] for k in INFERENCE_SETTINGS} == TRAINED

    assert export([str(trained), "tiny", "--out", str(tmp_path)]) == 0
    meta = json.loads((tmp_path / "tiny" / "metadata.json").read_text())
    assert {k: meta["inference"][k] for k in INFERENCE_SETTINGS} == TRAINED

    for source in (trained, tmp_path / "tiny"):
        predictor = Predictor.from_checkpoint(source, backend="torch", device="cpu")
        assert _settings(predictor) == TRAINED, source
        assert tuple(predictor.inferer.roi_size) == (24, 24, 24) and predictor.inferer.mode == "constant"
        assert tuple(predictor.inferer.overlap) == (0.2, 0.2, 0.2)
        # The threshold is the one applied: a probability of 0.35 is tumour at 0.3 (not at 0.5).
        probs = np.full((3, 2, 2, 2), 0.35, np.float32)
        labels, _ = predictor._labels_and_regions(probs)
        assert (labels > 0).all()


def test_flags_override_the_saved_settings(trained: Path, tmp_path: Path) -> None:
    from bts_monai.cli.infer import main as infer
    from bts_monai.data.synthetic import make_brats_case

    override = {"threshold": 0.6, "sw_roi_size": [16, 16, 16], "sw_overlap": 0.5, "sw_mode": "gaussian"}
    predictor = Predictor.from_checkpoint(
        trained,
        backend="torch",
        device="cpu",
        threshold=0.6,
        overlap=0.5,
        roi_size=[16, 16, 16],
        sw_mode="gaussian",
        mirror_axes=[0],
    )
    assert _settings(predictor) == {**override, "mirror_axes": [0]}
    probs = np.full((3, 2, 2, 2), 0.35, np.float32)
    assert not (predictor._labels_and_regions(probs)[0] > 0).any()

    case = make_brats_case(tmp_path / "in", "BraTS2021_00099", shape=(24, 28, 20), seed=3)
    report = tmp_path / "r.json"
    args = [str(case), "--ckpt", str(trained), "-o", str(tmp_path / "s.nii.gz"), "--report", str(report)]
    assert infer([*args, "--threshold", "0.6", "--overlap", "0.5", "--backend", "torch", "-q"]) == 0
    prov = json.loads(report.read_text())["provenance"]
    assert (prov["threshold"], prov["sw_overlap"]) == (0.6, 0.5)  # the flags
    assert (prov["sw_roi_size"], prov["sw_mode"], prov["mirror_axes"]) == ([24, 24, 24], "constant", [])  # saved
