"""Load a training checkpoint for inference: the network (eval mode) and its inference config.

A checkpoint of :class:`~bts_monai.model.module.BratsSegModule` holds, beside Lightning's usual
keys, ``"bts_inference"``: the network's ``class_path``/``init_args`` and the data settings
(modalities, label scheme and mode, 2D/3D, patch size, intensity normalisation, spacing), so a
predictor rebuilds everything from the file alone, like nnU-Net's model folders. Loading never
unpickles code (``torch.load(weights_only=True)``), and the network class must come from a
trusted package unless the caller says otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bts_monai.errors import BtsInputError
from bts_monai.model.spec import (
    INFERENCE_KEY,
    TRUSTED_NETWORK_PACKAGES,
    build_network,
    check_trusted,
    inference_settings,
    load_weights,
    sha256_file,
)

__all__ = [
    "load_checkpoint",
    "read_inference_config",
    "network_from",
    "read_checkpoint",
    "read_val_cases",
    "recipe_of",
    "TRUSTED_NETWORK_PACKAGES",
    "REQUIRED_KEYS",
]

REQUIRED_KEYS: tuple[str, ...] = (
    "net",
    "modalities",
    "dataset",
    "scheme",
    "label_mode",
    "spatial_dims",
    "roi_size",
    "intensity",
    "spacing",
)
"""Keys of the inference config every checkpoint carries."""


def _read(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    if not path.exists():
        raise BtsInputError(path, "checkpoint file does not exist")
    if not path.is_file():
        raise BtsInputError(path, "not a file (give the .ckpt file, e.g. runs/<name>/checkpoints/last.ckpt)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, not a torch file, pickled code: many exception types
        raise BtsInputError(
            path, f"not a readable checkpoint, corrupt or truncated ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise BtsInputError(path, "not a Lightning checkpoint (no state_dict)")
    return ckpt


def _check_config(path: Path, config: Any) -> dict[str, Any]:
    if not isinstance(config, dict):
        raise BtsInputError(path, f"not a bts_monai checkpoint (no {INFERENCE_KEY!r} entry)")
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise BtsInputError(path, f"checkpoint's inference config lacks {', '.join(missing)}")
    net = config["net"]
    if not isinstance(net, dict) or not net.get("class_path") or not isinstance(net.get("init_args"), dict):
        raise BtsInputError(
            path,
            "the checkpoint does not say how to build its network (train through the CLI, or make the "
            "network with bts_monai.build_network)",
        )
    return config


def read_inference_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The inference config of a checkpoint, without building the network.

    Raises:
        BtsInputError: missing, corrupt or foreign file.
    """
    path = Path(path)
    return _full_config(path, _read(path, "cpu"))


def read_val_cases(path: str | os.PathLike[str]) -> list[str]:
    """The fixed validation cases (the DataModule's ``val_cases``) the checkpoint trained with;
    empty when its split was a seeded hold-out or folds.

    Raises:
        BtsInputError: missing, corrupt or foreign file.
    """
    hparams = _read(Path(path), "cpu").get("datamodule_hyper_parameters") or {}
    return [str(c) for c in hparams.get("val_cases") or []]


RECIPE_DATA_KEYS: tuple[str, ...] = (
    "roi_size",
    "spacing",
    "num_samples",
    "batch_size",
    "intensity",
    "augment",
    "spatial_augment",
    "seed",
)
"""What :func:`recipe_of` keeps of the DataModule's hyper-parameters."""


def recipe_of(ckpt: dict[str, Any]) -> dict[str, Any]:
    """How a checkpoint (a :func:`read_checkpoint` dict) was trained, from what Lightning saved
    in it: the optimizer and LR schedule (class and arguments), the loss (``None``: the module's
    DiceCE), deep-supervision weights, the patches, spacing, augmentation and seed of the
    DataModule, and the epochs and optimizer steps done. A packaged model's ``metadata.json``
    records it as ``recipe``."""
    module = ckpt.get("hyper_parameters") or {}
    data = ckpt.get("datamodule_hyper_parameters") or {}
    recipe: dict[str, Any] = {
        key: module.get(key)
        for key in ("optimizer", "lr_scheduler", "scheduler_interval", "loss", "deep_supervision_weights")
        if key in module
    }
    if recipe.get("loss") is None and "loss" in recipe:
        recipe["loss"] = "DiceCELoss (the module's default for the label mode)"
    recipe["data"] = {key: data[key] for key in RECIPE_DATA_KEYS if key in data}
    recipe["epochs"] = int(ckpt.get("epoch", -1)) + 1
    recipe["optimizer_steps"] = int(ckpt.get("global_step", 0))
    return recipe


def _full_config(path: Path, ckpt: dict[str, Any]) -> dict[str, Any]:
    """The checked inference config with its settings (defaults for old checkpoints) and the
    checkpoint's identity (name, epoch and step, SHA-256) for reports."""
    config = dict(_check_config(path, ckpt.get(INFERENCE_KEY)))
    config.update(inference_settings(config, path))
    config.update(
        model_name=path.stem,
        model_version=f"epoch {ckpt.get('epoch', '?')}, step {ckpt.get('global_step', '?')}",
        model_source=str(path),
        weights_sha256=sha256_file(path),
    )
    return config


def load_checkpoint(
    path: str | os.PathLike[str],
    map_location: str | torch.device = "cpu",
    trusted: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trained network from a checkpoint.

    Args:
        path: a ``.ckpt`` written while training with :class:`~bts_monai.model.module.BratsSegModule`.
        map_location: where to load the tensors.
        trusted: allow a network ``class_path`` outside :data:`TRUSTED_NETWORK_PACKAGES`.

    Returns:
        ``(network, config)``: the network in eval mode with the trained weights, and the
        inference config (``net`` with ``class_path``/``init_args``, ``modalities``, ``dataset``,
        ``scheme``, ``label_mode``, ``spatial_dims``, ``roi_size``, ``intensity``, ``spacing``, the
        :data:`~bts_monai.model.spec.INFERENCE_SETTINGS` and the
        :data:`~bts_monai.model.spec.PROVENANCE_KEYS`).

    Raises:
        BtsInputError: the file is missing, corrupt or truncated, not a checkpoint of this
            project, names an untrusted network class, or its weights do not fit the network.
    """
    path = Path(path)
    ckpt, config = read_checkpoint(path, map_location, trusted)
    return network_from(ckpt, config, path, map_location), config


def read_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu", trusted: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The first half of :func:`load_checkpoint`: the file read once (and hashed once) and its
    inference config checked, the network class refused if untrusted; no network is built.
    Returns ``(the checkpoint dict, the inference config)``.

    Raises:
        BtsInputError: as :func:`load_checkpoint`, but for the weights' fit.
    """
    path = Path(path)
    ckpt = _read(path, map_location)
    config = _full_config(path, ckpt)
    check_trusted(config["net"]["class_path"], path, trusted)
    return ckpt, config


def network_from(
    ckpt: dict[str, Any],
    config: dict[str, Any],
    path: str | os.PathLike[str],
    map_location: str | torch.device = "cpu",
) -> nn.Module:
    """The second half of :func:`load_checkpoint`: the network of a :func:`read_checkpoint`
    result, with its weights, in eval mode on ``map_location``.

    Raises:
        BtsInputError: the network cannot be built, or the weights do not fit it.
    """
    class_path = config["net"]["class_path"]
    try:
        net = build_network(class_path, config["net"]["init_args"])
    except Exception as exc:
        raise BtsInputError(path, f"cannot build network {class_path} ({type(exc).__name__}: {exc})") from exc
    prefix = "net."
    weights = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    load_weights(net, weights, path)
    net.to(map_location)
    net.eval()
    return net
