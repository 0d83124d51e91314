"""Inference imports only what it uses: no Lightning, tensorboard, torch._dynamo or matplotlib."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from infer_helpers import marker_case

from bts_monai._monai_import import UNUSED_BY_INFERENCE

TRAINING_ONLY = ("pytorch_lightning", "lightning", "lightning_fabric", "torch._dynamo", *UNUSED_BY_INFERENCE)
"""Packages inference must not import (the training stack, and what MONAI would pull in eagerly)."""

AFFINE = [[-1.0, 0, 0, 90], [0, -1.0, 0, 120], [0, 0, 1.0, -70], [0, 0, 0, 1]]

_CHECK = """
import json, sys
{body}
heavy = {heavy!r}
print(json.dumps(sorted(m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in heavy))))
"""


def _loaded(body: str, heavy: tuple[str, ...] = TRAINING_ONLY) -> list[str]:
    """Modules of ``heavy`` (default: training-only) in ``sys.modules`` after running ``body`` in a
    fresh interpreter."""
    code = _CHECK.format(body=body, heavy=heavy)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_bts_infer_prediction_imports_no_training_stack(tmp_path: Path):
    import numpy as np

    case = marker_case(tmp_path / "in", np.array(AFFINE))
    out, report = tmp_path / "seg.nii.gz", tmp_path / "report.json"
    body = (
        "from bts_monai.cli.infer import main\n"
        f"assert main([{str(case)!r}, '-o', {str(out)!r}, '--report', {str(report)!r}, '-q']) == 0\n"
    )
    assert _loaded(body) == []
    assert out.is_file() and json.loads(report.read_text())["case_id"] == case.name


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["auto", "onnxruntime"])
def test_cpu_prediction_on_a_runtime_imports_neither_torch_nor_monai(tmp_path: Path, backend: str):
    """The torch-free path (bts_monai.inference.engine): a packaged model, an ONNX runtime, a CPU."""
    import numpy as np

    case = marker_case(tmp_path / "in", np.array(AFFINE))
    out = tmp_path / "seg.nii.gz"
    body = (
        "from bts_monai.cli.infer import main\n"
        f"assert main([{str(case)!r}, '-o', {str(out)!r}, '--backend', {backend!r}, '--device', 'cpu', '-q']) == 0\n"
    )
    assert _loaded(body, ("torch", "monai", *TRAINING_ONLY)) == []
    assert out.is_file()


@pytest.mark.slow
def test_checkpoint_with_a_cached_export_builds_no_network(tmp_path: Path, tiny_ckpt: Path):
    """``--ckpt`` on an ONNX runtime: once its export is cached, MONAI is not imported (the
    network is built only for the export, or where torch runs it); the labels are the same."""
    import numpy as np

    case = marker_case(tmp_path / "in", np.array(AFFINE))
    cache, first, again = tmp_path / "cache", tmp_path / "first.nii.gz", tmp_path / "again.nii.gz"
    body = (
        "import os\n"
        f"os.environ['BTS_ONNX_CACHE'] = {str(cache)!r}\n"
        "from bts_monai.cli.infer import main\n"
        f"args = [{str(case)!r}, '--ckpt', {str(tiny_ckpt)!r}, '--backend', 'onnxruntime', '--device', 'cpu', '-q']\n"
        "assert main(args + ['-o', OUT]) == 0\n"
    )
    assert "monai" in _loaded(body.replace("OUT", repr(str(first))), ("monai",))  # exported: built once
    assert _loaded(body.replace("OUT", repr(str(again))), ("monai",)) == []
    assert len(list(cache.glob("*.onnx"))) == 1
    import nibabel as nib

    np.testing.assert_array_equal(np.asarray(nib.load(again).dataobj), np.asarray(nib.load(first).dataobj))


@pytest.mark.slow
def test_predictor_and_serve_import_no_training_stack():
    pytest.importorskip("fastapi")
    body = (
        "from bts_monai import Predictor\n"
        "p = Predictor.from_packaged(device='cpu')\n"
        "import bts_monai.serve.app, bts_monai.serve.pipeline, bts_monai.cli.serve\n"
    )
    assert _loaded(body) == []


def test_matplotlib_still_imports_after_inference():
    """Keeping matplotlib out of MONAI's import must not break it for the rest of the process."""
    body = (
        "import bts_monai.inference.predictor\n"
        "import matplotlib.figure\n"
        "import monai\n"
        "assert 'matplotlib' in sys.modules\n"
    )
    assert "matplotlib" in _loaded(body)
