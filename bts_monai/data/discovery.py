"""Dataset discovery: an extracted dataset folder -> a MONAI/Decathlon-style datalist.

A datalist entry is a plain dict:

* BraTS (2017-2021): ``{"case_id", "dataset", "flair", "t1", "t1ce", "t2", "label"}`` — one path
  per modality; ``"label"`` is absent for unlabelled cases (validation sets), which are usable for
  inference and never for training.
* LGG kaggle_3m: ``{"case_id", "dataset": "lgg", "slices": [{"image", "label"}, ...]}`` — one
  entry per patient, slices ordered by their number, so splits are by patient, never by slice.

A datalist file is JSON: ``{"root", "datasets", "split", "training", "validation", "test"}``
where ``training``/``validation`` hold labelled entries (k-fold splits put every labelled case
in ``training`` with a ``"fold"`` key) and ``test`` the unlabelled ones. Paths are stored relative
to the JSON file's folder, like :func:`monai.data.load_decathlon_datalist`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bts_monai.errors import BtsInputError
from bts_monai.labels import get_scheme

__all__ = [
    "BRATS_MODALITIES",
    "LGG_CHANNELS",
    "discover",
    "discover_brats",
    "discover_lgg",
    "split_entries",
    "make_datalist",
    "write_datalist",
    "read_datalist",
    "select_split",
    "summarize",
    "check_case",
]

logger = logging.getLogger(__name__)

BRATS_MODALITIES: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")
LGG_CHANNELS: tuple[str, ...] = ("pre-contrast", "flair", "post-contrast")
"""The RGB channels of a Kaggle LGG slice, in order (a missing sequence is replaced by FLAIR)."""
_BRATS_FILE = re.compile(r"^(?P<case>.+)_(?P<kind>flair|t1ce|t1|t2|seg)\.nii(\.gz)?$", re.IGNORECASE)
# BraTS 2020 (Kaggle copy) ships case 355's label as e.g. "W39_1998.09.19_Segm.nii".
_STRAY_SEG = re.compile(r"^.*_Segm\.nii(\.gz)?$", re.IGNORECASE)
_LGG_MASK = re.compile(r"^(?P<patient>.+)_(?P<n>\d+)_mask\.tiff?$", re.IGNORECASE)
_LGG_IMAGE = re.compile(r"^(?P<patient>.+)_(?P<n>\d+)\.tiff?$", re.IGNORECASE)

# Case-id prefix -> dataset name; BraTS 2017-2021 share modalities and labels.
_BRATS_PREFIXES: tuple[tuple[str, str], ...] = (
    ("BraTS2021_", "brats2021"),
    ("BraTS20_", "brats2020"),
    ("BraTS19_", "brats2019"),
    ("Brats18_", "brats2018"),
    ("Brats17_", "brats2017"),
)


def _brats_dataset_name(case_id: str) -> str:
    for prefix, name in _BRATS_PREFIXES:
        if case_id.lower().startswith(prefix.lower()):
            return name
    return "brats"


def _walk_files(root: Path) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


def _keep_shallowest(found: dict[str, list[Path]], what: str) -> dict[str, Path]:
    """One folder per id: archives such as Kaggle's LGG carry nested duplicate copies."""
    out: dict[str, Path] = {}
    for key, dirs in found.items():
        dirs = sorted(set(dirs), key=lambda p: (len(p.parts), str(p)))
        if len(dirs) > 1:
            logger.warning("%s %s found %d times; using %s, ignoring %s", what, key, len(dirs), dirs[0], dirs[1:])
        out[key] = dirs[0]
    return out


def discover_brats(root: str | os.PathLike[str], modalities: Sequence[str] = BRATS_MODALITIES) -> list[dict[str, Any]]:
    """Find BraTS 2017-2021 cases (``<case>/<case>_{flair,t1,t1ce,t2,seg}.nii[.gz]``) under ``root``.

    Raises:
        BtsInputError: a case folder lacks a modality or has two labels.
    """
    root = Path(root)
    by_dir: dict[Path, dict[str, Path]] = defaultdict(dict)
    stray: dict[Path, list[Path]] = defaultdict(list)
    for path in _walk_files(root):
        m = _BRATS_FILE.match(path.name)
        if m:
            kind = m.group("kind").lower()
            if kind in by_dir[path.parent]:
                raise BtsInputError(path.parent, f"two {kind} files: {by_dir[path.parent][kind].name}, {path.name}")
            by_dir[path.parent][kind] = path
        elif _STRAY_SEG.match(path.name):
            stray[path.parent].append(path)
    # Folders are named after their case in every BraTS release; dedupe nested copies by that name.
    case_dirs = _keep_shallowest(_merge_dups(by_dir), "BraTS case")
    entries = []
    for case_id, case_dir in sorted(case_dirs.items()):
        files = by_dir[case_dir]
        if "seg" not in files and len(stray.get(case_dir, [])) == 1:
            logger.warning("%s: using %s as the label (non-standard name)", case_dir, stray[case_dir][0].name)
            files["seg"] = stray[case_dir][0]
        missing = [m for m in modalities if m not in files]
        if missing:
            raise BtsInputError(case_dir, f"case {case_id} is missing modality {', '.join(missing)}")
        entry: dict[str, Any] = {"case_id": case_id, "dataset": _brats_dataset_name(case_id)}
        entry.update({m: str(files[m]) for m in BRATS_MODALITIES if m in files})
        if "seg" in files:
            entry["label"] = str(files["seg"])
        entries.append(entry)
    return entries


def _merge_dups(by_dir: dict[Path, dict[str, Path]]) -> dict[str, list[Path]]:
    dups: dict[str, list[Path]] = defaultdict(list)
    for d in by_dir:
        dups[d.name].append(d)
    return dups


def discover_lgg(root: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Find LGG kaggle_3m patients (``TCGA_*/<patient>_<n>.tif`` + ``_<n>_mask.tif``) under ``root``.

    ``data.csv``/``README.md`` beside the patient folders are ignored and the archive's nested
    duplicate copy (``lgg-mri-segmentation/kaggle_3m``) does not double the patients.

    Raises:
        BtsInputError: a slice without its mask, or a mask without its slice.
    """
    root = Path(root)
    by_dir: dict[Path, dict[str, dict[int, Path]]] = defaultdict(lambda: {"image": {}, "label": {}})
    for path in _walk_files(root):
        m = _LGG_MASK.match(path.name)
        if m:
            by_dir[path.parent]["label"][int(m.group("n"))] = path
            continue
        m = _LGG_IMAGE.match(path.name)
        if m:
            by_dir[path.parent]["image"][int(m.group("n"))] = path
    patients = _keep_shallowest(_merge_dups(by_dir), "LGG patient")  # type: ignore[arg-type]
    entries = []
    for patient, pdir in sorted(patients.items()):
        images, labels = by_dir[pdir]["image"], by_dir[pdir]["label"]
        for n in sorted(set(images) - set(labels)):
            raise BtsInputError(images[n], "LGG slice has no mask (expected " + images[n].stem + "_mask.tif)")
        for n in sorted(set(labels) - set(images)):
            raise BtsInputError(labels[n], "LGG mask has no image slice beside it")
        slices = [{"image": str(images[n]), "label": str(labels[n])} for n in sorted(images)]
        entries.append({"case_id": patient, "dataset": "lgg", "slices": slices})
    return entries


def discover(root: str | os.PathLike[str], dataset: str = "auto") -> list[dict[str, Any]]:
    """Turn an extracted dataset folder into datalist entries.

    Args:
        root: the folder (any level above the case folders).
        dataset: ``"auto"`` (detect BraTS and LGG layouts), ``"brats"``/``"brats20XX"`` or ``"lgg"``.
            A BraTS year given explicitly overrides the name guessed from the case ids.

    Raises:
        BtsInputError: missing or empty folder, unknown layout, incomplete cases.
    """
    root = Path(root)
    if not root.exists():
        raise BtsInputError(root, "folder does not exist")
    if not root.is_dir():
        raise BtsInputError(root, "not a folder (give the folder that holds the case folders)")
    dataset = dataset.lower()
    entries: list[dict[str, Any]] = []
    if dataset == "auto" or dataset.startswith("brats"):
        brats = discover_brats(root)
        if dataset.startswith("brats") and dataset != "brats":
            get_scheme(dataset)  # validates the name
            for e in brats:
                e["dataset"] = dataset
        entries += brats
    if dataset in ("auto", "lgg"):
        entries += discover_lgg(root)
    if dataset not in ("auto", "lgg") and not dataset.startswith("brats"):
        raise BtsInputError(None, f"unknown dataset {dataset!r}: use auto, lgg, brats or brats2017..brats2021")
    if not entries:
        files = list(_walk_files(root))
        if not files:
            raise BtsInputError(root, "folder is empty: no dataset files found")
        kinds = sorted({"".join(p.suffixes) or p.name for p in files})[:8]
        raise BtsInputError(
            root,
            f"unknown layout: {len(files)} files ({', '.join(kinds)}) but no BraTS case "
            "(<case>/<case>_{flair,t1,t1ce,t2}.nii[.gz]) and no LGG patient (<patient>_<n>.tif + _<n>_mask.tif)",
        )
    return entries


def check_case(entry: dict[str, Any], full: bool = False) -> None:
    """Check one entry's files: BraTS modalities agree in shape and affine; with ``full``, every
    file decodes and labels lie in the dataset's scheme.

    Header reads are cheap (no voxel decoding), so discovery commands run them for every case.

    Raises:
        BtsInputError: naming the file and the problem.
    """
    import nibabel as nib

    if entry["dataset"] == "lgg":
        if full:
            _check_lgg(entry)
        return
    ref_path, ref_shape, ref_affine = None, None, None
    keys = [m for m in BRATS_MODALITIES if m in entry] + (["label"] if "label" in entry else [])
    for key in keys:
        path = entry[key]
        try:
            img = nib.load(path)
            shape, affine = img.shape[:3], img.affine
            if full:
                data = np.asanyarray(img.dataobj)
        except Exception as exc:  # nibabel raises many types for corrupt files
            raise BtsInputError(path, f"cannot read as NIfTI ({type(exc).__name__}: {exc})") from exc
        if len(img.shape) != 3:
            raise BtsInputError(path, f"expected a 3D volume, got shape {img.shape}")
        if ref_shape is None:
            ref_path, ref_shape, ref_affine = path, shape, affine
        elif shape != ref_shape:
            raise BtsInputError(path, f"shape {shape} differs from {Path(ref_path).name}'s {ref_shape}")
        elif not np.allclose(affine, ref_affine, atol=1e-3):
            raise BtsInputError(path, f"affine differs from {Path(ref_path).name}'s (modalities not co-registered)")
        if full and key == "label":
            get_scheme(entry["dataset"]).check_values(np.unique(data), path)
        elif full and not np.isfinite(data).all():
            raise BtsInputError(path, "contains NaN or Inf voxels")


def _check_lgg(entry: dict[str, Any]) -> None:
    import tifffile

    scheme = get_scheme("lgg")
    for s in entry["slices"]:
        for key in ("image", "label"):
            try:
                arr = tifffile.imread(s[key])
            except Exception as exc:
                raise BtsInputError(s[key], f"cannot read as TIFF ({type(exc).__name__}: {exc})") from exc
            if key == "label":
                scheme.check_values(np.unique(arr), s[key])


def split_entries(
    entries: Sequence[dict[str, Any]],
    val_fraction: float | None = 0.1,
    folds: int | None = None,
    seed: int = 0,
) -> dict[str, list[dict[str, Any]]]:
    """Seeded split of labelled cases by case (patient), never by slice.

    With ``folds`` every labelled entry goes to ``training`` with a ``"fold"`` key (0..folds-1);
    otherwise ``val_fraction`` of them (at least one when there are two or more) go to
    ``validation``. Unlabelled entries go to ``test``.
    """
    labelled = [dict(e) for e in entries if _has_label(e)]
    unlabelled = [dict(e) for e in entries if not _has_label(e)]
    order = sorted(labelled, key=lambda e: (e["dataset"], e["case_id"]))
    random.Random(seed).shuffle(order)
    if folds:
        if folds < 2:
            raise ValueError("folds must be at least 2")
        for i, e in enumerate(order):
            e["fold"] = i % folds
        return {"training": order, "validation": [], "test": unlabelled}
    frac = 0.1 if val_fraction is None else val_fraction
    if not 0 <= frac < 1:
        raise ValueError("val_fraction must be in [0, 1)")
    n_val = int(round(len(order) * frac))
    if frac > 0 and n_val == 0 and len(order) >= 2:
        n_val = 1
    return {"training": order[n_val:], "validation": order[:n_val], "test": unlabelled}


def _has_label(entry: dict[str, Any]) -> bool:
    return "label" in entry or "slices" in entry


def select_split(datalist: dict[str, Any], fold: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, val) entries of a datalist; for k-fold datalists, ``fold`` is validation."""
    split = datalist.get("split", {})
    if split.get("mode") == "kfold":
        k = int(split["folds"])
        if not 0 <= fold < k:
            raise ValueError(f"fold {fold} out of range for a {k}-fold datalist")
        train = [e for e in datalist["training"] if e["fold"] != fold]
        val = [e for e in datalist["training"] if e["fold"] == fold]
        return train, val
    return list(datalist["training"]), list(datalist.get("validation", []))


def summarize(entries: Sequence[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per dataset: number of cases, labelled cases and (LGG) slices."""
    out: dict[str, dict[str, int]] = {}
    for e in entries:
        s = out.setdefault(e["dataset"], {"cases": 0, "labelled": 0, "slices": 0})
        s["cases"] += 1
        s["labelled"] += int(_has_label(e))
        s["slices"] += len(e.get("slices", []))
    return out


def make_datalist(
    root: str | os.PathLike[str],
    dataset: str = "auto",
    val_fraction: float | None = 0.1,
    folds: int | None = None,
    seed: int = 0,
    check: bool = True,
    full_check: bool = False,
) -> dict[str, Any]:
    """Discover ``root``, check every case's headers and split it: the datalist as a dict."""
    entries = discover(root, dataset)
    if check or full_check:
        for e in entries:
            check_case(e, full=full_check)
    split = split_entries(entries, val_fraction=val_fraction, folds=folds, seed=seed)
    mode = {"mode": "kfold", "folds": folds} if folds else {"mode": "holdout", "val_fraction": val_fraction}
    return {
        "root": str(Path(root).resolve()),
        "datasets": summarize(entries),
        "split": {**mode, "seed": seed},
        **split,
    }


def _map_paths(entry: dict[str, Any], fn) -> dict[str, Any]:
    out = dict(entry)
    for key in (*BRATS_MODALITIES, "label", "image"):
        if isinstance(out.get(key), str):
            out[key] = fn(out[key])
    if "slices" in out:
        out["slices"] = [_map_paths(s, fn) for s in out["slices"]]
    return out


_LISTS = ("training", "validation", "test")


def write_datalist(datalist: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write a datalist as JSON (atomically), paths relative to the file's folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.parent.resolve()
    out = dict(datalist)
    for key in _LISTS:
        out[key] = [_map_paths(e, lambda p: os.path.relpath(Path(p).resolve(), base)) for e in datalist.get(key, [])]
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(out, indent=1))
    os.replace(tmp, path)


def read_datalist(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a datalist JSON; relative paths are resolved against the file's folder.

    Raises:
        BtsInputError: the file is missing or not a datalist.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise BtsInputError(path, "datalist file does not exist") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BtsInputError(path, f"not a JSON datalist ({exc})") from exc
    if not isinstance(data, dict) or "training" not in data:
        raise BtsInputError(path, "not a datalist: expected a JSON object with a 'training' list")
    base = path.parent.resolve()
    for key in _LISTS:
        data[key] = [_map_paths(e, lambda p: str(base / p)) for e in data.get(key, [])]
    return data
