"""Dataset layouts and file names: the one module that knows how each dataset names its files.

Discovery (:mod:`bts_monai.data.discovery`), ``bts-infer``'s input resolution
(:mod:`bts_monai.inference.io`), ``bts-serve``'s uploads (:mod:`bts_monai.serve.uploads`) and
``bts-eval``'s pairing (:mod:`bts_monai.evaluation`) ask this module what a file is; none of them
spells a file-name pattern itself. Like :mod:`bts_monai.labels` for label values, adding a
layout means adding its name rule and its :class:`Layout` record here (and its finder in
discovery).

It also holds the one co-registration check (:func:`grid_mismatch`, :func:`check_same_grid`) with
its one named tolerance, :data:`GRID_TOLERANCE_MM`: the same question -- are these images on one
voxel grid? -- is asked by discovery, inference and evaluation.

The layouts:

* BraTS 2017-2021: ``<case>/<case>_{flair,t1,t1ce,t2,seg}.nii[.gz]``;
* BraTS 2023-2025: ``BraTS-{GLI,MEN,MET,PED,SSA,...}-XXXXX-XXX/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz``;
* MSD Task01_BrainTumour: ``imagesTr/BRATS_XXX.nii.gz`` 4D, ``labelsTr/``, ``imagesTs/``, ``dataset.json``;
* nnU-Net v2 raw: ``DatasetXXX_Name/{imagesTr,labelsTr,imagesTs}/CASE_000K.nii.gz``, ``dataset.json``;
* Kaggle LGG kaggle_3m: ``TCGA_*/<patient>_<n>.tif`` + ``<patient>_<n>_mask.tif``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bts_monai.errors import BtsInputError

__all__ = [
    "BRATS_MODALITIES",
    "BRATS2023_NAMES",
    "LGG_CHANNELS",
    "GRID_TOLERANCE_MM",
    "MSD_CHANNELS",
    "Layout",
    "LAYOUTS",
    "ModalityFile",
    "NnunetImage",
    "LggSlice",
    "brats_dataset",
    "canonical_modality",
    "check_same_grid",
    "grid_mismatch",
    "is_nifti_path",
    "is_tiff_path",
    "is_other_image_path",
    "is_output_name",
    "is_ground_truth_name",
    "is_stray_seg",
    "modality_file_name",
    "nnunet_image_name",
    "parse_lgg_slice",
    "parse_modality_file",
    "parse_nnunet_image",
    "segmentation_case_id",
    "seg_output_name",
    "strip_image_suffix",
]

BRATS_MODALITIES: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")
"""The four BraTS sequences by their 2017-2021 names: the canonical modality names everywhere."""

LGG_CHANNELS: tuple[str, ...] = ("pre-contrast", "flair", "post-contrast")
"""The RGB channels of a Kaggle LGG slice, in order (a missing sequence is replaced by FLAIR)."""

MSD_CHANNELS: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")
"""MSD Task01's 4th axis (FLAIR, T1w, T1gd, T2w) when ``dataset.json`` does not say otherwise."""

GRID_TOLERANCE_MM = 1e-3
"""Largest difference between two affines' entries (mm, or mm per voxel for the rotation-zoom
part) for images to count as one grid. NIfTI stores affines as float32: re-saving a header moves
entries by ~1e-5 mm, a real mis-registration by far more than a micron."""

# ---- suffixes -----------------------------------------------------------------------------------
_NIFTI = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)
_TIFF = re.compile(r"\.tiff?$", re.IGNORECASE)
_OTHER_IMAGE = re.compile(r"\.(png|jpe?g|bmp|gif|dcm|mha|mhd|nrrd|mgz)$", re.IGNORECASE)


def is_nifti_path(path: str | os.PathLike[str]) -> bool:
    """Whether the name ends in ``.nii`` or ``.nii.gz``."""
    return bool(_NIFTI.search(os.fspath(path)))


def is_tiff_path(path: str | os.PathLike[str]) -> bool:
    """Whether the name ends in ``.tif`` or ``.tiff``."""
    return bool(_TIFF.search(os.fspath(path)))


def is_other_image_path(path: str | os.PathLike[str]) -> bool:
    """Whether the name is an image format this project does not read (PNG, DICOM, NRRD...)."""
    return bool(_OTHER_IMAGE.search(os.fspath(path)))


def strip_image_suffix(name: str) -> str:
    """``case.nii.gz`` -> ``case``; ``slice_3.tif`` -> ``slice_3``."""
    return _TIFF.sub("", _NIFTI.sub("", name))


def nifti_ending(name: str) -> str:
    """``.nii.gz`` or ``.nii`` (as the name ends; ``""`` for other names)."""
    m = _NIFTI.search(name)
    return m.group(0).lower() if m else ""


# ---- modalities ---------------------------------------------------------------------------------
_MODALITY_SYNONYMS: dict[str, tuple[str, ...]] = {
    # canonical -> names datasets use (compared lower-case, without spaces, "_" or "-")
    "flair": ("flair", "t2f", "t2flair", "fla"),
    "t1": ("t1", "t1n", "t1w", "t1native", "t1pre"),
    "t1ce": ("t1ce", "t1c", "t1gd", "t1post", "t1contrast", "t1wce", "t1cegd"),
    "t2": ("t2", "t2w"),
}
_MODALITY_LOOKUP = {syn: canon for canon, syns in _MODALITY_SYNONYMS.items() for syn in syns}


def canonical_modality(name: str) -> str | None:
    """A sequence's name as any dataset spells it -> ``flair``/``t1``/``t1ce``/``t2``, or ``None``.

    BraTS 2023: ``t2f`` = flair, ``t1n`` = t1, ``t1c`` = t1ce, ``t2w`` = t2; MSD: ``FLAIR``,
    ``T1w``, ``t1gd``, ``T2w``; nnU-Net datasets: ``T1``, ``T1ce``, ``T2``, ``Flair`` and so on.
    """
    key = re.sub(r"[\s_\-]+", "", str(name)).lower()
    return _MODALITY_LOOKUP.get(key)


# ---- BraTS names ---------------------------------------------------------------------------------
_LEGACY_FILE = re.compile(r"^(?P<case>.+)_(?P<kind>flair|t1ce|t1|t2|seg)\.nii(\.gz)?$", re.IGNORECASE)
_BRATS2023_FILE = re.compile(r"^(?P<case>.+)-(?P<kind>t1n|t1c|t2w|t2f|seg)\.nii(\.gz)?$", re.IGNORECASE)
_BRATS2023_CASE = re.compile(r"^BraTS-(?P<cohort>[A-Za-z]+)-\d+-\d+$", re.IGNORECASE)
# BraTS 2020 (Kaggle copy) ships case 355's label as e.g. "W39_1998.09.19_Segm.nii".
_STRAY_SEG = re.compile(r"^.*_Segm\.nii(\.gz)?$", re.IGNORECASE)
# Uploads and bts-infer inputs may use either separator with either year's names.
_ANY_MODALITY_FILE = re.compile(
    r"^(?P<case>.+)[_-](?P<kind>flair|t1ce|t1|t2|t1n|t1c|t2w|t2f|seg)\.nii(\.gz)?$", re.IGNORECASE
)
_BRATS_PREFIXES: tuple[tuple[str, str], ...] = (
    ("BraTS2021_", "brats2021"),
    ("BraTS20_", "brats2020"),
    ("BraTS19_", "brats2019"),
    ("Brats18_", "brats2018"),
    ("Brats17_", "brats2017"),
)


@dataclass(frozen=True)
class ModalityFile:
    """What a BraTS-style file name says.

    Attributes:
        case: the case id (``BraTS2021_00000``, ``BraTS-GLI-00000-000``).
        kind: ``flair``, ``t1``, ``t1ce``, ``t2`` (canonical names, whatever the file says) or ``seg``.
        layout: ``"brats"`` (2017-2021 names) or ``"brats2023"`` (2023-2025 names).
    """

    case: str
    kind: str
    layout: str


def parse_modality_file(name: str, strict: bool = True) -> ModalityFile | None:
    """Read a BraTS modality or label file name, either year's scheme.

    Args:
        name: the file name (no folder).
        strict: only the datasets' own forms (``<case>_flair``; ``<case>-t2f``); ``False`` also
            takes ``<case>_t2f`` and ``<case>-flair`` (uploads, hand-named files).

    Returns:
        The case, the canonical modality and the layout, or ``None`` for other names.
    """
    m = _BRATS2023_FILE.match(name)
    if m:
        return ModalityFile(m.group("case"), _kind(m.group("kind")), "brats2023")
    m = _LEGACY_FILE.match(name)
    if m:
        return ModalityFile(m.group("case"), m.group("kind").lower(), "brats")
    if not strict:
        m = _ANY_MODALITY_FILE.match(name)
        if m:
            kind = m.group("kind").lower()
            layout = "brats2023" if kind in ("t1n", "t1c", "t2w", "t2f") else "brats"
            return ModalityFile(m.group("case"), _kind(kind), layout)
    return None


def _kind(raw: str) -> str:
    raw = raw.lower()
    return "seg" if raw == "seg" else (canonical_modality(raw) or raw)


BRATS2023_NAMES = {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w", "seg": "seg"}
"""Canonical modality -> its BraTS 2023-2025 file-name suffix."""


def modality_file_name(case: str, kind: str, layout: str = "brats", ending: str = ".nii.gz") -> str:
    """The dataset's own file name of one modality (or ``seg``) of a case:
    ``<case>_t1ce.nii.gz`` (2017-2021) or ``<case>-t1c.nii.gz`` (``layout="brats2023"``)."""
    if layout == "brats2023":
        return f"{case}-{BRATS2023_NAMES[kind]}{ending}"
    return f"{case}_{kind}{ending}"


def is_stray_seg(name: str) -> bool:
    """BraTS 2020's one oddly named label (``W39_1998.09.19_Segm.nii``)."""
    return bool(_STRAY_SEG.match(name))


def brats_dataset(case_id: str, layout: str = "brats") -> tuple[str, str, str | None]:
    """A BraTS case id -> (dataset name, label scheme name, cohort or ``None``).

    ``Brats18_...`` -> ``("brats2018", "brats2021", None)``; ``BraTS-MEN-00004-000`` ->
    ``("brats2023", "brats2023", "MEN")``. BraTS 2024's post-treatment glioma uses the 2023 names
    with one more label (4, resection cavity): name it with ``--dataset brats2024``.
    """
    if layout == "brats2023":
        m = _BRATS2023_CASE.match(case_id)
        return "brats2023", "brats2023", (m.group("cohort").upper() if m else None)
    for prefix, dataset in _BRATS_PREFIXES:
        if case_id.lower().startswith(prefix.lower()):
            return dataset, "brats2021", None
    return "brats", "brats2021", None


# ---- nnU-Net names --------------------------------------------------------------------------------
_NNUNET_IMAGE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})(?P<ending>\.nii(\.gz)?)$", re.IGNORECASE)
NNUNET_FOLDERS = ("imagesTr", "labelsTr", "imagesTs")
"""The sub-folders of an nnU-Net v2 raw dataset (and of an MSD task)."""


@dataclass(frozen=True)
class NnunetImage:
    """An nnU-Net channel file name: ``<case>_<channel:04d><ending>``."""

    case: str
    channel: int
    ending: str


def parse_nnunet_image(name: str) -> NnunetImage | None:
    """``BraTS_001_0002.nii.gz`` -> case ``BraTS_001``, channel 2; ``None`` for other names."""
    m = _NNUNET_IMAGE.match(name)
    if not m:
        return None
    return NnunetImage(m.group("case"), int(m.group("channel")), m.group("ending").lower())


def nnunet_image_name(case: str, channel: int, ending: str = ".nii.gz") -> str:
    """The file name nnU-Net expects for one channel of a case."""
    return f"{case}_{channel:04d}{ending}"


# ---- LGG names ------------------------------------------------------------------------------------
_LGG_SLICE = re.compile(r"^(?P<patient>.+?)_(?P<n>\d+)(?P<mask>_mask)?\.tiff?$", re.IGNORECASE)


@dataclass(frozen=True)
class LggSlice:
    """A Kaggle LGG slice name: ``<patient>_<n>.tif`` or its mask ``<patient>_<n>_mask.tif``."""

    patient: str
    number: int
    mask: bool


def parse_lgg_slice(name: str) -> LggSlice | None:
    """``TCGA_CS_4941_19960909_12_mask.tif`` -> patient, 12, mask; ``None`` for other names."""
    m = _LGG_SLICE.match(name)
    if not m:
        return None
    return LggSlice(m.group("patient"), int(m.group("n")), bool(m.group("mask")))


def is_lgg_mask(name: str) -> bool:
    """Whether a TIFF name is an LGG mask (``..._mask.tif``)."""
    s = parse_lgg_slice(name)
    return bool(s and s.mask) or bool(re.search(r"_mask\.tiff?$", name, re.IGNORECASE))


# ---- segmentations (outputs and ground truth) ------------------------------------------------------
_SEG_SUFFIXES = ("_seg", "-seg", "_pred", "-pred")
_GT_SUFFIXES = ("_seg", "-seg")
_OUR_OUTPUT = re.compile(r"(_seg|-seg|_segm|_prob_[A-Za-z0-9-]+)\.nii(\.gz)?$", re.IGNORECASE)


def seg_output_name(case_id: str, tiff: bool = False) -> str:
    """The name ``bts-infer`` gives a case's segmentation: ``<case>_seg.nii.gz`` (LGG ``.tif``)."""
    return f"{case_id}_seg{'.tif' if tiff else '.nii.gz'}"


def is_output_name(name: str) -> bool:
    """A label or one of our outputs (``*_seg``, ``*-seg``, ``*_prob_<REGION>``): not an input image."""
    return bool(_OUR_OUTPUT.search(name))


def is_ground_truth_name(name: str) -> bool:
    """A NIfTI named as a label (``<case>_seg``, ``<case>-seg``), as BraTS case folders hold them."""
    return is_nifti_path(name) and strip_image_suffix(name).endswith(_GT_SUFFIXES)


def segmentation_case_id(name: str) -> str:
    """The case a segmentation file stands for: ``BraTS2021_00000_seg.nii.gz``,
    ``BraTS2021_00000_pred.nii.gz`` and ``BraTS2021_00000.nii.gz`` (nnU-Net, ``labelsTr``) give
    ``BraTS2021_00000``; ``BraTS-GLI-00000-000-seg.nii.gz`` gives ``BraTS-GLI-00000-000``."""
    stem = strip_image_suffix(name)
    for suffix in _SEG_SUFFIXES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


# ---- one grid ------------------------------------------------------------------------------------
def grid_mismatch(
    shape: Sequence[int], affine: Any, ref_shape: Sequence[int], ref_affine: Any, ref_name: str = "the reference"
) -> str | None:
    """Why two images are not on one voxel grid, or ``None`` when they are.

    Shapes must be equal and affines equal within :data:`GRID_TOLERANCE_MM` (like TorchIO's
    ``Subject.check_consistent_space``, with one tolerance everywhere).
    """
    shape, ref_shape = tuple(int(s) for s in shape), tuple(int(s) for s in ref_shape)
    if shape != ref_shape:
        return f"shape {shape} differs from {ref_name}'s {ref_shape}"
    if affine is None or ref_affine is None:
        return None
    a, b = np.asarray(affine, dtype=float), np.asarray(ref_affine, dtype=float)
    diff = float(np.max(np.abs(a - b)))
    if not diff <= GRID_TOLERANCE_MM:
        return (
            f"affine differs from {ref_name}'s by up to {diff:.3g} mm (tolerance {GRID_TOLERANCE_MM} mm): "
            "the images are not co-registered"
        )
    return None


def check_same_grid(
    path: str | os.PathLike[str] | None,
    shape: Sequence[int],
    affine: Any,
    ref_path: str | os.PathLike[str] | None,
    ref_shape: Sequence[int],
    ref_affine: Any,
    suffix: str = "",
) -> None:
    """Raise :class:`BtsInputError` naming ``path`` when it is not on ``ref_path``'s grid.

    Args:
        suffix: added to the message (e.g. ``"; nothing is resampled"``).
    """
    ref_name = os.path.basename(os.fspath(ref_path)) if ref_path is not None else "the reference"
    problem = grid_mismatch(shape, affine, ref_shape, ref_affine, ref_name)
    if problem:
        raise BtsInputError(path, problem + suffix)


# ---- the layouts ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """One dataset layout users arrive with.

    Attributes:
        name: the name ``--dataset`` takes (``brats``, ``brats2023``, ``msd``, ``nnunet``, ``lgg``).
        title: what it is.
        pattern: its files, as a reader would write them.
        detected_by: the rule discovery applies.
        scheme: its label scheme (a :mod:`bts_monai.labels` name, or where it is read from).
        example: one command that shows it working.
    """

    name: str
    title: str
    pattern: str
    detected_by: str
    scheme: str
    example: str


LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout(
            "brats",
            "BraTS 2017-2021",
            "<case>/<case>_{flair,t1,t1ce,t2,seg}.nii[.gz]",
            "files ending _flair/_t1/_t1ce/_t2 (and _seg); the year from the case id (Brats18_, BraTS2021_...)",
            "brats2021 (1 NCR/NET, 2 ED, 4 ET)",
            "bts-datalist /data/BraTS2021_Training_Data -o dl.json",
        ),
        Layout(
            "brats2023",
            "BraTS 2023-2025 (GLI, MEN, MET, PED, SSA)",
            "BraTS-GLI-XXXXX-XXX/BraTS-GLI-XXXXX-XXX-{t1n,t1c,t2w,t2f,seg}.nii.gz",
            "files ending -t1n/-t1c/-t2w/-t2f (and -seg); t1n=t1, t1c=t1ce, t2w=t2, t2f=flair",
            "brats2023 (1 NETC, 2 SNFH, 3 ET); --dataset brats2024 adds 4 RC",
            "bts-infer BraTS-GLI-00000-000/ -o seg.nii.gz",
        ),
        Layout(
            "msd",
            "MSD Task01_BrainTumour",
            "imagesTr/BRATS_XXX.nii.gz (4D: FLAIR, T1w, T1gd, T2w), labelsTr/, imagesTs/, dataset.json",
            "dataset.json with a 'modality' entry beside imagesTr/ of 4D files without a _0000 channel suffix",
            "msd (1 oedema, 2 non-enhancing tumour, 3 enhancing tumour)",
            "bts-datalist /data/Task01_BrainTumour -o dl.json",
        ),
        Layout(
            "nnunet",
            "nnU-Net v2 raw dataset",
            "DatasetXXX_Name/{imagesTr,labelsTr,imagesTs}/CASE_000K.nii.gz, dataset.json",
            "dataset.json with 'channel_names' beside imagesTr/ of <case>_<channel:04d> files",
            "from dataset.json 'labels' (plain or region-based)",
            "bts-datalist /data/nnUNet_raw/Dataset137_BraTS2021 -o dl.json",
        ),
        Layout(
            "lgg",
            "Kaggle LGG kaggle_3m",
            "TCGA_<inst>_<id>_<date>/<patient>_<n>.tif + <patient>_<n>_mask.tif",
            "numbered .tif slices, each with its _mask.tif",
            "lgg ({0, 255})",
            "bts-datalist /data/kaggle_3m -o lgg.json",
        ),
    )
}
"""Every layout discovery detects, by ``--dataset`` name."""
