"""benchmarks/bench_infer.py: its MONAI reference reads the same weights as bts-infer and writes a
segmentation on the input's grid.

The whole script runs every pipeline as fresh processes (minutes even with ``--quick``), so these
tests call its parts in this process on one small synthetic case instead.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_infer.py"


@pytest.fixture(scope="module")
def bench():
    """The benchmark script as a module."""
    spec = importlib.util.spec_from_file_location("bench_infer", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_infer"] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules["bench_infer"]


@pytest.fixture(scope="module")
def small_dynunet(bench, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The script's ``--quick`` DynUNet checkpoint (quarter width, random weights), 64³ windows."""
    return bench.make_dynunet_checkpoint(tmp_path_factory.mktemp("bench") / "dyn.ckpt", small=True, roi=[64] * 3)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key].float(), sb[key].float()), key


def test_reference_network_has_bts_infers_weights(bench, small_dynunet: Path) -> None:
    from bts_monai.inference.predictor import Predictor, default_model_path

    sources = [small_dynunet]
    packaged = default_model_path("brats")
    if packaged is not None:
        sources.append(packaged)
    for source in sources:
        net, cfg = bench._reference_model(source)
        ours = Predictor.from_checkpoint(source, backend="torch", device="cpu")
        assert type(net) is type(ours.net)
        _same_weights(net, ours.net)
        assert list(cfg["roi_size"]) == list(ours.config["roi_size"])


def test_reference_pipeline_segments_on_the_input_grid(bench, small_dynunet: Path, tmp_path: Path) -> None:
    from bts_monai.data.synthetic import make_brats_case

    case = make_brats_case(tmp_path / "data", "Brats18_SYN_001_1", shape=(40, 44, 36), seed=3)
    out, result = tmp_path / "ref", tmp_path / "ref" / "timings.json"
    out.mkdir()
    bench.reference_worker(small_dynunet, [case], out, result)
    seg = nib.load(out / f"{case.name}_seg.nii.gz")
    flair = nib.load(case / f"{case.name}_flair.nii.gz")
    assert seg.shape == flair.shape
    np.testing.assert_allclose(seg.affine, flair.affine)
    labels = np.asarray(seg.dataobj)
    assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2, 4}
    assert set(json.loads(result.read_text())) >= {"import_s", "network_s", "post_save_s"}

    dice = bench.dice_table(out, [case])
    assert dice["regions"] == ["TC", "WT", "ET"]
    assert all(0.0 <= d <= 1.0 for d in dice["mean"])
    assert bench.label_agreement(out, out, [case]) == 1.0
    # A perfect prediction scores 1: the ground truth itself.
    gt = tmp_path / "gt"
    gt.mkdir()
    (gt / f"{case.name}_seg.nii.gz").write_bytes((case / f"{case.name}_seg.nii.gz").read_bytes())
    assert bench.dice_table(gt, [case])["mean"] == [1.0, 1.0, 1.0]
