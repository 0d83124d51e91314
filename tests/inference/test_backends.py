"""Runtime backends: same labels as torch, export cache keyed by the checkpoint, refusals and fallback."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from bts_monai.cli import infer
from bts_monai.inference import backends
from bts_monai.inference.backends import cached_onnx, make_backend, packaged_onnx
from bts_monai.inference.predictor import Predictor, default_model_path


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BTS_ONNX_CACHE", str(tmp_path / "onnx_cache"))
    return tmp_path / "onnx_cache"


def _no_runtimes(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    real = backends.runtime_installed
    monkeypatch.setattr(backends, "runtime_installed", lambda n: False if n in names else real(n))


def test_openvino_missing_exits_2_with_install_line(monkeypatch, capsys, tmp_path):
    _no_runtimes(monkeypatch, "openvino")
    code = infer.main([str(tmp_path), "--backend", "openvino", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "openvino is not installed" in err[0] and "pip install" in err[0]


def test_auto_falls_back_to_torch_with_info_line(monkeypatch, caplog):
    _no_runtimes(monkeypatch, "openvino", "onnxruntime")
    with caplog.at_level(logging.INFO, logger="bts_monai.inference.backends"):
        p = Predictor.from_packaged(kind="brats", device="cpu")
    assert p.backend.name == "torch"
    assert any("no ONNX runtime installed" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)


def test_auto_uses_the_packaged_export():
    p = Predictor.from_packaged(kind="brats", device="cpu")
    assert p.backend.name in ("onnxruntime", "openvino")
    assert p.backend.onnx_path == default_model_path("brats") / "model.onnx"


def test_packaged_export_of_other_weights_is_not_used():
    folder = default_model_path("brats")
    meta = json.loads((folder / "metadata.json").read_text())
    assert packaged_onnx(folder, meta, meta["weights"]["sha256"]) == folder / "model.onnx"
    assert packaged_onnx(folder, meta, "0" * 64) is None


def _tiny(spatial_dims: int = 3):
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(spatial_dims, 2, 3, channels=(4, 8), strides=(2,), num_res_units=0, norm="INSTANCE").eval()
    roi = [16] * spatial_dims
    return net, {
        "spatial_dims": spatial_dims,
        "roi_size": roi,
        "modalities": ["flair", "t1"],
        "weights_sha256": "ab" * 32,
    }


def test_checkpoint_exported_once_into_the_cache(_cache, monkeypatch):
    net, config = _tiny()
    path = cached_onnx(net, config)
    assert path == _cache / f"{'ab' * 32}.onnx" and path.is_file()
    monkeypatch.setattr(backends, "export_onnx", lambda *a, **k: pytest.fail("exported twice"))
    assert cached_onnx(net, config) == path


@pytest.mark.parametrize("name", ["onnxruntime", "openvino"])
def test_runtime_matches_torch_on_windows(name):
    if not backends.runtime_installed(name):
        pytest.skip(f"{name} is not installed")
    net, config = _tiny()
    x = torch.randn(2, 2, 16, 24, 16)  # batch and spatial axes are dynamic
    runtime = make_backend(name, net, config)
    with torch.no_grad():
        want = net(x)
    assert runtime.name == name
    assert torch.allclose(runtime(x), want, atol=1e-4)


def test_export_differing_from_torch_is_refused(monkeypatch, tmp_path):
    net, config = _tiny()
    monkeypatch.setattr(backends, "EXPORT_ATOL", -1.0)  # no export can pass a negative tolerance
    with pytest.raises(backends.BtsInputError, match="differs from torch"):
        backends.export_onnx(net, config, tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("half", [True, False])
def test_export_stores_float16_exact_weights_at_half_size(tmp_path, half):
    import onnx

    net, config = _tiny()
    if half:  # a packaged model's weights: float16-rounded, as its safetensors hold them
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(p.half().float())
    record = backends.export_onnx(net, config, tmp_path / "m.onnx")
    model = onnx.load(str(tmp_path / "m.onnx"))
    kinds = {i.name: i.data_type for i in model.graph.initializer}
    casts = [n for n in model.graph.node if n.op_type == "Cast" and n.input[0] in kinds]
    if half:
        assert record["float16_initializers"] == len(casts) > 0
        assert all(kinds[n.input[0]] == onnx.TensorProto.FLOAT16 for n in casts)
        # the weights the graph computes with are the float32 values, bit for bit
        x = np.random.default_rng(0).standard_normal((1, 2, 16, 16, 16)).astype(np.float32)
        with torch.no_grad():
            want = net(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(backends.OnnxRuntimeBackend(tmp_path / "m.onnx").run(x), want, atol=1e-4)
    else:  # float32 weights that float16 would round are kept: storage, not quantisation
        assert "float16_initializers" not in record and not casts
        assert onnx.TensorProto.FLOAT16 not in kinds.values()


@pytest.mark.real_data
@pytest.mark.slow
def test_every_backend_gives_torch_labels_on_a_real_case(real_data):
    case = real_data / "brats2018" / "Brats18_TCIA02_135_1"
    ref = Predictor.from_packaged(kind="brats", device="cpu", backend="torch").predict(case).labels
    for name in ("onnxruntime", "openvino"):
        if not backends.runtime_installed(name):
            continue
        labels = Predictor.from_packaged(kind="brats", device="cpu", backend=name).predict(case).labels
        agreement = float((labels == ref).mean())
        assert agreement >= 0.999, (name, agreement)
        assert np.array_equal(np.unique(labels), np.unique(ref))


@pytest.mark.parametrize(
    "flags,backend,want",
    [
        (("avx512_bf16",), "openvino", "bf16"),
        (("amx_bf16", "avx512_bf16"), "openvino", "bf16"),
        ((), "openvino", "32"),  # AVX2-only: bf16 would be emulated, many times slower
        (("avx512_bf16",), "onnxruntime", "32"),  # no bf16 CPU kernels
        (("avx512_bf16",), "torch", "32"),
    ],
)
def test_auto_precision_is_bf16_only_for_openvino_on_native_bf16(monkeypatch, caplog, flags, backend, want):
    from bts_monai.model import precision

    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: flags)
    with caplog.at_level(logging.INFO, logger="bts_monai.inference.backends"):
        assert backends.resolve_precision("auto", backend, "cpu") == want
    assert ("precision: bf16" in caplog.text) == (want == "bf16")
    assert backends.resolve_precision("32", backend, "cpu") == "32"  # an explicit choice wins
    assert backends.resolve_precision("bf16", backend, "cpu") == "bf16"


def test_predictor_records_the_precision_it_runs(monkeypatch):
    from bts_monai.model import precision

    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: ())
    p = Predictor.from_packaged(device="cpu", backend="onnxruntime")
    assert p.precision == p.backend.precision == "32"
    assert p.provenance()["precision"] == "32"
