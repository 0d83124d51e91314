"""Network specs: a network rebuilt from ``class_path``/``init_args``, and trained weights put into it.

What inference needs from the training side, kept apart from the LightningModule so that loading a
checkpoint or a packaged model imports neither Lightning nor tensorboard (as nnU-Net's predictor
imports no trainer). Both loaders (:mod:`~bts_monai.model.checkpoint`, :mod:`~bts_monai.model.packaged`)
apply the same allow-list and the same weight checks from here.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where a network is built: inference on an ONNX runtime needs none
    import torch
    from torch import nn

from bts_monai.errors import BtsInputError

__all__ = [
    "INFERENCE_KEY",
    "INFERENCE_SETTINGS",
    "PROVENANCE_KEYS",
    "SW_MODES",
    "TRUSTED_NETWORK_PACKAGES",
    "build_network",
    "check_trusted",
    "check_settings",
    "inference_settings",
    "load_weights",
    "sha256_file",
]

INFERENCE_KEY = "bts_inference"
"""Checkpoint key holding the inference config (network spec + data and inference settings)."""

TRUSTED_NETWORK_PACKAGES: tuple[str, ...] = ("monai.", "bts_monai.", "torch.nn.")
"""Packages a model's network ``class_path`` may come from (importing runs module code)."""


INFERENCE_SETTINGS: tuple[str, ...] = ("threshold", "sw_roi_size", "sw_overlap", "sw_mode", "mirror_axes")
"""How training ran the network over whole volumes, saved with the model (checkpoint and
``metadata.json``) so the Predictor does the same by default: the sigmoid threshold, the sliding
window's size, overlap and blending, and the spatial axes training's flips mirrored (the only axes
test-time mirroring may use, as nnU-Net's ``allowed_mirroring_axes``)."""

PROVENANCE_KEYS: tuple[str, ...] = ("model_name", "model_version", "model_source", "weights_sha256")
"""Keys the loaders add to an inference config to say which model it is (for reports)."""

SW_MODES: tuple[str, ...] = ("gaussian", "constant")
"""Blendings of overlapping windows (MONAI ``SlidingWindowInferer`` modes)."""

_LEGACY_DEFAULTS: dict[str, Any] = {"threshold": 0.5, "sw_overlap": 0.5, "sw_mode": "gaussian"}
"""What models saved before :data:`INFERENCE_SETTINGS` were recorded were validated with."""


def inference_settings(config: Mapping[str, Any], path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The checked :data:`INFERENCE_SETTINGS` of an inference config (checkpoint or metadata).

    Models saved before the settings were recorded get what training used then: threshold 0.5,
    overlap 0.5, gaussian blending, the training patch as the window, every axis mirrorable.

    Raises:
        BtsInputError: a setting out of range (naming ``path``).
    """
    dims = int(config["spatial_dims"])
    out = {k: config.get(k) if config.get(k) is not None else v for k, v in _LEGACY_DEFAULTS.items()}
    roi = config.get("sw_roi_size") or config.get("roi_size")
    mirror = config.get("mirror_axes")
    out["mirror_axes"] = list(range(dims)) if mirror is None else mirror
    out["sw_roi_size"] = roi
    return check_settings(out, dims, path)


def check_settings(
    settings: Mapping[str, Any], spatial_dims: int, path: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """Check and normalise :data:`INFERENCE_SETTINGS` (plain types, in range).

    Raises:
        BtsInputError: naming ``path`` and the setting.
    """

    def bad(what: str) -> BtsInputError:
        return BtsInputError(path, f"inference setting {what}")

    try:
        threshold = float(settings["threshold"])
        overlap = float(settings["sw_overlap"])
        roi = [int(r) for r in settings["sw_roi_size"]]
        axes = [int(a) for a in settings["mirror_axes"]]
    except (TypeError, ValueError, KeyError) as exc:
        raise bad(f"is malformed ({type(exc).__name__}: {exc})") from exc
    if not 0.0 < threshold < 1.0:
        raise bad(f"threshold {threshold} is not between 0 and 1")
    if not 0.0 <= overlap < 1.0:
        raise bad(f"sw_overlap {overlap} is not in [0, 1)")
    if settings["sw_mode"] not in SW_MODES:
        raise bad(f"sw_mode {settings['sw_mode']!r} is not one of {list(SW_MODES)}")
    if len(roi) != spatial_dims or min(roi) < 1:
        raise bad(f"sw_roi_size {roi} is not {spatial_dims} positive sizes")
    if len(set(axes)) != len(axes) or any(not 0 <= a < spatial_dims for a in axes):
        raise bad(f"mirror_axes {axes} are not distinct axes among 0..{spatial_dims - 1}")
    return {
        "threshold": threshold,
        "sw_roi_size": roi,
        "sw_overlap": overlap,
        "sw_mode": str(settings["sw_mode"]),
        "mirror_axes": sorted(axes),
    }


def build_network(class_path: str, init_args: dict[str, Any] | None = None) -> nn.Module:
    """Instantiate a network from its ``class_path``/``init_args`` and remember both.

    Python users who build the module without LightningCLI should make the network here, so the
    checkpoint can say how to rebuild it. jsonargparse (what LightningCLI uses) does the
    instantiation, so nested ``class_path`` arguments and type coercion work as in YAML configs.

    Example:
        >>> net = build_network("monai.networks.nets.UNet", {"spatial_dims": 3, "in_channels": 4,
        ...     "out_channels": 3, "channels": [8, 16], "strides": [2]})
    """
    from jsonargparse import ArgumentParser

    from bts_monai._monai_import import import_monai

    import_monai()  # before jsonargparse imports the class's package
    spec = {"class_path": class_path, "init_args": dict(init_args or {})}
    parser = ArgumentParser(exit_on_error=False)
    from torch import nn

    parser.add_subclass_arguments(nn.Module, "net", fail_untyped=False)
    cfg = parser.parse_object({"net": spec})
    net = parser.instantiate_classes(cfg).net
    net._bts_net_config = spec  # type: ignore[assignment]
    return net


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes, as 64 hex digits (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_trusted(class_path: str, path: str | os.PathLike[str] | None, trusted: bool = False) -> None:
    """Refuse a network class outside :data:`TRUSTED_NETWORK_PACKAGES` unless ``trusted``.

    Raises:
        BtsInputError: naming ``path`` (the model file) and the class.
    """
    if not isinstance(class_path, str) or not class_path:
        raise BtsInputError(path, "the model does not name its network class (class_path)")
    if not trusted and not class_path.startswith(TRUSTED_NETWORK_PACKAGES):
        raise BtsInputError(
            path,
            f"network class {class_path} is outside {list(TRUSTED_NETWORK_PACKAGES)}; "
            "pass trusted=True (bts-infer --trusted) if you trust this model",
        )


def state_aliases(net: nn.Module) -> dict[str, str]:
    """State-dict keys that name a tensor an earlier key names already -> that earlier key.

    Some networks register one module under two attributes (MONAI's DynUNet keeps its blocks in
    ``input_block``/``downsamples``/... and again in the nested ``skip_layers``), so
    ``state_dict()`` lists each of those weights twice. A packaged model stores each tensor once
    (:func:`unique_state`); :func:`load_weights` fills the aliases back in.
    """
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for key, tensor in net.state_dict(keep_vars=True).items():
        owner = first.setdefault(id(tensor), key)
        if owner != key:
            aliases[key] = owner
    return aliases


def unique_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """``net.state_dict()`` without the keys of :func:`state_aliases` (each tensor once)."""
    aliases = state_aliases(net)
    return {k: v for k, v in net.state_dict().items() if k not in aliases}


def load_weights(net: nn.Module, state: Mapping[str, torch.Tensor], path: str | os.PathLike[str] | None) -> None:
    """Put a state dict into ``net`` after checking it: every tensor present, none reshaped, no
    unexpected ones, all values finite. Floating tensors are cast to the network's dtype. A key
    the network holds twice (:func:`state_aliases`) may be given once.

    Raises:
        BtsInputError: one line naming ``path`` and the first problem found.
    """
    import torch

    expected = net.state_dict()
    filled = {k: state[v] for k, v in state_aliases(net).items() if k not in state and v in state}
    if filled:
        state = {**state, **filled}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        raise BtsInputError(path, f"weights lack {len(missing)} tensor(s) of the network, e.g. {missing[0]}")
    if unexpected:
        raise BtsInputError(path, f"weights hold {len(unexpected)} tensor(s) the network lacks, e.g. {unexpected[0]}")
    cast: dict[str, torch.Tensor] = {}
    for key, want in expected.items():
        have = state[key]
        if not isinstance(have, torch.Tensor):
            raise BtsInputError(path, f"weight {key} is not a tensor")
        if tuple(have.shape) != tuple(want.shape):
            raise BtsInputError(
                path, f"weight {key} has shape {tuple(have.shape)}, the network needs {tuple(want.shape)}"
            )
        if have.is_floating_point():
            if not bool(torch.isfinite(have).all()):
                raise BtsInputError(path, f"weight {key} holds NaN or infinite values")
            have = have.to(want.dtype)
        cast[key] = have
    net.load_state_dict(cast)
