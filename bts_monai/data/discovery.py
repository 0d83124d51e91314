"""Dataset discovery: an extracted dataset folder -> a MONAI/Decathlon-style datalist.

Every layout in :data:`bts_monai.data.layouts.LAYOUTS` is found here; which file is what is
asked of :mod:`bts_monai.data.layouts`, never spelled here. A datalist entry is a plain dict
with ``"case_id"``, ``"dataset"`` and ``"scheme"`` (the label scheme of its ``"label"``: a
:mod:`bts_monai.labels` name, or a scheme spec read from an nnU-Net ``dataset.json``):

* BraTS 2017-2021 and 2023-2025, nnU-Net raw: one path per modality under the canonical names
  ``"flair"``, ``"t1"``, ``"t1ce"``, ``"t2"`` (BraTS 2023's ``t2f``/``t1n``/``t1c``/``t2w`` and
  nnU-Net's channel names are mapped by meaning) and ``"label"``; ``"label"`` is absent for
  unlabelled cases (validation sets, ``imagesTs``), usable for inference and never for training.
* MSD Task01: ``"image"`` (one 4D file) and ``"channels"`` (its 4th axis, canonical names).
* LGG kaggle_3m: ``"slices": [{"image", "label"}, ...]`` — one entry per patient, slices ordered
  by their number, so splits are by patient, never by slice.

A datalist file is JSON: ``{"root", "datasets", "split", "training", "validation", "test"}``
where ``training``/``validation`` hold labelled entries (k-fold splits put every labelled case
in ``training`` with a ``"fold"`` key) and ``test`` the unlabelled ones. Paths are stored relative
to the JSON file's folder, like :func:`monai.data.load_decathlon_datalist`.
:func:`export_nnunet` writes a datalist as an nnU-Net v2 raw dataset with the same split.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bts_monai.data import layouts
from bts_monai.data.layouts import BRATS_MODALITIES, LAYOUTS, LGG_CHANNELS, MSD_CHANNELS
from bts_monai.errors import BtsInputError
from bts_monai.fileio import walk_following_links
from bts_monai.labels import SCHEMES, LabelScheme, get_scheme, scheme_from_nnunet

__all__ = [
    "BRATS_MODALITIES",
    "LGG_CHANNELS",
    "DATASET_CHOICES",
    "discover",
    "discover_brats",
    "discover_lgg",
    "discover_msd",
    "discover_nnunet",
    "dataset_json_info",
    "entry_item",
    "entry_scheme",
    "export_nnunet",
    "split_entries",
    "make_datalist",
    "write_datalist",
    "read_datalist",
    "select_split",
    "fixed_split",
    "summarize",
    "check_case",
]

logger = logging.getLogger(__name__)

DATASET_CHOICES: tuple[str, ...] = (
    "auto",
    "brats",
    *[f"brats{y}" for y in range(2017, 2022)],
    "brats2023",
    "brats2024",
    "msd",
    "nnunet",
    "lgg",
)
"""What ``--dataset`` (and the DataModule's ``dataset``) take."""


def entry_scheme(entry: dict[str, Any]) -> LabelScheme:
    """The label scheme of one datalist entry's ``"label"`` (older datalists: by its dataset)."""
    return get_scheme(entry.get("scheme") or entry["dataset"])


def entry_item(entry: dict[str, Any], modalities: Sequence[str], with_label: bool = True) -> dict[str, Any]:
    """A volume entry -> the input of :func:`~bts_monai.data.transforms.deterministic_transforms`:
    ``image`` (the modality files in ``modalities``' order, or one 4D file with ``channel_index``),
    ``label`` and ``scheme_of_label`` (the entry's own scheme, read by region name into the target's).

    Raises:
        BtsInputError: the entry lacks a modality of ``modalities``.
    """
    cid = entry["case_id"]
    if "image" in entry:
        channels = list(entry.get("channels") or MSD_CHANNELS)
        missing = [m for m in modalities if m not in channels]
        if missing:
            raise BtsInputError(entry["image"], f"has no {', '.join(missing)} channel (it holds {', '.join(channels)})")
        item: dict[str, Any] = {"image": entry["image"], "channel_index": [channels.index(m) for m in modalities]}
    else:
        missing = [m for m in modalities if m not in entry]
        if missing:
            raise BtsInputError(_entry_path(entry), f"case {cid} has no {', '.join(missing)}")
        item = {"image": [entry[m] for m in modalities]}
    item["case_id"] = cid
    if with_label and "label" in entry:
        item["label"] = entry["label"]
        item["scheme_of_label"] = entry.get("scheme") or entry["dataset"]
    return item


def _walk_files(root: Path, skip: Iterable[Path] = ()) -> Iterable[Path]:
    skipped = {p.resolve() for p in skip}
    for dirpath, dirnames, filenames in walk_following_links(root):  # as bts-eval's pairing walks
        dirnames[:] = sorted(d for d in dirnames if (Path(dirpath) / d).resolve() not in skipped)
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


# ---- BraTS ------------------------------------------------------------------------------------
def discover_brats(
    root: str | os.PathLike[str],
    modalities: Sequence[str] = BRATS_MODALITIES,
    layout: str | None = None,
    skip: Iterable[Path] = (),
) -> list[dict[str, Any]]:
    """Find BraTS cases under ``root``: 2017-2021 (``<case>/<case>_{flair,t1,t1ce,t2,seg}.nii[.gz]``)
    and 2023-2025 (``<case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz``).

    Args:
        modalities: those every case must have.
        layout: ``"brats"`` or ``"brats2023"`` to find only one year's names; ``None`` for both.
        skip: folders not to search (nnU-Net and MSD datasets).

    Raises:
        BtsInputError: a case folder lacks a modality, has one twice, or mixes both years' names.
    """
    root = Path(root)
    by_dir: dict[Path, dict[str, Path]] = defaultdict(dict)
    kinds: dict[Path, dict[str, str]] = defaultdict(dict)  # folder -> layout -> an example file
    stray: dict[Path, list[Path]] = defaultdict(list)
    for path in _walk_files(root, skip):
        m = layouts.parse_modality_file(path.name)
        if m and (layout is None or m.layout == layout):
            kinds[path.parent].setdefault(m.layout, path.name)
            _refuse_two_brats_layouts(path.parent, kinds[path.parent])
            if m.kind in by_dir[path.parent]:
                raise BtsInputError(path.parent, f"two {m.kind} files: {by_dir[path.parent][m.kind].name}, {path.name}")
            by_dir[path.parent][m.kind] = path
        elif layouts.is_stray_seg(path.name):
            stray[path.parent].append(path)
    # Folders are named after their case in every BraTS release; dedupe nested copies by that name.
    case_dirs = _keep_shallowest(_merge_dups(by_dir), "BraTS case")
    entries = []
    for _, case_dir in sorted(case_dirs.items()):
        files = by_dir[case_dir]
        some = next(iter(files.values()))
        parsed = layouts.parse_modality_file(some.name)
        assert parsed is not None
        case_id, year_layout = parsed.case, parsed.layout
        if "seg" not in files and len(stray.get(case_dir, [])) == 1:
            logger.warning("%s: using %s as the label (non-standard name)", case_dir, stray[case_dir][0].name)
            files["seg"] = stray[case_dir][0]
        missing = [m for m in modalities if m not in files]
        if missing:
            names = _file_names(year_layout, missing)
            raise BtsInputError(case_dir, f"case {case_id} is missing modality {', '.join(missing)} ({names})")
        dataset, scheme, cohort = layouts.brats_dataset(case_id, year_layout)
        entry: dict[str, Any] = {"case_id": case_id, "dataset": dataset, "scheme": scheme}
        if cohort:
            entry["cohort"] = cohort
        entry.update({m: str(files[m]) for m in BRATS_MODALITIES if m in files})
        if "seg" in files:
            entry["label"] = str(files["seg"])
        entries.append(entry)
    return entries


def _refuse_two_brats_layouts(folder: Path, found: dict[str, str]) -> None:
    if len(found) > 1:
        raise BtsInputError(
            folder,
            f"matches two layouts: BraTS 2017-2021 names ({found['brats']}) and BraTS 2023 names "
            f"({found['brats2023']}); keep one case's files per folder",
        )


def _file_names(year_layout: str, modalities: Sequence[str]) -> str:
    return ", ".join(layouts.modality_file_name("<case>", m, year_layout) for m in modalities)


def _merge_dups(by_dir: dict[Path, Any]) -> dict[str, list[Path]]:
    dups: dict[str, list[Path]] = defaultdict(list)
    for d in by_dir:
        dups[d.name].append(d)
    return dups


# ---- LGG --------------------------------------------------------------------------------------
def discover_lgg(root: str | os.PathLike[str], skip: Iterable[Path] = ()) -> list[dict[str, Any]]:
    """Find LGG kaggle_3m patients (``TCGA_*/<patient>_<n>.tif`` + ``_<n>_mask.tif``) under ``root``.

    ``data.csv``/``README.md`` beside the patient folders are ignored and the archive's nested
    duplicate copy (``lgg-mri-segmentation/kaggle_3m``) does not double the patients.

    Raises:
        BtsInputError: a slice without its mask, or a mask without its slice.
    """
    root = Path(root)
    by_dir: dict[Path, dict[str, dict[int, Path]]] = defaultdict(lambda: {"image": {}, "label": {}})
    for path in _walk_files(root, skip):
        s = layouts.parse_lgg_slice(path.name)
        if s:
            by_dir[path.parent]["label" if s.mask else "image"][s.number] = path
    patients = _keep_shallowest(_merge_dups(by_dir), "LGG patient")
    entries = []
    for patient, pdir in sorted(patients.items()):
        images, labels = by_dir[pdir]["image"], by_dir[pdir]["label"]
        for n in sorted(set(images) - set(labels)):
            raise BtsInputError(images[n], "LGG slice has no mask (expected " + images[n].stem + "_mask.tif)")
        for n in sorted(set(labels) - set(images)):
            raise BtsInputError(labels[n], "LGG mask has no image slice beside it")
        slices = [{"image": str(images[n]), "label": str(labels[n])} for n in sorted(images)]
        entries.append({"case_id": patient, "dataset": "lgg", "scheme": "lgg", "slices": slices})
    return entries


# ---- MSD and nnU-Net: a dataset.json beside imagesTr/ -------------------------------------------
def _read_dataset_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BtsInputError(path, f"cannot read as JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise BtsInputError(path, "not a dataset.json: expected a JSON object")
    return data


def _dataset_json_layout(path: Path, data: dict[str, Any]) -> str:
    """``"msd"`` or ``"nnunet"``, by the dataset.json's keys and the names in imagesTr."""
    has_modality, has_channels = "modality" in data, "channel_names" in data
    if has_modality and has_channels:
        raise BtsInputError(
            path,
            "matches two layouts: MSD ('modality') and nnU-Net v2 ('channel_names'); keep one of the two keys",
        )
    images = [p.name for p in _nifti_files(path.parent / "imagesTr")]
    channel_named = [n for n in images if layouts.parse_nnunet_image(n)]
    if has_channels:
        return "nnunet"
    if has_modality:
        # nnU-Net v1 raw data: an MSD-style dataset.json over _0000 channel files.
        return "nnunet" if images and len(channel_named) == len(images) else "msd"
    raise BtsInputError(path, "neither an MSD ('modality') nor an nnU-Net v2 ('channel_names') dataset.json")


def _nifti_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and layouts.is_nifti_path(p)
    )


def _dataset_roots(root: Path) -> list[Path]:
    """Folders holding a dataset.json beside an imagesTr/ folder (MSD tasks, nnU-Net datasets)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if "imagesTr" in dirnames and "dataset.json" in filenames:
            found.append(Path(dirpath))
            dirnames[:] = []
        elif "imagesTr" in dirnames:
            raise BtsInputError(Path(dirpath), "has imagesTr/ but no dataset.json: cannot tell its channels and labels")
    return found


def _channels(path: Path, names: Any, key: str) -> list[str]:
    if not isinstance(names, dict) or not names:
        raise BtsInputError(path, f"'{key}' must map channel numbers to names")
    try:
        order = sorted(names, key=int)
    except ValueError:
        raise BtsInputError(path, f'\'{key}\' keys must be channel numbers ("0", "1", ...)') from None
    if [int(k) for k in order] != list(range(len(order))):
        raise BtsInputError(path, f"'{key}' must number its channels 0..{len(order) - 1}, not {order}")
    out = []
    for k in order:
        canon = layouts.canonical_modality(str(names[k]))
        if canon is None:
            raise BtsInputError(
                path, f"channel {k} ({names[k]!r}) is not a brain MRI sequence this project reads (FLAIR, T1, T1ce, T2)"
            )
        if canon in out:
            raise BtsInputError(path, f"channel {k} ({names[k]!r}) is {canon} again")
        out.append(canon)
    return out


def _msd_scheme(path: Path, labels: Any) -> str | dict[str, Any]:
    if labels is None:
        return "msd"
    if not isinstance(labels, dict):
        raise BtsInputError(path, "'labels' must map label values to names")
    try:
        as_nnunet = {str(name): int(value) for value, name in labels.items()}
    except ValueError:
        raise BtsInputError(path, 'MSD \'labels\' keys must be label values ("0", "1", ...)') from None
    scheme = scheme_from_nnunet(as_nnunet, name=f"{path.parent.name}", path=str(path))
    return scheme.name if scheme is get_scheme("msd") else scheme.spec()


def dataset_json_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What an MSD or nnU-Net ``dataset.json`` says about its images: ``layout`` (``msd`` or
    ``nnunet``), ``channels`` (canonical modality names in channel order) and ``scheme`` (a scheme
    name or spec), for ``bts-infer`` inputs that sit in such a dataset.

    Raises:
        BtsInputError: unreadable, or names a channel this project cannot read.
    """
    js = Path(path)
    data = _read_dataset_json(js)
    has_modality, has_channels = "modality" in data, "channel_names" in data
    if has_modality and has_channels:
        _dataset_json_layout(js, data)  # raises: two layouts
    key = "channel_names" if has_channels else "modality"
    if key not in data:
        raise BtsInputError(js, "names no channels ('channel_names' or 'modality')")
    channels = _channels(js, data[key], key)
    layout = "nnunet" if has_channels else "msd"
    if layout == "msd":
        scheme: str | dict[str, Any] = _msd_scheme(js, data.get("labels"))
    else:
        built = scheme_from_nnunet(data.get("labels") or {"background": 0}, name=js.parent.name, path=str(js))
        scheme = built.name if get_scheme(built.spec()) is built and built.name in SCHEMES else built.spec()
    return {"layout": layout, "channels": channels, "scheme": scheme}


def discover_msd(task: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """An MSD task folder (``Task01_BrainTumour``): ``imagesTr/*.nii.gz`` 4D volumes whose 4th axis
    ``dataset.json``'s ``modality`` names, ``labelsTr/`` of the same names, ``imagesTs/`` unlabelled.

    Raises:
        BtsInputError: the dataset.json disagrees with the files (a listed case missing, a label
            without its image, a count that differs), or names a sequence this project cannot read.
    """
    task = Path(task)
    js = task / "dataset.json"
    data = _read_dataset_json(js)
    channels = _channels(js, data.get("modality"), "modality") if "modality" in data else list(MSD_CHANNELS)
    scheme = _msd_scheme(js, data.get("labels"))
    images = {layouts.strip_image_suffix(p.name): p for p in _nifti_files(task / "imagesTr")}
    labels = {layouts.strip_image_suffix(p.name): p for p in _nifti_files(task / "labelsTr")}
    for cid in sorted(set(labels) - set(images)):
        raise BtsInputError(labels[cid], "label without an image of the same name in imagesTr/")
    for item in data.get("training", []) or []:
        name = Path(str(item.get("image", "")) if isinstance(item, dict) else str(item)).name
        if layouts.strip_image_suffix(name) not in images:
            raise BtsInputError(js, f"lists training image {name}, which is not in imagesTr/")
    n = data.get("numTraining")
    if n is not None and int(n) != len(images):
        raise BtsInputError(js, f"numTraining is {n}, but imagesTr/ holds {len(images)} images")
    dataset = "msd"
    entries: list[dict[str, Any]] = []
    for cid, path in sorted(images.items()):
        if cid not in labels:
            raise BtsInputError(path, "training image without a label of the same name in labelsTr/")
        entries.append(
            {
                "case_id": cid,
                "dataset": dataset,
                "scheme": scheme,
                "image": str(path),
                "channels": list(channels),
                "label": str(labels[cid]),
            }
        )
    for path in _nifti_files(task / "imagesTs"):
        entries.append(
            {
                "case_id": layouts.strip_image_suffix(path.name),
                "dataset": dataset,
                "scheme": scheme,
                "image": str(path),
                "channels": list(channels),
            }
        )
    return entries


def discover_nnunet(folder: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """An nnU-Net v2 raw dataset (``DatasetXXX_Name``): ``imagesTr/<case>_<channel:04d><ending>``
    named by ``dataset.json``'s ``channel_names``, ``labelsTr/<case><ending>`` in the values of its
    ``labels`` (plain or region-based), ``imagesTs/`` unlabelled.

    Raises:
        BtsInputError: the dataset.json disagrees with the files (a channel it does not name, a
            missing channel, a label without images, a count that differs).
    """
    folder = Path(folder)
    js = folder / "dataset.json"
    data = _read_dataset_json(js)
    key = "channel_names" if "channel_names" in data else "modality"
    channels = _channels(js, data.get(key), key)
    if "labels" not in data:
        raise BtsInputError(js, "has no 'labels'")
    raw_labels = data["labels"]
    if key == "modality":  # nnU-Net v1: {"0": "background", ...}
        raw_labels = {str(name): int(value) for value, name in raw_labels.items()}
    scheme_obj = scheme_from_nnunet(raw_labels, name=folder.name, path=str(js))
    scheme: str | dict[str, Any] = (
        scheme_obj.name
        if scheme_obj.name in ("msd", "brats2023", "brats2024") and (get_scheme(scheme_obj.name) is scheme_obj)
        else scheme_obj.spec()
    )
    ending = str(data.get("file_ending", ".nii.gz"))
    train = _nnunet_cases(folder / "imagesTr", channels, ending, js, key)
    test = _nnunet_cases(folder / "imagesTs", channels, ending, js, key) if (folder / "imagesTs").is_dir() else {}
    labels = {}
    for p in sorted((folder / "labelsTr").iterdir()) if (folder / "labelsTr").is_dir() else []:
        if p.is_file() and not p.name.startswith(".") and p.name.endswith(ending):
            labels[p.name[: -len(ending)]] = p
    for cid in sorted(set(labels) - set(train)):
        raise BtsInputError(labels[cid], "label without images in imagesTr/")
    for cid in sorted(set(train) - set(labels)):
        raise BtsInputError(folder / "labelsTr", f"no label {cid}{ending} for training case {cid}")
    n = data.get("numTraining")
    if n is not None and int(n) != len(train):
        raise BtsInputError(js, f"numTraining is {n}, but imagesTr/ holds {len(train)} cases")
    entries: list[dict[str, Any]] = []
    for cid, files in sorted(train.items()):
        entries.append({"case_id": cid, "dataset": folder.name, "scheme": scheme, **files, "label": str(labels[cid])})
    for cid, files in sorted(test.items()):
        entries.append({"case_id": cid, "dataset": folder.name, "scheme": scheme, **files})
    return entries


def _nnunet_cases(images: Path, channels: list[str], ending: str, js: Path, key: str) -> dict[str, dict[str, str]]:
    cases: dict[str, dict[int, Path]] = defaultdict(dict)
    for p in sorted(images.iterdir()) if images.is_dir() else []:
        if not p.is_file() or p.name.startswith("."):
            continue
        parsed = layouts.parse_nnunet_image(p.name) if p.name.endswith(ending) else None
        if parsed is None:
            raise BtsInputError(
                p, f"not named <case>_<channel:04d>{ending} as {js.name}'s '{key}' and 'file_ending' say"
            )
        if parsed.channel >= len(channels):
            raise BtsInputError(
                p,
                f"channel {parsed.channel:04d}, but {js} names {len(channels)} channels (0000-{len(channels) - 1:04d})",
            )
        cases[parsed.case][parsed.channel] = p
    out = {}
    for cid, files in cases.items():
        missing = [c for c in range(len(channels)) if c not in files]
        if missing:
            want = layouts.nnunet_image_name(cid, missing[0], ending)
            raise BtsInputError(images, f"case {cid} has no {want} ({channels[missing[0]]}, named in {js})")
        out[cid] = {channels[c]: str(p) for c, p in files.items()}
    return out


# ---- all of them --------------------------------------------------------------------------------
def discover(root: str | os.PathLike[str], dataset: str = "auto") -> list[dict[str, Any]]:
    """Turn an extracted dataset folder into datalist entries.

    Args:
        root: the folder (any level above the case folders, or an MSD/nnU-Net dataset folder).
        dataset: one of :data:`DATASET_CHOICES`: ``"auto"`` (every layout of
            :data:`~bts_monai.data.layouts.LAYOUTS`), ``"brats"`` (both BraTS naming schemes),
            ``"brats2017"``..``"brats2021"`` (2017-2021 names, that release), ``"brats2023"`` or
            ``"brats2024"`` (2023-2025 names with that release's labels; 2024 adds resection
            cavity 4), ``"msd"``, ``"nnunet"`` or ``"lgg"``.

    Raises:
        BtsInputError: missing or empty folder, unknown layout, a folder matching two layouts,
            incomplete cases, a dataset.json that disagrees with its files.
    """
    root = Path(root)
    if not root.exists():
        raise BtsInputError(root, "folder does not exist")
    if not root.is_dir():
        raise BtsInputError(root, "not a folder (give the folder that holds the case folders)")
    dataset = dataset.lower()
    if dataset not in DATASET_CHOICES:
        raise BtsInputError(None, f"unknown dataset {dataset!r}: use one of {', '.join(DATASET_CHOICES)}")
    entries: list[dict[str, Any]] = []
    skip: list[Path] = []
    if dataset in ("auto", "msd", "nnunet"):
        for folder in _dataset_roots(root):
            kind = _dataset_json_layout(folder / "dataset.json", _read_dataset_json(folder / "dataset.json"))
            if dataset in ("auto", kind):
                entries += discover_msd(folder) if kind == "msd" else discover_nnunet(folder)
            skip.append(folder)
        if dataset == "auto" and skip:
            _refuse_brats_inside(root, skip)
    if dataset.startswith("brats") and dataset != "brats":
        try:
            get_scheme(dataset)
        except ValueError as exc:  # e.g. --dataset brats2099: one line, not a traceback
            raise BtsInputError(None, f"unknown dataset {dataset!r}: use brats or brats2017..brats2024") from exc
    if dataset == "auto" or dataset.startswith("brats"):
        year = (
            None
            if dataset in ("auto", "brats")
            else ("brats2023" if dataset in ("brats2023", "brats2024") else "brats")
        )
        brats = discover_brats(root, layout=year, skip=skip)
        if year is not None:
            get_scheme(dataset)  # validates the name
            for e in brats:
                e["dataset"] = dataset
                e["scheme"] = get_scheme(dataset).name
        entries += brats
    if dataset in ("auto", "lgg"):
        entries += discover_lgg(root, skip=skip)
    if not entries:
        files = list(_walk_files(root))
        if not files:
            raise BtsInputError(root, "folder is empty: no dataset files found")
        kinds = sorted({"".join(p.suffixes) or p.name for p in files})[:8]
        wanted = "; ".join(
            f"{lay.title}: {lay.pattern}"
            for lay in LAYOUTS.values()
            if dataset in ("auto", lay.name) or (lay.name == "brats" and dataset.startswith("brats"))
        )
        raise BtsInputError(root, f"unknown layout: {len(files)} files ({', '.join(kinds)}) but none of {wanted}")
    _refuse_duplicate_ids(entries)
    return entries


def _refuse_brats_inside(root: Path, datasets: list[Path]) -> None:
    """BraTS case files inside an MSD/nnU-Net dataset folder: two layouts claim the same files."""
    for folder in datasets:
        for path in _walk_files(folder):
            if layouts.parse_modality_file(path.name):
                raise BtsInputError(
                    path,
                    f"matches two layouts: a BraTS case file inside the {folder.name} dataset "
                    "(dataset.json); move it out or pass --dataset",
                )


def _refuse_duplicate_ids(entries: list[dict[str, Any]]) -> None:
    seen: dict[str, dict[str, Any]] = {}
    for e in entries:
        other = seen.get(e["case_id"])
        if other is not None and other["dataset"] != e["dataset"]:
            raise BtsInputError(
                _entry_path(e),
                f"case {e['case_id']} is also found as a {other['dataset']} case ({_entry_path(other)}): "
                "the same folder matches two layouts",
            )
        seen[e["case_id"]] = e


def _entry_path(entry: dict[str, Any]) -> str:
    for key in ("label", "image", *BRATS_MODALITIES):
        if isinstance(entry.get(key), str):
            return entry[key]
    return entry["slices"][0]["image"] if entry.get("slices") else entry["case_id"]


def check_case(entry: dict[str, Any], full: bool = False) -> None:
    """Check one entry's files: its images and label share one grid
    (:func:`~bts_monai.data.layouts.check_same_grid`), a 4D image has the channels its
    ``dataset.json`` names; with ``full``, every file decodes and passes what inference checks
    (:func:`~bts_monai.data.checks.verify_nifti`, :func:`~bts_monai.data.checks.verify_lgg_patient`)
    and labels lie in the entry's scheme.

    Header reads are cheap (no voxel decoding), so discovery commands run them for every case.

    Raises:
        BtsInputError: naming the file and the problem.
    """
    import nibabel as nib

    from bts_monai.data.checks import verify_lgg_patient, verify_nifti

    if "slices" in entry:
        if full:
            slices = entry["slices"]
            verify_lgg_patient([s["image"] for s in slices], [s.get("label") for s in slices], entry_scheme(entry))
        return
    ref: tuple[str, tuple[int, ...], Any] | None = None
    keys = [m for m in BRATS_MODALITIES if m in entry] + [k for k in ("image", "label") if k in entry]
    for key in keys:
        path = entry[key]
        try:
            img = nib.load(path)
            shape, affine = tuple(int(s) for s in img.shape), img.affine
        except Exception as exc:  # nibabel raises many types for corrupt files
            raise BtsInputError(path, f"cannot read as NIfTI ({type(exc).__name__}: {exc})") from exc
        channels = entry.get("channels") or MSD_CHANNELS
        if key == "image":
            if len(shape) != 4 or shape[3] != len(channels):
                raise BtsInputError(
                    path,
                    f"expected a 4D volume of {len(channels)} channels ({', '.join(channels)}) on the 4th axis "
                    f"as dataset.json names them, got shape {shape}",
                )
            shape = shape[:3]
        elif len(shape) != 3:
            raise BtsInputError(path, f"expected a 3D volume, got shape {shape}")
        if ref is None:
            ref = (path, shape, affine)
        else:
            layouts.check_same_grid(path, shape, affine, *ref)
        if full:
            verify_nifti(path, entry_scheme(entry) if key == "label" else None, channels if key == "image" else None)


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


def fixed_split(
    datalist: dict[str, Any], val_cases: list[str], source: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """Re-split a datalist so that exactly ``val_cases`` validate and every other labelled case
    trains (a fixed, patient-level split: the DataModule's ``val_cases``).

    Raises:
        BtsInputError: a case of ``val_cases`` is not among the labelled cases (names ``source``).
    """
    labelled = datalist["training"] + datalist.get("validation", [])
    ids = {e["case_id"] for e in labelled}
    missing = [c for c in val_cases if c not in ids]
    if missing:
        raise BtsInputError(source, f"val_cases not found among the labelled cases: {missing}")
    wanted = set(val_cases)
    out = dict(datalist)
    out["training"] = [{k: v for k, v in e.items() if k != "fold"} for e in labelled if e["case_id"] not in wanted]
    out["validation"] = [{k: v for k, v in e.items() if k != "fold"} for e in labelled if e["case_id"] in wanted]
    out["split"] = {"mode": "fixed", "val_cases": sorted(wanted)}
    return out


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
    from bts_monai.fileio import write_text

    write_text(path, json.dumps(out, indent=1))


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


# ---- nnU-Net export ---------------------------------------------------------------------------
def export_nnunet(
    datalist: dict[str, Any],
    out: str | os.PathLike[str],
    dataset_id: int,
    name: str = "BraTS",
    copy: bool = False,
) -> Path:
    """Write a datalist as an nnU-Net v2 raw dataset, so nnU-Net trains on exactly our split.

    ``out/DatasetNNN_<name>/`` gets ``imagesTr/<case>_000K.nii.gz`` (channels flair, t1, t1ce, t2,
    symbolic links to the sources or, with ``copy``, copies; MSD's 4D volumes are split),
    ``labelsTr/`` (nnU-Net needs consecutive values, so BraTS 2017-2021 labels are rewritten in
    BraTS 2023's, :func:`~bts_monai.labels.nnunet_export_scheme`), ``imagesTs/`` (unlabelled
    cases), ``dataset.json`` (region-based labels, as our networks train) and
    ``splits_final.json`` (our hold-out or k-fold split). The folder is built under a temporary
    name and renamed at the end: an error leaves nothing behind.

    Args:
        datalist: from :func:`make_datalist` or :func:`read_datalist`.
        out: the ``nnUNet_raw`` folder, or the ``DatasetNNN_Name`` folder itself.
        dataset_id: nnU-Net's dataset number (1-999).

    Returns:
        The dataset folder.

    Raises:
        BtsInputError: the target exists, an id is not 1-999, LGG slices (2D TIFF), mixed schemes
            that do not share regions, or two cases with one id.
    """
    import re

    from bts_monai.labels import convert_labels, nnunet_export_scheme, nnunet_labels

    if not 1 <= int(dataset_id) <= 999:
        raise BtsInputError(None, f"--dataset-id must be 1-999 (nnU-Net's DatasetXXX), not {dataset_id}")
    out = Path(out)
    if re.fullmatch(r"Dataset\d{3}_\w+", out.name):
        target = out
    else:
        clean = re.sub(r"[^A-Za-z0-9]+", "", name) or "BraTS"
        target = out / f"Dataset{int(dataset_id):03d}_{clean}"
    if target.exists():
        raise BtsInputError(target, "already exists; nothing is overwritten (remove it or choose another --dataset-id)")
    labelled = list(datalist.get("training", [])) + list(datalist.get("validation", []))
    test = list(datalist.get("test", []))
    every = labelled + test
    if not labelled:
        raise BtsInputError(None, "the datalist has no labelled case to export")
    if any("slices" in e for e in every):
        raise BtsInputError(
            _entry_path(next(e for e in every if "slices" in e)),
            "LGG slices (2D TIFF) are not exported to nnU-Net; export NIfTI volumes",
        )
    ids = [e["case_id"] for e in every]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise BtsInputError(None, f"case ids {dup} appear twice; nnU-Net needs one id per case")
    schemes = {json.dumps(get_scheme(entry_scheme(e)).spec(), sort_keys=True): entry_scheme(e) for e in labelled}
    first = next(iter(schemes.values()))
    target_scheme = nnunet_export_scheme(first)
    for s in schemes.values():
        if set(s.regions) - set(target_scheme.regions):
            raise BtsInputError(
                None, f"cases of schemes {first.name} and {s.name} do not share regions; export them apart"
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for sub in ("imagesTr", "labelsTr", "imagesTs"):
            (tmp / sub).mkdir(parents=True)
        for e in labelled:
            _export_images(e, tmp / "imagesTr", copy)
            _export_label(e, tmp / "labelsTr" / f"{e['case_id']}.nii.gz", target_scheme, copy, convert_labels)
        for e in test:
            _export_images(e, tmp / "imagesTs", copy)
        labels, order = nnunet_labels(target_scheme)
        info: dict[str, Any] = {
            "channel_names": {str(i): m for i, m in enumerate(BRATS_MODALITIES)},
            "labels": labels,
            "numTraining": len(labelled),
            "file_ending": ".nii.gz",
            "name": target.name,
            "description": f"exported by bts-datalist from {datalist.get('root', '')}; "
            f"labels in the {target_scheme.name} scheme",
        }
        if order is not None:
            info["regions_class_order"] = order
        (tmp / "dataset.json").write_text(json.dumps(info, indent=2))
        (tmp / "splits_final.json").write_text(json.dumps(_nnunet_splits(datalist), indent=2))
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _export_images(entry: dict[str, Any], folder: Path, copy: bool) -> None:
    import nibabel as nib

    cid = entry["case_id"]
    if "image" in entry:  # MSD 4D: one file per channel
        img = nib.load(entry["image"])
        data = np.asanyarray(img.dataobj)
        channels = list(entry.get("channels") or MSD_CHANNELS)
        for c, m in enumerate(BRATS_MODALITIES):
            if m not in channels:
                raise BtsInputError(entry["image"], f"has no {m} channel; nnU-Net export needs {BRATS_MODALITIES}")
            hdr = img.header.copy()
            hdr.set_data_shape(data.shape[:3])
            vol = nib.Nifti1Image(data[..., channels.index(m)], img.affine, hdr)
            nib.save(vol, folder / layouts.nnunet_image_name(cid, c))
        return
    for c, m in enumerate(BRATS_MODALITIES):
        if m not in entry:
            raise BtsInputError(_entry_path(entry), f"case {cid} has no {m}; nnU-Net export needs all four")
        _place(Path(entry[m]), folder / layouts.nnunet_image_name(cid, c), copy)


def _place(src: Path, dst: Path, copy: bool) -> None:
    import nibabel as nib

    if layouts.nifti_ending(src.name) != ".nii.gz":  # nnU-Net wants one file ending: recompress
        nib.save(nib.load(src), dst)
    elif copy:
        shutil.copy2(src, dst)
    else:
        os.symlink(src.resolve(), dst)


def _export_label(entry: dict[str, Any], dst: Path, target: LabelScheme, copy: bool, convert) -> None:
    import nibabel as nib

    src = Path(entry["label"])
    scheme = entry_scheme(entry)
    if scheme is target:
        _place(src, dst, copy)
        return
    img = nib.load(src)
    labels = convert(np.asanyarray(img.dataobj), scheme, target, str(src))
    hdr = img.header.copy()
    hdr.set_data_dtype(np.uint8)
    hdr.set_slope_inter(1.0, 0.0)
    nib.save(nib.Nifti1Image(labels, img.affine, hdr), dst)


def _nnunet_splits(datalist: dict[str, Any]) -> list[dict[str, list[str]]]:
    """Our split as nnU-Net's ``splits_final.json``: one ``{"train", "val"}`` per fold."""
    split = datalist.get("split", {})
    if split.get("mode") == "kfold":
        k = int(split["folds"])
        return [
            {
                "train": sorted(e["case_id"] for e in datalist["training"] if e["fold"] != f),
                "val": sorted(e["case_id"] for e in datalist["training"] if e["fold"] == f),
            }
            for f in range(k)
        ]
    return [
        {
            "train": sorted(e["case_id"] for e in datalist["training"]),
            "val": sorted(e["case_id"] for e in datalist.get("validation", [])),
        }
    ]
