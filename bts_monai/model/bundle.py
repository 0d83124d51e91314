"""MONAI bundle export: a model as a folder that ``python -m monai.bundle run`` runs on case folders.

``bts-export-model MODEL --bundle DIR`` (:func:`write_bundle`) writes MONAI's bundle layout (as the
model zoo's ``brats_mri_segmentation`` has it)::

    DIR/configs/metadata.json     MONAI's metadata (versions, network data format, label classes,
                                  validation figures) and, under "bts_monai", the model's own
    DIR/configs/inference.json    case folders -> label files (below)
    DIR/configs/logging.conf      log lines on stdout, as model-zoo bundles do
    DIR/models/model.pt           the network's state dict (float32; loads with weights_only=True)
    DIR/scripts/bts_transforms.py the few transforms MONAI lacks (see below)
    DIR/docs/README.md            how to run it

``configs/inference.json`` is the Predictor's own chain, step for step, in MONAI components:
``LoadImaged`` (one file per modality, in the model's order) -> ``EnsureChannelFirstd`` ->
``Orientationd`` RAS -> ``Spacingd`` (the model's spacing, bilinear) -> ``CropForegroundd`` to
the brain (non-zero in any channel) -> z-score inside that one brain mask -> ``SlidingWindowInferer``
(the model's window, overlap and blending) in a ``SupervisedEvaluator`` -> sigmoid -> ``Invertd``
back to the scan's own grid -> threshold -> regions painted into label values (``labels.py``'s
paint order) -> ``SaveImaged`` as ``<case>_seg.nii.gz``. It needs ``fire`` (MONAI's command line)
and ``pytorch-ignite`` (the evaluator), the ``bundle`` extra; not bts_monai:
``scripts/bts_transforms.py`` is this package's own code of the brain-mask transforms and of the
few helpers below, written out by :func:`bundle_scripts` (``inspect``) so the bundle runs where
bts_monai is not installed, and cannot drift from the Predictor's transforms.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type
from torch import nn

from bts_monai.data import layouts
from bts_monai.errors import BtsInputError
from bts_monai.fileio import StagedFiles
from bts_monai.labels import get_scheme

__all__ = [
    "BUNDLE_PACKAGES",
    "SCRIPTS_MODULE",
    "CaseNames",
    "RegionsToLabelsd",
    "bundle_scripts",
    "case_datalist",
    "case_files",
    "image_suffixes",
    "inference_config",
    "load_model",
    "metadata",
    "missing_bundle_packages",
    "write_bundle",
]

SCRIPTS_MODULE = "scripts.bts_transforms"
"""The bundle's own module (MONAI puts the bundle folder on ``sys.path`` before it runs)."""

BUNDLE_PACKAGES: tuple[str, ...] = ("nibabel", "pytorch-ignite", "fire")
"""What the bundle needs beside torch, MONAI and numpy (``pip install 'bts_monai[bundle]'``)."""

META_SCHEMA = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json"
"""The metadata schema model-zoo bundles name."""

_MODEL_SPACE_STEPS = (
    "SelectChannelsd",  # a no-op for one file per modality, what the bundle reads
    "Orientationd",
    "Spacingd",
    "CropForegroundd",
    "NormalizeInBraind",
    "ScaleIntensityd",
    "CastToTyped",
)
"""Steps of the Predictor's model-space chain (:func:`~bts_monai.inference.geometry.model_space_transforms`)
that :func:`inference_config` writes; an export refuses a chain with any other step rather than
write a bundle that preprocesses differently."""


# ---- what the bundle runs: written into scripts/bts_transforms.py ------------------------------
class RegionsToLabelsd(MapTransform):
    """Region probabilities ``(R, *spatial)`` -> one channel of label values ``(1, *spatial)``,
    uint8: each region above ``threshold`` paints its label, in ``paint_order``
    (:meth:`~bts_monai.labels.LabelScheme.from_regions`'s rule).

    Args:
        keys: keys of the probabilities.
        threshold: a voxel is in a region when its probability is above this (strictly).
        paint_order: ``[region channel, label value]`` pairs, outermost region first.
        background: the value of voxels in no region.
    """

    def __init__(
        self,
        keys: KeysCollection,
        threshold: float,
        paint_order: Sequence[Sequence[int]],
        background: int = 0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.threshold = float(threshold)
        self.paint_order = [(int(c), int(v)) for c, v in paint_order]
        self.background = int(background)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            probs = d[key]
            plain = probs.as_tensor() if hasattr(probs, "as_tensor") else torch.as_tensor(probs)
            masks = plain > self.threshold
            labels = torch.full((1, *plain.shape[1:]), self.background, dtype=torch.uint8)
            for channel, value in self.paint_order:
                labels[0][masks[channel]] = value
            d[key] = convert_to_dst_type(labels, probs, dtype=torch.uint8)[0]
        return d


class CaseNames:
    """``SaveImaged``'s ``output_name_formatter``: the case's name (its first modality file's name
    without that modality's suffix), so outputs are ``<case>_seg.nii.gz`` like ``bts-infer``'s."""

    def __init__(self, suffixes: Sequence[str]) -> None:
        self.suffixes = sorted((str(s) for s in suffixes), key=len, reverse=True)

    def __call__(self, metadict: Mapping[str, Any], saver: Any = None) -> dict[str, Any]:
        name = os.path.basename(str((metadict or {}).get("filename_or_obj", "case")))
        for suffix in self.suffixes:
            if name.lower().endswith(suffix.lower()):
                name = name[: -len(suffix)]
                break
        return {"subject": name, "idx": (metadict or {}).get("patch_index")}


def case_files(folder: str | os.PathLike[str], suffixes: Sequence[Sequence[str]]) -> list[str] | None:
    """A case folder's file of each modality, in order (one suffix list per modality: a file
    belongs to a modality when its name ends in one of them); ``None`` when no file matches any.

    Raises:
        ValueError: a modality has no file, or more than one.
    """
    folder = Path(folder)
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    found = [[n for n in names if any(n.lower().endswith(s.lower()) for s in group)] for group in suffixes]
    if not any(found):
        return None
    for group, files in zip(suffixes, found):
        if len(files) != 1:
            problem = "no file" if not files else f"{len(files)} files ({', '.join(files)})"
            raise ValueError(f"{folder}: {problem} ending in {' or '.join(group)}")
    return [str(folder / files[0]) for files in found]


def case_datalist(dataset_dir: str | os.PathLike[str], suffixes: Sequence[Sequence[str]]) -> list[dict[str, Any]]:
    """The bundle's datalist: ``[{"image": [one file per modality]}]`` for ``dataset_dir``, a case
    folder or a folder of case folders (see :func:`case_files`).

    Raises:
        FileNotFoundError: ``dataset_dir`` is not a folder, or holds no case.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise FileNotFoundError(
            f"dataset_dir {root} is not a folder: pass --dataset_dir CASE_FOLDER (or a folder of them)"
        )
    own = case_files(root, suffixes)
    if own is not None:
        return [{"image": own}]
    cases = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = case_files(folder, suffixes)
        if files is not None:
            cases.append({"image": files})
    if not cases:
        wanted = ", ".join(group[0] for group in suffixes)
        raise FileNotFoundError(f"{root}: no case folder here (one file per modality: *{wanted})")
    return cases


_SCRIPT_HEADER = '''"""What configs/inference.json needs beyond MONAI: bts_monai {version}'s own code of these
transforms and helpers, written out by `bts-export-model --bundle` so the bundle runs without
bts_monai (the docstrings' cross-references point into bts_monai)."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_dst_type

__all__ = [
{names}
]
'''


def bundle_scripts() -> str:
    """The source of the bundle's ``scripts/bts_transforms.py``: the brain mask, its select
    function and the z-score inside it (:mod:`bts_monai.data.transforms`, what training and the
    Predictor run) and this module's :class:`RegionsToLabelsd`, :class:`CaseNames`,
    :func:`case_files` and :func:`case_datalist`, each copied from its source."""
    from bts_monai.data import transforms as tr

    parts: list[Any] = [
        tr.brain_mask,
        tr.is_nonzero,
        tr.NormalizeInBrain,
        tr.NormalizeInBraind,
        RegionsToLabelsd,
        CaseNames,
        case_files,
        case_datalist,
    ]
    names = [p.__name__ for p in parts]
    body = "\n\n".join(inspect.getsource(p) for p in parts)
    listed = "\n".join(f'    "{n}",' for n in names)
    return _SCRIPT_HEADER.format(version=_version("bts_monai"), names=listed) + "\n\n" + body


# ---- the configs -----------------------------------------------------------------------------------
def image_suffixes(modalities: Sequence[str]) -> list[list[str]]:
    """Per modality, the file-name endings of its file in a case folder: BraTS 2017-2021 and
    2023 names, ``.nii.gz`` and ``.nii`` (:func:`~bts_monai.data.layouts.modality_file_name`)."""
    return [
        [
            layouts.modality_file_name("", m, layout, ending)
            for layout in ("brats", "brats2023")
            for ending in (".nii.gz", ".nii")
        ]
        for m in modalities
    ]


def _check_exportable(config: dict[str, Any], path: str | os.PathLike[str] | None) -> None:
    from bts_monai.inference import geometry

    if int(config["spatial_dims"]) != 3 or str(config.get("dataset", "")).lower() == "lgg":
        raise BtsInputError(path, "a MONAI bundle is written for 3D NIfTI models only (this one reads 2D slices)")
    if config["label_mode"] != "regions":
        raise BtsInputError(path, "a MONAI bundle is written for region (sigmoid) models only")
    if config["intensity"] not in ("zscore", "minmax"):
        raise BtsInputError(path, f"a MONAI bundle cannot express intensity {config['intensity']!r}")
    net = config["net"]
    if not str(net["class_path"]).startswith("monai."):
        raise BtsInputError(path, f"a MONAI bundle needs a MONAI network, not {net['class_path']}")
    if any(isinstance(v, dict) for v in net["init_args"].values()):
        raise BtsInputError(path, "a MONAI bundle needs plain network arguments (no nested classes)")
    steps = [type(t).__name__ for t in geometry.model_space_transforms(config, "nifti").transforms]
    unknown = [s for s in steps if s not in _MODEL_SPACE_STEPS]
    if unknown:
        raise BtsInputError(path, f"the model's preprocessing has steps a bundle does not write: {', '.join(unknown)}")


def _intensity(mode: str) -> dict[str, Any]:
    if mode == "zscore":
        return {"_target_": f"{SCRIPTS_MODULE}.NormalizeInBraind", "keys": "image"}
    return {"_target_": "ScaleIntensityd", "keys": "image", "minv": 0.0, "maxv": 1.0, "channel_wise": True}


def _preprocessing(config: dict[str, Any]) -> dict[str, Any]:
    """Training's deterministic NIfTI chain (:func:`~bts_monai.data.transforms.deterministic_transforms`)
    as bundle components, with MONAI's loader in front."""
    steps: list[dict[str, Any]] = [
        {"_target_": "LoadImaged", "keys": "image", "image_only": True},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS", "labels": [["L", "R"], ["P", "A"], ["I", "S"]]},
    ]
    if config.get("spacing"):
        steps.append(
            {
                "_target_": "Spacingd",
                "keys": "image",
                "pixdim": [float(s) for s in config["spacing"]],
                "mode": "bilinear",
            }
        )
    select = {"_target_": f"{SCRIPTS_MODULE}.is_nonzero", "_mode_": "callable"}
    steps += [
        {
            "_target_": "CropForegroundd",
            "keys": "image",
            "source_key": "image",
            "select_fn": select,
            "allow_smaller": True,
        },
        _intensity(config["intensity"]),
        {"_target_": "CastToTyped", "keys": "image", "dtype": "$np.float32"},
    ]
    return {"_target_": "Compose", "transforms": steps}


def inference_config(config: dict[str, Any], settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """``configs/inference.json`` for a model's inference config.

    Args:
        config: the inference config (``net``, ``modalities``, ``scheme``, ``spacing``,
            ``intensity``, and the :data:`~bts_monai.model.spec.INFERENCE_SETTINGS`).
        settings: overrides of those settings (default: the model's, as validated).

    Raises:
        BtsInputError: the model is not one a bundle can express (2D, labels mode, a network
            outside MONAI).
    """
    from bts_monai.model.spec import check_settings, inference_settings

    _check_exportable(config, config.get("model_source"))
    chosen = check_settings({**inference_settings(config), **(settings or {})}, 3)
    scheme = get_scheme(config["scheme"])
    names = scheme.region_names
    modalities = list(config["modalities"])
    return {
        "bundle_root": ".",
        "dataset_dir": "$@bundle_root + '/cases'",
        "output_dir": "$@bundle_root + '/eval'",
        "modalities": modalities,
        "image_suffixes": image_suffixes(modalities),
        "datalist": {
            "_target_": f"{SCRIPTS_MODULE}.case_datalist",
            "dataset_dir": "@dataset_dir",
            "suffixes": "@image_suffixes",
        },
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": {"_target_": config["net"]["class_path"], **config["net"]["init_args"]},
        "network": "$@network_def.to(@device)",
        "preprocessing": _preprocessing(config),
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "dataloader": {
            "_target_": "DataLoader",
            "dataset": "@dataset",
            "batch_size": 1,
            "shuffle": False,
            "num_workers": 0,
        },
        "inferer": {
            "_target_": "SlidingWindowInferer",
            "roi_size": chosen["sw_roi_size"],
            "sw_batch_size": 1,
            "overlap": chosen["sw_overlap"],
            "mode": chosen["sw_mode"],
        },
        "threshold": chosen["threshold"],
        "paint_order": [[names.index(region), int(value)] for region, value in scheme.paint_order()],
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
                {
                    "_target_": "Invertd",
                    "keys": "pred",
                    "transform": "@preprocessing",
                    "orig_keys": "image",
                    "nearest_interp": False,
                    "to_tensor": True,
                },
                {
                    "_target_": f"{SCRIPTS_MODULE}.RegionsToLabelsd",
                    "keys": "pred",
                    "threshold": "@threshold",
                    "paint_order": "@paint_order",
                    "background": int(scheme.background),
                },
                {
                    "_target_": "SaveImaged",
                    "keys": "pred",
                    "output_dir": "@output_dir",
                    "output_postfix": "seg",
                    "output_ext": ".nii.gz",
                    "output_dtype": "$np.uint8",
                    "resample": False,
                    "squeeze_end_dims": True,
                    "separate_folder": False,
                    "output_name_formatter": {
                        "_target_": f"{SCRIPTS_MODULE}.CaseNames",
                        "suffixes": "@image_suffixes#0",
                    },
                },
            ],
        },
        "handlers": [
            {
                "_target_": "CheckpointLoader",
                "load_path": "$@bundle_root + '/models/model.pt'",
                "load_dict": {"model": "@network"},
            },
            {"_target_": "StatsHandler", "iteration_log": False},
        ],
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "val_handlers": "@handlers",
            "amp": False,
        },
        "run": ["$@evaluator.run()"],
    }


def missing_bundle_packages() -> list[str]:
    """Those of :data:`BUNDLE_PACKAGES` that are not installed here (running a bundle needs them)."""
    import importlib.util

    modules = {"nibabel": "nibabel", "pytorch-ignite": "ignite", "fire": "fire"}
    return [p for p in BUNDLE_PACKAGES if importlib.util.find_spec(modules[p]) is None]


def _version(package: str) -> str:
    from importlib import metadata as pkg_metadata

    try:
        return pkg_metadata.version(package)
    except pkg_metadata.PackageNotFoundError:
        return "not installed"


def metadata(config: dict[str, Any], model_meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """``configs/metadata.json``: MONAI's bundle fields, and the model's own metadata (a packaged
    model's ``metadata.json``, else its inference config) under ``"bts_monai"``."""
    scheme = get_scheme(config["scheme"])
    meta = model_meta or {}
    modalities = list(config["modalities"])
    roi = [int(r) for r in (config.get("sw_roi_size") or config["roi_size"])]
    regions = {
        str(i): f"{name} (labels {', '.join(str(v) for v in vals)})"
        for i, (name, vals) in enumerate(scheme.regions.items())
    }
    dice = {
        f"val_mean_dice_{region.lower()}": figures["dice"]
        for region, figures in meta.get("validation", {}).get("mean_per_region", {}).items()
        if isinstance(figures, dict) and "dice" in figures
    }
    version = str(meta.get("version") or "0.1.0")
    return {
        "schema": META_SCHEMA,
        "version": version,
        "changelog": {version: f"exported by bts-export-model (bts_monai {_version('bts_monai')})"},
        "monai_version": _version("monai"),
        "pytorch_version": _version("torch"),
        "numpy_version": _version("numpy"),
        "optional_packages_version": {p: _version(p) for p in BUNDLE_PACKAGES},
        "name": str(meta.get("name") or config.get("model_name") or "bts_monai model"),
        "task": "Brain tumour segmentation from multimodal MRI",
        "description": str(meta.get("description") or f"bts_monai model {config.get('model_name', '')}").strip(),
        "authors": "bts_monai developers",
        "copyright": "Copyright (c) bts_monai developers",
        "data_source": str(config.get("dataset", "")),
        "data_type": "nibabel",
        "image_classes": f"{len(modalities)} channel data, one NIfTI file per modality: {', '.join(modalities)}",
        "label_classes": f"labels {scheme.labels} ({scheme.description})",
        "pred_classes": f"one channel of label values {scheme.all_values}, in the scan's own grid",
        "eval_metrics": dice,
        "intended_use": str(meta.get("intended_use") or "Research only, not for clinical diagnosis."),
        "references": [str(meta["data_license"])] if meta.get("data_license") else [],
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": "MR",
                    "num_channels": len(modalities),
                    "spatial_shape": roi,
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": True,
                    "channel_def": {str(i): m for i, m in enumerate(modalities)},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": scheme.num_regions,
                    "spatial_shape": roi,
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": True,
                    "channel_def": regions,
                }
            },
        },
        "bts_monai": meta or {k: v for k, v in config.items() if k != "model_source"},
    }


_LOGGING_CONF = """[loggers]
keys=root

[handlers]
keys=consoleHandler

[formatters]
keys=fullFormatter

[logger_root]
level=INFO
handlers=consoleHandler

[handler_consoleHandler]
class=StreamHandler
level=INFO
formatter=fullFormatter
args=(sys.stdout,)

[formatter_fullFormatter]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""

_README = """# {name} (MONAI bundle)

{description}

Written by `bts-export-model --bundle` (bts_monai {version}). Needs torch, MONAI {monai},
nibabel, pytorch-ignite and fire (`pip install monai nibabel pytorch-ignite fire`); not bts_monai.

```bash
cd {folder}
python -m monai.bundle run --config_file configs/inference.json --dataset_dir CASE_OR_CASES --output_dir OUT
```

`--dataset_dir` is a case folder (one NIfTI file per modality: {modalities}, named
`<case>_<modality>.nii.gz` or BraTS 2023's `<case>-<t2f|t1n|t1c|t2w>.nii.gz`) or a folder of case
folders; each case gives `OUT/<case>_seg.nii.gz` in the scan's own grid, label values
{values}. From another folder add `--bundle_root {folder}`.

{intended_use}
"""


def write_bundle(
    net: nn.Module,
    config: dict[str, Any],
    folder: str | os.PathLike[str],
    model_meta: dict[str, Any] | None = None,
) -> Path:
    """Write ``net`` as a MONAI bundle in ``folder`` (see the module docstring), all files or none.

    Args:
        net: the network (its weights are saved float32).
        config: its inference config (from :func:`load_model`).
        folder: the bundle folder (created; files of an earlier export are replaced).
        model_meta: a packaged model's ``metadata.json`` (for the bundle's metadata).

    Returns:
        The bundle folder.

    Raises:
        BtsInputError: a model a bundle cannot express, or a folder that cannot be written.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise BtsInputError(folder, "the bundle folder is a file")
    inference = inference_config(config)
    meta = metadata(config, model_meta)
    state = {k: v.detach().cpu().float().contiguous() for k, v in net.state_dict().items()}
    readme = _README.format(
        name=meta["name"],
        description=meta["description"],
        version=_version("bts_monai"),
        monai=meta["monai_version"],
        folder=folder,
        modalities=", ".join(config["modalities"]),
        values=get_scheme(config["scheme"]).all_values,
        intended_use=meta["intended_use"],
    )
    texts = {
        "configs/metadata.json": json.dumps(meta, indent=2) + "\n",
        "configs/inference.json": json.dumps(inference, indent=2) + "\n",
        "configs/logging.conf": _LOGGING_CONF,
        "scripts/__init__.py": "",
        "scripts/bts_transforms.py": bundle_scripts(),
        "docs/README.md": readme,
    }
    with StagedFiles() as staged:
        for name, text in texts.items():
            staged.add(folder / name, lambda tmp, t=text: tmp.write_text(t, encoding="utf-8"))
        staged.add(folder / "models" / "model.pt", lambda tmp: torch.save(state, tmp))
    return folder


# ---- which model -----------------------------------------------------------------------------------
def load_model(
    source: str | os.PathLike[str], trusted: bool = False
) -> tuple[nn.Module, dict[str, Any], dict[str, Any] | None]:
    """The model an export starts from: a training checkpoint, a packaged-model folder or the
    name of a packaged model (``bts-infer --list-models``).

    Returns:
        ``(network in eval mode, inference config, metadata.json or None for a checkpoint)``.

    Raises:
        BtsInputError: none of those, or a model that does not load.
    """
    from bts_monai.model.packaged import MODELS_DIR, is_model_folder, list_models, load_model_folder, read_metadata

    path = Path(source)
    if is_model_folder(path):
        net, config = load_model_folder(path, trusted=trusted)
        return net, config, read_metadata(path)
    if path.is_file():
        from bts_monai.model.checkpoint import load_checkpoint

        net, config = load_checkpoint(path, trusted=trusted)
        return net, config, None
    if path.name == str(source) and is_model_folder(MODELS_DIR / path.name):
        folder = MODELS_DIR / path.name
        net, config = load_model_folder(folder, trusted=trusted)
        return net, config, read_metadata(folder)
    known = ", ".join(m["name"] for m in list_models()) or "none"
    raise BtsInputError(path, f"not a checkpoint, a model folder or a packaged model (packaged: {known})")
