"""Packaged default models: weights shipped inside the package, so inference needs no download.

Each model is a folder ``bts_monai/models/<name>/`` holding ``model.safetensors`` (the network's
state dict, stored as float16 to stay small; loaded back as float32) and a MONAI-bundle-style
``metadata.json``: how to build the network, the inference settings (modalities and order, label
scheme, regions, patch size, normalisation, resampling), what it was trained on, the validation
figures measured, package versions, the command that reproduces it, intended use and data terms.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from importlib import metadata as pkg_metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bts_monai.errors import BtsInputError
from bts_monai.labels import get_scheme

__all__ = [
    "MODELS_DIR",
    "DEFAULT_MODELS",
    "METADATA_FIELDS",
    "list_models",
    "model_dir",
    "read_metadata",
    "validate_metadata",
    "load_packaged",
    "load_model_folder",
    "is_model_folder",
    "export_model",
]

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
WEIGHTS_NAME = "model.safetensors"
METADATA_NAME = "metadata.json"

DEFAULT_MODELS: dict[str, str] = {"brats": "brats_unet_2mm", "lgg": "lgg_unet2d"}
"""Input kind -> packaged model used when no ``--ckpt``/``--model`` is given."""

METADATA_FIELDS: tuple[str, ...] = (
    "name",
    "version",
    "description",
    "network",
    "inference",
    "labels",
    "regions",
    "output_label_values",
    "training_data",
    "validation",
    "package_versions",
    "reproduce",
    "intended_use",
    "data_license",
    "weights",
)

INTENDED_USE = (
    "Research only, not for clinical diagnosis or treatment decisions. Trained on very few cases; "
    "outputs must be checked by an expert."
)


def model_dir(name: str) -> Path:
    """The folder of a packaged model.

    Raises:
        BtsInputError: no packaged model of that name.
    """
    path = MODELS_DIR / name
    if not (path / METADATA_NAME).is_file():
        known = ", ".join(m["name"] for m in list_models()) or "none"
        raise BtsInputError(None, f"no packaged model named {name!r} (packaged models: {known})")
    return path


def list_models() -> list[dict[str, Any]]:
    """Metadata of every packaged model, sorted by name."""
    if not MODELS_DIR.is_dir():
        return []
    return [read_metadata(p) for p in sorted(MODELS_DIR.iterdir()) if (p / METADATA_NAME).is_file()]


def read_metadata(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a model folder's ``metadata.json``."""
    path = Path(folder) / METADATA_NAME
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BtsInputError(path, f"cannot read model metadata ({exc})") from exc
    validate_metadata(meta, path)
    return meta


def validate_metadata(meta: dict[str, Any], path: str | os.PathLike[str] | None = None) -> None:
    """Check every field is present and the modalities/labels agree with the network's channels.

    Raises:
        BtsInputError: a missing field or an inconsistency.
    """
    missing = [f for f in METADATA_FIELDS if f not in meta]
    if missing:
        raise BtsInputError(path, f"model metadata lacks {', '.join(missing)}")
    inf, net_args = meta["inference"], meta["network"]["init_args"]
    scheme = get_scheme(inf["scheme"])
    if net_args.get("in_channels") != len(inf["modalities"]):
        raise BtsInputError(path, f"network has {net_args.get('in_channels')} inputs but {inf['modalities']}")
    expected_out = scheme.num_regions if inf["label_mode"] == "regions" else len(scheme.all_values)
    if net_args.get("out_channels") != expected_out:
        raise BtsInputError(path, f"network has {net_args.get('out_channels')} outputs, scheme needs {expected_out}")
    if net_args.get("spatial_dims") != inf["spatial_dims"]:
        raise BtsInputError(path, "network spatial_dims differs from the inference spatial_dims")
    if sorted(meta["output_label_values"]) != scheme.all_values:
        raise BtsInputError(path, f"output labels {meta['output_label_values']} differ from {scheme.all_values}")
    if list(meta["regions"]) != scheme.region_names:
        raise BtsInputError(path, f"regions {list(meta['regions'])} differ from {scheme.region_names}")


def load_packaged(name: str, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Build a packaged model: ``(network in eval mode, inference config)`` like ``load_checkpoint``.

    The weights load without unpickling anything (safetensors).
    """
    return load_model_folder(model_dir(name), map_location)


def is_model_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a packaged-model folder (holds ``metadata.json``)."""
    return Path(path).is_dir() and (Path(path) / METADATA_NAME).is_file()


def load_model_folder(
    folder: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Build the model of a packaged-model folder (see :func:`load_packaged`)."""
    from safetensors.torch import load_file

    from bts_monai.model.module import build_network

    folder = Path(folder)
    meta = read_metadata(folder)
    weights_path = folder / meta["weights"]["file"]
    try:
        state = load_file(str(weights_path), device="cpu")
    except Exception as exc:
        raise BtsInputError(weights_path, f"cannot read packaged weights ({type(exc).__name__}: {exc})") from exc
    net = build_network(meta["network"]["class_path"], meta["network"]["init_args"])
    net.load_state_dict({k: v.float() for k, v in state.items()})
    net.to(map_location).eval()
    config = {"net": dict(meta["network"]), **meta["inference"], "model_name": meta["name"]}
    return net, config


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "monai", "pytorch-lightning", "numpy", "nibabel", "bts_monai"):
        try:
            out[pkg] = pkg_metadata.version(pkg)
        except pkg_metadata.PackageNotFoundError:
            pass
    return out


def export_model(
    ckpt: str | os.PathLike[str],
    name: str,
    out_root: str | os.PathLike[str] = MODELS_DIR,
    *,
    description: str = "",
    training_data: dict[str, Any] | None = None,
    validation: dict[str, Any] | None = None,
    reproduce: dict[str, Any] | None = None,
    data_license: str = "",
    version: str = "1.0.0",
) -> Path:
    """Turn a training checkpoint into a packaged model folder (float16 safetensors + metadata).

    Returns:
        The model folder.
    """
    from safetensors.torch import save_file

    from bts_monai.model.checkpoint import load_checkpoint

    net, config = load_checkpoint(ckpt)
    scheme = get_scheme(config["scheme"])
    folder = Path(out_root) / name
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in net.state_dict().items()}
    tmp = folder / f".{WEIGHTS_NAME}.tmp"
    save_file(state, str(tmp))
    os.replace(tmp, folder / WEIGHTS_NAME)
    digest = hashlib.sha256((folder / WEIGHTS_NAME).read_bytes()).hexdigest()
    inference = {k: v for k, v in config.items() if k != "net"}
    meta = {
        "name": name,
        "version": version,
        "description": description,
        "network": config["net"],
        "inference": inference,
        "labels": {str(v): n for v, n in scheme.labels.items()},
        "regions": {r: list(v) for r, v in scheme.regions.items()},
        "output_label_values": scheme.all_values,
        "training_data": training_data or {},
        "validation": validation or {},
        "package_versions": _versions(),
        "reproduce": reproduce or {},
        "intended_use": INTENDED_USE,
        "data_license": data_license,
        "weights": {
            "file": WEIGHTS_NAME,
            "format": "safetensors",
            "dtype": "float16 (loaded as float32)",
            "sha256": digest,
            "bytes": (folder / WEIGHTS_NAME).stat().st_size,
            "parameters": int(sum(v.numel() for v in state.values())),
        },
    }
    validate_metadata(meta, folder / METADATA_NAME)
    tmp = folder / f".{METADATA_NAME}.tmp"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, folder / METADATA_NAME)
    return folder
