"""Packaged default models: weights shipped inside the package, so inference needs no download.

Each model is a folder ``bts_monai/models/<name>/`` holding ``model.safetensors`` (the network's
state dict, stored as float16 to stay small; loaded back as float32) and a MONAI-bundle-style
``metadata.json``: how to build the network, the inference settings (modalities and order, label
scheme, regions, patch size, normalisation, resampling), what it was trained on, the validation
figures measured, package versions, the command that reproduces it, intended use and data terms.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where a network is built (ONNX-runtime inference builds none)
    import torch
    from torch import nn

from bts_monai.errors import BtsInputError
from bts_monai.fileio import atomic_write, write_text
from bts_monai.inference.backends import packaged_onnx, write_packaged_onnx
from bts_monai.inference.postprocess import check_postprocess
from bts_monai.labels import get_scheme
from bts_monai.model.spec import (
    INFERENCE_SETTINGS,
    PROVENANCE_KEYS,
    build_network,
    check_settings,
    check_trusted,
    load_weights,
    sha256_file,
    unique_state,
)

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
    "open_model_folder",
    "is_model_folder",
    "model_provenance",
    "package_versions",
    "sha256_file",
    "weights_path",
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
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BtsInputError(path, f"cannot read model metadata ({exc})") from exc
    validate_metadata(meta, path)
    return meta


def validate_metadata(meta: dict[str, Any], path: str | os.PathLike[str] | None = None) -> None:
    """Check every field is present, the modalities/labels agree with the network's channels, the
    inference settings are in range and the weights entry names a file and its sha256.

    Raises:
        BtsInputError: a missing field or an inconsistency.
    """
    if not isinstance(meta, dict):
        raise BtsInputError(path, "model metadata is not a JSON object")
    missing = [f for f in METADATA_FIELDS if f not in meta]
    if missing:
        raise BtsInputError(path, f"model metadata lacks {', '.join(missing)}")
    try:
        _check_consistent(meta, path)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        if isinstance(exc, BtsInputError):
            raise
        raise BtsInputError(path, f"malformed model metadata ({type(exc).__name__}: {exc})") from exc


def _check_consistent(meta: dict[str, Any], path: str | os.PathLike[str] | None) -> None:
    inf, network, weights = meta["inference"], meta["network"], meta["weights"]
    if not isinstance(network.get("class_path"), str) or not isinstance(network.get("init_args"), dict):
        raise BtsInputError(path, "network must give class_path and init_args")
    net_args = network["init_args"]
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
    absent = [k for k in INFERENCE_SETTINGS if k not in inf]
    if absent:
        raise BtsInputError(path, f"inference lacks the settings {', '.join(absent)}")
    check_settings(inf, int(inf["spatial_dims"]), path)
    try:
        check_postprocess(inf.get("postprocess"))
    except ValueError as exc:
        raise BtsInputError(path, f"inference {exc}") from None
    if not isinstance(weights.get("file"), str) or not weights["file"]:
        raise BtsInputError(path, "weights.file must name the weights file")
    if not isinstance(weights.get("sha256"), str) or not re.fullmatch(r"[0-9a-f]{64}", weights["sha256"]):
        raise BtsInputError(path, "weights.sha256 must be the weights file's SHA-256 (64 hex digits)")


def load_packaged(
    name: str, map_location: str | torch.device = "cpu", trusted: bool = False
) -> tuple[nn.Module, dict[str, Any]]:
    """Build a packaged model: ``(network in eval mode, inference config)`` like ``load_checkpoint``.

    The weights load without unpickling anything (safetensors).
    """
    return load_model_folder(model_dir(name), map_location, trusted)


def is_model_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a packaged-model folder (holds ``metadata.json``)."""
    return Path(path).is_dir() and (Path(path) / METADATA_NAME).is_file()


def weights_path(folder: str | os.PathLike[str], meta: dict[str, Any]) -> Path:
    """The weights file ``metadata.json`` names, checked to lie inside ``folder``.

    Raises:
        BtsInputError: an absolute path, or one (or a link) leading out of the folder.
    """
    folder = Path(folder)
    name = meta["weights"]["file"]
    where = folder / METADATA_NAME
    if Path(name).is_absolute():
        raise BtsInputError(where, f"weights.file {name!r} must be a file name inside the model folder")
    path = folder / name
    if not path.resolve().is_relative_to(folder.resolve()):
        raise BtsInputError(where, f"weights.file {name!r} leads outside the model folder")
    return path


def open_model_folder(
    folder: str | os.PathLike[str], trusted: bool = False
) -> tuple[dict[str, Any], Callable[..., nn.Module]]:
    """Check a packaged-model folder and read its inference config, without building the network.

    Before anything is imported or built, the network class must come from
    :data:`~bts_monai.model.spec.TRUSTED_NETWORK_PACKAGES` (unless ``trusted``, as for checkpoints)
    and the weights file must lie inside the folder and match the SHA-256 recorded in
    ``metadata.json``. Nothing here imports torch: an ONNX runtime runs the folder's ``model.onnx``
    (``config["onnx_file"]``) without it.

    Returns:
        ``(config, build)``: ``build(map_location="cpu")`` makes the torch network (every tensor
        must fit it and hold finite values).

    Raises:
        BtsInputError: one line naming the file and the problem.
    """
    folder = Path(folder)
    meta = read_metadata(folder)
    class_path = meta["network"]["class_path"]
    check_trusted(class_path, folder / METADATA_NAME, trusted)
    path = weights_path(folder, meta)
    if not path.is_file():
        raise BtsInputError(path, "packaged weights file does not exist")
    digest = sha256_file(path)
    if digest != meta["weights"]["sha256"]:
        raise BtsInputError(
            path,
            f"SHA-256 {digest[:12]}... differs from the {meta['weights']['sha256'][:12]}... recorded in "
            f"{METADATA_NAME}: the weights were changed or damaged",
        )
    config = {
        "net": dict(meta["network"]),
        **meta["inference"],
        "model_name": meta["name"],
        "model_version": meta["version"],
        "model_source": str(folder),
        "weights_sha256": digest,
    }
    onnx_file = packaged_onnx(folder, meta, digest)  # what the ONNX runtimes read (inference/backends)
    if onnx_file is not None:
        config["onnx_file"] = str(onnx_file)

    def build(map_location: str | torch.device = "cpu") -> nn.Module:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise BtsInputError(path, f"cannot read packaged weights ({type(exc).__name__}: {exc})") from exc
        try:
            net = build_network(class_path, meta["network"]["init_args"])
        except Exception as exc:  # jsonargparse and the network's own checks raise many types
            raise BtsInputError(
                folder / METADATA_NAME, f"cannot build network {class_path} ({type(exc).__name__}: {exc})"
            ) from exc
        load_weights(net, state, path)
        return net.to(map_location).eval()

    return config, build


def load_model_folder(
    folder: str | os.PathLike[str], map_location: str | torch.device = "cpu", trusted: bool = False
) -> tuple[nn.Module, dict[str, Any]]:
    """Build the model of a packaged-model folder (see :func:`load_packaged`): the checks of
    :func:`open_model_folder`, then the network with its weights.

    Raises:
        BtsInputError: one line naming the file and the problem.
    """
    config, build = open_model_folder(folder, trusted)
    return build(map_location), config


PACKAGES: tuple[str, ...] = (
    "bts_monai",
    "torch",
    "monai",
    "numpy",
    "nibabel",
    "safetensors",
    "pytorch-lightning",
    "onnxruntime",
    "openvino",
)
"""Packages whose installed versions models and reports record (those not installed are left out)."""


def package_versions() -> dict[str, str]:
    """Python's and the installed :data:`PACKAGES`' versions (read from package metadata, no imports)."""
    import platform
    from importlib import metadata as pkg_metadata

    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = pkg_metadata.version(pkg)
        except pkg_metadata.PackageNotFoundError:
            pass
    return out


def model_provenance(source: str | os.PathLike[str]) -> dict[str, Any]:
    """Which model ``source`` is, without building it: a packaged model's name, a model folder or
    a training checkpoint -> ``model_name``, ``model_version``, ``model_source`` and
    ``weights_sha256`` (the weights file's hash, computed now), as the loaders record them.

    Raises:
        BtsInputError: no such model or file, or not a model of this project.
    """
    path = Path(source)
    if not path.exists() and not any(sep in str(source) for sep in ("/", os.sep)):
        path = model_dir(str(source))  # a packaged model's name
    if is_model_folder(path):
        meta = read_metadata(path)
        weights = weights_path(path, meta)
        if not weights.is_file():
            raise BtsInputError(weights, "packaged weights file does not exist")
        return {
            "model_name": meta["name"],
            "model_version": meta["version"],
            "model_source": str(path),
            "weights_sha256": sha256_file(weights),
        }
    from bts_monai.model.checkpoint import read_inference_config

    config = read_inference_config(path)
    return {k: config[k] for k in PROVENANCE_KEYS}


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
    trusted: bool = False,
    onnx: bool = True,
    postprocess: str = "none",
) -> Path:
    """Turn a training checkpoint into a packaged model folder (float16 safetensors + metadata,
    and with ``onnx`` the ONNX export the CPU runtimes read, checked against torch).

    ``metadata.json`` carries everything inference needs: the network spec, the data settings and
    the :data:`~bts_monai.model.spec.INFERENCE_SETTINGS` training validated with (threshold,
    window size, overlap and blending, mirror axes), the ``postprocess`` rule (chosen after
    training on the training cases, :mod:`~bts_monai.inference.postprocess`) and the weights' SHA-256.

    Returns:
        The model folder.

    Raises:
        BtsInputError: the checkpoint cannot be loaded, or the float16 weights are not finite.
    """
    import torch
    from safetensors.torch import save_file

    from bts_monai.model.checkpoint import network_from, read_checkpoint, recipe_of

    saved, config = read_checkpoint(ckpt, trusted=trusted)
    net, recipe = network_from(saved, config, ckpt), recipe_of(saved)
    del saved
    scheme = get_scheme(config["scheme"])
    folder = Path(out_root) / name
    weights = folder / WEIGHTS_NAME
    # each tensor once: a module registered twice (DynUNet's skip_layers) would double the file
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in unique_state(net).items()}
    overflow = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if overflow:
        raise BtsInputError(ckpt, f"weight {overflow[0]} does not fit float16 (values beyond +-65504)")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(weights, lambda tmp: save_file(state, str(tmp)))
    inference = {k: v for k, v in config.items() if k not in ("net", *PROVENANCE_KEYS)}
    inference["postprocess"] = check_postprocess(postprocess)
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
        "recipe": recipe,
        "validation": validation or {},
        "package_versions": package_versions(),
        "reproduce": reproduce or {},
        "intended_use": INTENDED_USE,
        "data_license": data_license,
        "weights": {
            "file": WEIGHTS_NAME,
            "format": "safetensors",
            "dtype": "float16 (loaded as float32)",
            "sha256": sha256_file(weights),
            "bytes": weights.stat().st_size,
            "parameters": int(sum(v.numel() for v in state.values())),
        },
    }
    if onnx:  # the export runs the float16-rounded weights, exactly what the package holds
        load_weights(net, {k: v.float() for k, v in state.items()}, weights)
        meta["onnx"] = write_packaged_onnx(net.cpu().eval(), config, folder, meta["weights"]["sha256"])
    validate_metadata(meta, folder / METADATA_NAME)
    write_text(folder / METADATA_NAME, json.dumps(meta, indent=2) + "\n")
    return folder
