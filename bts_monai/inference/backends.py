"""Runtime backends: what runs the network over each window (torch, ONNX Runtime or OpenVINO).

Every backend runs a batch of windows as NumPy arrays (:meth:`Backend.run`, what the torch-free CPU
path of :mod:`~bts_monai.inference.engine` calls) and as torch tensors (``backend(tensor)``, what
MONAI's :class:`~monai.inferers.SlidingWindowInferer` calls on a GPU). The ONNX runtimes import no
torch. The runtimes read the ONNX
export of the network: packaged models ship it beside their safetensors (written by
``bts-export-model``), and a training checkpoint is exported on first use into a cache folder keyed
by its SHA-256 (:func:`cached_onnx`). Every export is checked against torch on a random window
(:data:`EXPORT_ATOL`, :data:`EXPORT_RTOL`) before it is used or kept.

Why runtimes at all: on the CPUs this project runs on, the same 3D U-Net runs 4-8x (ONNX Runtime)
and 6-20x (OpenVINO) faster per window than torch eager (benchmarks/README.md, "Runtime
backends"). GPUs keep torch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bts_monai.errors import BtsInputError

if TYPE_CHECKING:  # the runtimes run without torch; it is imported where a torch network runs
    import torch
    from torch import nn


__all__ = [
    "AUTO_ORDER",
    "BACKENDS",
    "EXPORT_ATOL",
    "EXPORT_RTOL",
    "INSTALL_HINTS",
    "ONNX_NAME",
    "Backend",
    "OnnxRuntimeBackend",
    "OpenVINOBackend",
    "PRECISIONS",
    "TorchBackend",
    "cached_onnx",
    "choose_backend",
    "export_onnx",
    "main_output",
    "make_backend",
    "onnx_cache_dir",
    "packaged_onnx",
    "write_packaged_onnx",
    "resolve_precision",
    "runtime_installed",
]

logger = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("auto", "torch", "onnxruntime", "openvino")
"""Values of ``--backend``."""

AUTO_ORDER: tuple[str, ...] = ("openvino", "onnxruntime")
"""What ``auto`` tries on a CPU, fastest first as measured (benchmarks/README.md): OpenVINO beat
ONNX Runtime on both CPU kinds measured (AVX512 with bf16 here, AVX2-only in issue 16's figures),
and both beat torch eager; with neither installed ``auto`` is torch."""

PRECISIONS: tuple[str, ...] = ("auto", "32", "bf16")
"""Values of ``--precision``. ``auto`` (the default) is bf16 where it was measured faster and the
hardware runs it natively -- OpenVINO on a CPU with AVX512-BF16 or AMX (1.15x on the packaged
model, 1.6x on the brats21 DynUNet, Dice within 0.0004; benchmarks/README.md), torch on a GPU that
supports bf16 -- and float32 everywhere else: ONNX Runtime has no bf16 CPU kernels, and on
AVX2-only CPUs bf16 is emulated and many times slower."""

INSTALL_HINTS: dict[str, str] = {
    "onnxruntime": "pip install onnxruntime (part of bts_monai's base install)",
    "openvino": "pip install 'bts_monai[openvino]' (or: pip install openvino)",
    "onnx": "pip install onnx (part of bts_monai's base install)",
}
"""How to install each runtime, and the ``onnx`` package that writing an export needs."""

_MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "onnx": "onnx"}

ONNX_NAME = "model.onnx"
"""File name of a packaged model's ONNX export, beside ``model.safetensors``."""

ONNX_OPSET = 17
"""ONNX opset of the exports (InstanceNormalization, PRelu and ConvTranspose are all in it)."""

EXPORT_ATOL = 1e-3
EXPORT_RTOL = 1e-3
"""An export is accepted when, on a random window, ``max |runtime - torch| <= EXPORT_ATOL +
EXPORT_RTOL * max |torch|`` over the logits (measured: 2e-5 with ONNX Runtime for the packaged
3D U-Net)."""

INPUT_NAME, OUTPUT_NAME = "image", "logits"


def runtime_installed(name: str) -> bool:
    """Whether the Python package of runtime ``name`` (or ``"onnx"``) can be imported."""
    return importlib.util.find_spec(_MODULES[name]) is not None


def _missing(name: str, what: str) -> BtsInputError:
    return BtsInputError(None, f"{what}: {name} is not installed; install it with {INSTALL_HINTS[name]}")


def _device_type(device: Any) -> str:
    """``"cpu"``, ``"cuda"``, ... of a ``torch.device`` or a device name."""
    return str(getattr(device, "type", None) or str(device).split(":")[0])


def resolve_precision(precision: str, backend: str, device: Any = "cpu") -> str:
    """``"32"`` or ``"bf16"`` for ``precision`` (``auto`` decided as :data:`PRECISIONS` says) on
    ``backend``; logs an automatic choice."""
    if precision != "auto":
        return precision
    if _device_type(device) == "cpu":
        from bts_monai.model.precision import cpu_bf16_flags

        flags = [f for f in cpu_bf16_flags() if f in ("avx512_bf16", "amx_bf16")]
        if backend == "openvino" and flags:
            logger.info("precision: bf16 (auto: OpenVINO on a CPU with native bf16: %s)", ", ".join(flags))
            return "bf16"
        return "32"
    import torch

    if backend == "torch" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        logger.info("precision: bf16 (auto: the GPU supports bf16)")
        return "bf16"
    return "32"


def choose_backend(requested: str, device: Any) -> str:
    """The backend to use: ``requested``, or for ``"auto"`` the fastest runtime installed (torch on
    GPUs, and where no runtime is installed). Logs the choice.

    Raises:
        BtsInputError: an unknown name, a runtime that is not installed, or a runtime on a GPU.
    """
    if requested not in BACKENDS:
        raise BtsInputError(None, f"--backend {requested!r}: choose one of {', '.join(BACKENDS)}")
    if requested == "torch":
        return "torch"
    if _device_type(device) != "cpu":
        if requested != "auto":
            raise BtsInputError(
                None, f"--backend {requested} runs on the CPU only; use --device cpu or --backend torch"
            )
        logger.info("backend: torch (device %s; the ONNX runtimes are used on CPUs only)", device)
        return "torch"
    if requested != "auto":
        if not runtime_installed(requested):
            raise _missing(requested, f"--backend {requested}")
        return requested
    for name in AUTO_ORDER:
        if runtime_installed(name):
            logger.info("backend: %s (auto: the fastest runtime installed, of %s)", name, ", ".join(AUTO_ORDER))
            return name
    logger.info(
        "backend: torch (auto: no ONNX runtime installed; %s or %s is faster on CPUs)",
        INSTALL_HINTS["onnxruntime"],
        INSTALL_HINTS["openvino"],
    )
    return "torch"


def main_output(out: Any, ndim: int) -> Any:
    """A network's main output: first of a list/tuple/dict, or head 0 of DynUNet's stacked heads."""
    if isinstance(out, (list, tuple)):
        out = out[0]
    if isinstance(out, dict):
        out = next(iter(out.values()))
    if out.ndim == ndim + 1:
        out = out[:, 0]
    return out


def _main_output_module(net: nn.Module) -> nn.Module:
    """The network with :func:`main_output` applied: one tensor out, what the export records."""
    from torch import nn

    class _MainOutput(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.net = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return main_output(self.net(x), x.ndim)

    return _MainOutput(net)


# ---- backends ------------------------------------------------------------------------------------
class Backend:
    """Runs the network on a batch of windows ``(N, C, *roi)``; returns its main output as float32.

    Attributes:
        name: ``torch``, ``onnxruntime`` or ``openvino``.
        onnx_path: the ONNX file a runtime reads (``None`` for torch).
    """

    name = "torch"
    onnx_path: Path | None = None
    precision = "32"

    def run(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        """``(N, C, *roi)`` float32 windows -> the network's main output, float32."""
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The same on torch tensors (MONAI's sliding window); the runtimes go through NumPy."""
        import torch

        return torch.from_numpy(self.run(_numpy(x))).to(x.device)

    def describe(self) -> str:
        """One line for logs and reports."""
        return self.name if self.onnx_path is None else f"{self.name} ({self.onnx_path})"


class TorchBackend(Backend):
    """Torch eager: optional bf16 autocast and channels-last layout (3D)."""

    name = "torch"

    def __init__(self, net: nn.Module, precision: str = "32", channels_last: bool = False) -> None:
        self.net, self.autocast, self.channels_last = net, precision == "bf16", channels_last
        self.precision = "bf16" if self.autocast else "32"

    def run(self, x: np.ndarray) -> np.ndarray:
        import torch

        device = next(self.net.parameters()).device
        with torch.inference_mode():
            return _numpy(self(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        if self.autocast:
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                out = self.net(x)
        else:
            out = self.net(x)
        return main_output(out, x.ndim).float().contiguous()


def _numpy(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().float().cpu().numpy(), dtype=np.float32)


def _built(net: nn.Module | Callable[[], nn.Module]) -> nn.Module:
    """The network itself, or what the function that builds it returns (built when first needed)."""
    return net if hasattr(net, "state_dict") else net()  # type: ignore[operator,return-value]


def default_threads() -> int:
    """CPU threads for a runtime when none are asked for: torch's count when torch is loaded (its
    default is the physical cores), else the CPUs this process may use."""
    if "torch" in sys.modules:
        return int(sys.modules["torch"].get_num_threads())
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime's CPU execution provider, every graph optimisation on, float32."""

    name = "onnxruntime"

    def __init__(self, onnx_path: str | os.PathLike[str], threads: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = int(threads or default_threads())
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.onnx_path = Path(onnx_path)
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def run(self, x: np.ndarray) -> np.ndarray:
        (out,) = self.session.run(None, {self.input: np.ascontiguousarray(x, dtype=np.float32)})[:1]
        return np.asarray(out, dtype=np.float32)


class OpenVINOBackend(Backend):
    """OpenVINO's CPU plugin, latency hint; precision ``"32"`` pins float32 (OpenVINO would
    otherwise pick bf16 by itself on CPUs with native bf16), ``"bf16"`` asks for bf16."""

    name = "openvino"

    def __init__(self, onnx_path: str | os.PathLike[str], threads: int | None = None, precision: str = "32") -> None:
        import openvino as ov

        core = ov.Core()
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": int(threads or default_threads()),
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        }
        self.onnx_path = Path(onnx_path)
        self.precision = "bf16" if precision == "bf16" else "32"
        self.compiled = core.compile_model(core.read_model(str(onnx_path)), "CPU", config)
        self.request = self.compiled.create_infer_request()

    def run(self, x: np.ndarray) -> np.ndarray:
        out = self.request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
        return np.array(out[self.compiled.output(0)], dtype=np.float32, copy=True)


def make_backend(
    name: str,
    net: nn.Module | Callable[[], nn.Module],
    config: dict[str, Any],
    *,
    onnx_path: str | os.PathLike[str] | None = None,
    precision: str = "32",
    threads: int | None = None,
    channels_last: bool = False,
    device: Any = None,
) -> Backend:
    """The backend ``name`` (see :func:`choose_backend`) for ``net``.

    Args:
        name: ``auto``, ``torch``, ``onnxruntime`` or ``openvino``.
        net: the network (eval mode), or a function that builds it when first needed (torch runs
            it; the runtimes read its ONNX export and need it only to write one).
        config: its inference config (``spatial_dims``, ``roi_size``, ``modalities``, and
            ``weights_sha256`` naming the weights for the export cache).
        onnx_path: an ONNX export of ``net`` (a packaged model's); default: :func:`cached_onnx`.
        precision: ``"auto"``, ``"32"`` or ``"bf16"`` (torch autocast, OpenVINO's precision hint;
            ONNX Runtime runs float32 either way); ``auto`` as :func:`resolve_precision` decides.
            The backend's ``precision`` attribute says what it runs.
        threads: CPU threads for the runtime (default: torch's thread count).
        channels_last: torch only.
        device: where the network runs (default CPU).

    Raises:
        BtsInputError: an explicit runtime is missing or cannot run this network. With ``auto``
            any runtime problem is logged and torch is used instead.
    """
    device = device or "cpu"

    def torch_net() -> nn.Module:
        return _built(net)

    if name == "auto" and onnx_path is None and not config.get("weights_sha256"):
        # A network built in Python has no file to key an export by; exporting every new object
        # would cost more than it saves. Name a runtime to export it anyway.
        logger.debug("backend: torch (auto: a network without a checkpoint or packaged export)")
        return TorchBackend(torch_net(), resolve_precision(precision, "torch", device), channels_last)
    chosen = choose_backend(name, device)
    asked, precision = precision, resolve_precision(precision, chosen, device)
    if chosen == "torch":
        return TorchBackend(torch_net(), precision, channels_last)
    try:
        path = Path(onnx_path) if onnx_path is not None else cached_onnx(net, config)
        if chosen == "onnxruntime":
            if asked == "bf16":
                logger.info("backend onnxruntime: runs float32 (it has no bf16 CPU kernels)")
            backend: Backend = OnnxRuntimeBackend(path, threads)
        else:
            backend = OpenVINOBackend(path, threads, precision)
    except Exception as exc:
        if name != "auto":
            if isinstance(exc, BtsInputError):
                raise
            problem = f"--backend {chosen} cannot run this model ({type(exc).__name__}: {exc})"
            raise BtsInputError(onnx_path, problem) from exc
        logger.warning("backend %s unavailable for this model (%s); using torch", chosen, exc)
        return TorchBackend(torch_net(), resolve_precision(asked, "torch", device), channels_last)
    logger.debug("backend: %s", backend.describe())
    return backend


# ---- ONNX export -----------------------------------------------------------------------------------
def _example(config: dict[str, Any]) -> torch.Tensor:
    import torch

    roi = [int(r) for r in config["roi_size"]]
    generator = torch.Generator().manual_seed(0)
    return torch.randn(1, len(config["modalities"]), *roi, generator=generator)


def export_onnx(
    net: nn.Module, config: dict[str, Any], path: str | os.PathLike[str], check: bool = True
) -> dict[str, Any]:
    """Write ``net``'s ONNX export (batch and spatial axes dynamic) to ``path``, atomically, after
    checking it against torch on a random window of the model's ``roi_size``.

    Returns:
        What was written: ``file``, ``sha256``, ``bytes``, ``opset``, ``checked_with``,
        ``max_abs_diff`` and the tolerance (``atol``, ``rtol``).

    Raises:
        BtsInputError: ``onnx`` is not installed, or the export differs from torch beyond the
            tolerance (nothing is written then).
    """
    import torch

    from bts_monai.fileio import atomic_path

    if not runtime_installed("onnx"):
        raise _missing("onnx", "writing an ONNX export")
    path = Path(path)
    example = _example(config)
    dims = int(config["spatial_dims"])
    axes = {0: "batch", **{2 + i: f"d{i}" for i in range(dims)}}
    wrapped = _main_output_module(net).cpu().eval()
    with atomic_path(path) as tmp:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            # The TorchScript-based exporter: it needs only `onnx`, and exports MONAI's UNet and
            # DynUNet with dynamic spatial axes in seconds (the dynamo exporter also needs onnxscript).
            torch.onnx.export(
                wrapped,
                (example,),
                str(tmp),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
        halved = store_float16_weights(tmp)
        record: dict[str, Any] = {"file": path.name, "opset": ONNX_OPSET, "atol": EXPORT_ATOL, "rtol": EXPORT_RTOL}
        if halved:
            record["float16_initializers"] = halved
        if check:
            record.update(check_export(wrapped, tmp, example))
        data = tmp.read_bytes()
    record.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    return record


def store_float16_weights(path: str | os.PathLike[str], min_size: int = 16) -> int:
    """Store the float32 weights of the ONNX file ``path`` that float16 holds exactly as float16,
    each followed by a ``Cast`` back to float32; returns how many were converted.

    The packaged models' weights are float16-rounded (their safetensors are float16), so their
    export loses nothing and is half the size. The runtimes fold the casts when they load the
    file (ONNX Runtime's constant folding, OpenVINO's weight decompression), so they compute in
    float32 as before. Weights that float16 would round (a training checkpoint's) stay float32:
    this is storage, not quantisation. onnx has no such pass (onnxconverter-common's
    ``convert_float_to_float16`` converts the arithmetic too, which CPUs run slower).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    casts, kept = [], []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < min_size:
            kept.append(init)
            continue
        value = numpy_helper.to_array(init)
        half = value.astype(np.float16)
        if not np.array_equal(half.astype(np.float32), value, equal_nan=True):
            kept.append(init)
            continue
        stored = numpy_helper.from_array(half, f"{init.name}__float16")
        kept.append(stored)
        casts.append(helper.make_node("Cast", [stored.name], [init.name], to=TensorProto.FLOAT))
    if not casts:
        return 0
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return len(casts)


def check_export(net: nn.Module, onnx_path: str | os.PathLike[str], example: torch.Tensor) -> dict[str, Any]:
    """Run ``onnx_path`` with an installed runtime and torch on ``example``; the largest difference.

    Raises:
        BtsInputError: no runtime is installed to check with, or the difference is beyond tolerance.
    """
    import torch

    with torch.no_grad():
        want = main_output(net(example), example.ndim).float()
    for name in ("onnxruntime", "openvino"):
        if runtime_installed(name):
            runtime = OnnxRuntimeBackend(onnx_path) if name == "onnxruntime" else OpenVINOBackend(onnx_path)
            got = runtime(example)
            break
    else:
        raise _missing("onnxruntime", "checking an ONNX export")
    if got.shape != want.shape:
        raise BtsInputError(onnx_path, f"ONNX export gives shape {tuple(got.shape)}, torch {tuple(want.shape)}")
    diff = float((got - want).abs().max())
    limit = EXPORT_ATOL + EXPORT_RTOL * float(want.abs().max())
    if not diff <= limit:
        raise BtsInputError(onnx_path, f"ONNX export differs from torch by {diff:.2e} (> {limit:.2e}) under {name}")
    logger.info("ONNX export checked with %s: max |difference| %.1e (limit %.1e)", name, diff, limit)
    return {"checked_with": name, "max_abs_diff": diff}


def onnx_cache_dir() -> Path:
    """Where exports of training checkpoints are kept: ``$BTS_ONNX_CACHE``, else
    ``$XDG_CACHE_HOME/bts_monai/onnx`` (``~/.cache/bts_monai/onnx``)."""
    if os.environ.get("BTS_ONNX_CACHE"):
        return Path(os.environ["BTS_ONNX_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bts_monai" / "onnx"


def _weights_key(net: nn.Module, config: dict[str, Any]) -> str:
    """The checkpoint's SHA-256 (``config["weights_sha256"]``, set by the loaders), else a hash of
    the network spec and its state dict (a network built in Python)."""
    if config.get("weights_sha256"):
        return str(config["weights_sha256"])
    digest = hashlib.sha256(repr(config.get("net")).encode())
    for key, value in net.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def cached_onnx(
    net: nn.Module | Callable[[], nn.Module], config: dict[str, Any], cache: str | os.PathLike[str] | None = None
) -> Path:
    """The ONNX export of ``net`` (or of what ``net()`` builds) from the cache, written (and
    checked) there on first use.

    The file is ``<cache>/<sha256 of the checkpoint>.onnx``: a retrained checkpoint gets a new
    export, the same checkpoint is exported once.
    """
    folder = Path(cache) if cache is not None else onnx_cache_dir()
    if not config.get("weights_sha256"):
        net = _built(net)  # the key is then a hash of the weights themselves
    path = folder / f"{_weights_key(net, config)}.onnx"  # type: ignore[arg-type]
    if path.is_file():
        logger.debug("ONNX export from the cache: %s", path)
        return path
    logger.info("exporting the network to ONNX (once for this checkpoint): %s", path)
    export_onnx(_built(net), config, path)
    return path


def packaged_onnx(folder: str | os.PathLike[str], meta: dict[str, Any], weights_sha256: str) -> Path | None:
    """A packaged model's ONNX export, when ``metadata.json`` records one that was made from these
    very weights and the file is intact; else ``None`` (the runtimes then export into the cache)."""
    entry = meta.get("onnx")
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
        return None
    path = Path(folder) / entry["file"]
    if entry.get("source_weights_sha256") != weights_sha256:
        logger.warning("%s was exported from other weights than %s's; not used", path, meta.get("name"))
        return None
    if not path.is_file() or Path(entry["file"]).name != entry["file"]:
        return None
    if hashlib.sha256(path.read_bytes()).hexdigest() != entry.get("sha256"):
        logger.warning("%s differs from the SHA-256 in its metadata; not used", path)
        return None
    return path


def write_packaged_onnx(
    net: nn.Module, config: dict[str, Any], folder: str | os.PathLike[str], weights_sha256: str
) -> dict[str, Any]:
    """Export a packaged model's network beside its weights (:data:`ONNX_NAME`), checked against
    torch; returns the ``metadata.json`` entry (:func:`export_onnx`'s record and the weights' SHA-256)."""
    record = export_onnx(net, config, Path(folder) / ONNX_NAME)
    record["source_weights_sha256"] = weights_sha256
    return record
