"""Evaluate predicted segmentations against ground truth: per-case, per-region metrics and a summary.

Predictions and ground truth are files or folders; cases are paired by case id, taken from
the file names (``<case>_seg.nii.gz``, ``<case>-seg.nii.gz``, ``<case>_pred.nii.gz`` or
``<case>.nii.gz``; the name rules live in :mod:`bts_monai.data.layouts`) or, for the Kaggle LGG
data, from the patient folder holding the ``<patient>_<n>_mask.tif`` slices, which pairs with
the multi-page ``<patient>_seg.tif`` ``bts-infer`` writes. Ground truth may also be a flat folder
of ``<case>.nii.gz`` labels, such as an nnU-Net or MSD ``labelsTr/`` (a dataset folder holding
``labelsTr/`` means that folder; its ``dataset.json`` then names the label scheme). Unpaired
cases are reported, never silently dropped.

Every pair must share its grid (shape and affine): nothing is resampled. The metrics are the
ones training uses, from :mod:`bts_monai.model.metrics`. Distances and volumes are in mm and mL
at the NIfTI header's spacing; TIFF slices carry no spacing, so their columns are in pixels and
say so (``hd95_px``, ``pred_area_px``...) unless a spacing is given.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from tqdm import tqdm

from bts_monai.data import layouts
from bts_monai.errors import BtsInputError
from bts_monai.fileio import walk_following_links
from bts_monai.labels import LabelScheme, get_scheme
from bts_monai.model.metrics import EMPTY_HD95, LESION_MISS_HD95, METRIC_NAMES, region_metrics
from bts_monai.model.metrics import lesion_wise as lesion_wise_scores

__all__ = [
    "CaseMatch",
    "EvaluationResult",
    "STATISTICS",
    "case_id",
    "check_plot_path",
    "empty_hd95",
    "evaluate",
    "find_cases",
    "format_summary",
    "match_cases",
    "model_provenance",
    "plot",
    "read_mask_stack",
    "resolve_scheme",
    "summarize",
    "write_csv",
    "write_outputs",
]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

STATISTICS = ("mean", "std", "median", "p25", "p75")
"""Statistics :func:`summarize` reports for every metric and region."""

# Schemes "auto" chooses between for NIfTI, first fit wins; BraTS 2024 must be asked for.
_AUTO_NIFTI_SCHEMES = ("brats2021", "brats2023", "lgg")
_LESION_KEYS = ("dice", "hd95", "tp", "fn", "fp")
_SUMMARY_CASE_ID = "summary"
# The BraTS 2023 code scores a region that exactly one side leaves empty 374 mm; the 2017-2021
# evaluator 373.13 mm (the 240x240x155 diagonal). Other schemes keep the legacy value.
_EMPTY_HD95_BY_SCHEME = {"brats2023": LESION_MISS_HD95, "brats2024": LESION_MISS_HD95}
# Column renames for inputs without a physical spacing (TIFF slices): pixels, by name.
_PIXEL_COLUMNS = {
    "hd95": "hd95_px",
    "pred_volume_ml": "pred_area_px",
    "ref_volume_ml": "ref_area_px",
    "lesion_hd95": "lesion_hd95_px",
}
_DISTANCE_COLUMNS = ("hd95", "lesion_hd95")


def empty_hd95(scheme: str | LabelScheme) -> float:
    """HD95 of a region exactly one of prediction and ground truth leaves empty, in ``scheme``:
    374 for BraTS 2023/2024 (the 2023 reference code), 373.13 otherwise (BraTS 2017-2021)."""
    return _EMPTY_HD95_BY_SCHEME.get(get_scheme(scheme).name, EMPTY_HD95)


@dataclass(frozen=True)
class CaseMatch:
    """Predictions paired with ground truth by case id.

    Attributes:
        pairs: ``(case_id, prediction, ground_truth)`` sorted by case id.
        unmatched_pred: case id -> prediction without ground truth.
        unmatched_gt: case id -> ground truth without prediction.
    """

    pairs: list[tuple[str, Path, Path]]
    unmatched_pred: dict[str, Path] = field(default_factory=dict)
    unmatched_gt: dict[str, Path] = field(default_factory=dict)


@dataclass
class EvaluationResult:
    """What :func:`evaluate` found.

    Attributes:
        rows: one dict per case and region: ``case_id``, ``region`` and the metrics.
        summary: :func:`summarize` of ``rows``.
        unmatched_pred: case id -> prediction that has no ground truth.
        unmatched_gt: case id -> ground truth that has no prediction.
        schemes: case id -> name of the label scheme its labels were read with.
        provenance: the model that made the predictions, when one is named (see
            :func:`model_provenance`); ``None`` otherwise.
    """

    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    unmatched_pred: dict[str, Path] = field(default_factory=dict)
    unmatched_gt: dict[str, Path] = field(default_factory=dict)
    schemes: dict[str, str] = field(default_factory=dict)
    provenance: dict[str, Any] | None = None


# --------------------------------------------------------------------------- discovery


def _mask_slices(folder: Path) -> list[Path]:
    return [
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and layouts.is_tiff_path(p) and _mask_number(p) is not None
    ]


def _mask_number(path: Path) -> int | None:
    """The slice number of an LGG mask ``<patient>_<n>_mask.tif``, else ``None``."""
    parsed = layouts.parse_lgg_slice(path.name)
    return parsed.number if parsed is not None and parsed.mask else None


def _is_seg_tiff(path: Path) -> bool:
    """A (multi-page) TIFF segmentation, as ``bts-infer`` writes for an LGG patient, not a slice."""
    return path.is_file() and layouts.is_tiff_path(path) and layouts.parse_lgg_slice(path.name) is None


def _is_case_source(path: Path) -> bool:
    """A single NIfTI file, a TIFF segmentation, or an LGG patient folder of mask slices."""
    if path.is_file():
        return layouts.is_nifti_path(path) or _is_seg_tiff(path)
    return path.is_dir() and bool(_mask_slices(path))


def case_id(path: PathLike) -> str:
    """The case id a segmentation file or LGG patient folder stands for.

    ``BraTS2021_00000_seg.nii.gz``, ``BraTS2021_00000.nii.gz`` and ``BraTS2021_00000_pred.nii.gz``
    all give ``BraTS2021_00000``; ``BraTS-GLI-00000-000-seg.nii.gz`` gives ``BraTS-GLI-00000-000``;
    ``TCGA_CS_4941_19960909_seg.tif`` and a folder ``TCGA_CS_4941_19960909`` give the patient id.
    """
    path = Path(path)
    if path.is_dir():
        return path.name
    return layouts.segmentation_case_id(path.name)


def label_folder(path: PathLike) -> Path:
    """Where a ground-truth argument's labels are: an nnU-Net or MSD dataset folder's ``labelsTr/``,
    otherwise the path itself."""
    root = Path(path)
    labels = root / "labelsTr"
    return labels if root.is_dir() and labels.is_dir() else root


def _flat_labels(folder: Path) -> list[Path]:
    """The NIfTI files directly in ``folder`` that are labels: all of them in a ``labelsTr/``;
    elsewhere all but BraTS-named images (``<case>_flair.nii.gz``...) and nnU-Net channel files."""
    files = sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and layouts.is_nifti_path(p)
    )
    if folder.name == "labelsTr":
        return files
    return [
        p
        for p in files
        if layouts.parse_modality_file(p.name, strict=False) is None and layouts.parse_nnunet_image(p.name) is None
    ]


def find_cases(path: PathLike, ground_truth: bool = False) -> list[Path]:
    """Segmentations under ``path``: NIfTI files, TIFF segmentations and LGG patient folders,
    searched recursively.

    Args:
        path: a NIfTI or TIFF file, an LGG patient folder, or a folder holding them (at any depth).
        ground_truth: look for labels: an nnU-Net/MSD dataset folder means its ``labelsTr/``;
            otherwise ``*_seg``/``*-seg`` NIfTI files (so the image volumes of a BraTS case
            folder are not taken for labels) and LGG patient folders; a folder with none of
            those is read as a flat folder of ``<case>.nii.gz`` labels.

    Returns:
        The segmentation files and LGG patient folders, sorted.

    Raises:
        BtsInputError: when ``path`` does not exist or is neither a segmentation file nor a folder.
    """
    root = label_folder(path) if ground_truth else Path(path)
    if not root.exists():
        raise BtsInputError(root, "does not exist")
    if root.is_file():
        if not (layouts.is_nifti_path(root) or layouts.is_tiff_path(root)):
            raise BtsInputError(root, "is neither a NIfTI file (.nii, .nii.gz), a TIFF segmentation nor a folder")
        if layouts.is_tiff_path(root) and not _is_seg_tiff(root):
            raise BtsInputError(root, "is one LGG slice; give its patient folder (or a <patient>_seg.tif stack)")
        return [root]
    if _is_case_source(root):
        return [root]
    if ground_truth and root.name == "labelsTr":
        return _flat_labels(root)
    found: list[Path] = []
    for dirpath, dirnames, filenames in walk_following_links(root):  # datasets are often folders of links
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        for name in sorted(filenames):
            file = here / name
            if name.startswith("."):
                continue
            if layouts.is_nifti_path(name):
                if ground_truth and not layouts.is_ground_truth_name(name):
                    continue
                found.append(file)
            elif not ground_truth and _is_seg_tiff(file):
                found.append(file)
        if here != root and any(_mask_number(Path(n)) is not None for n in filenames):
            found.append(here)
    if ground_truth and not found:
        found = _flat_labels(root)
    return sorted(found)


def _by_case(paths: Iterable[PathLike]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for raw in paths:
        path = Path(raw)
        cid = case_id(path)
        if cid in out:
            raise BtsInputError(path, f"case {cid!r} is also given by {out[cid]}; keep one of them")
        out[cid] = path
    return out


def match_cases(pred_paths: Iterable[PathLike], gt_paths: Iterable[PathLike]) -> CaseMatch:
    """Pair prediction and ground-truth segmentations by :func:`case_id`.

    Raises:
        BtsInputError: when one case id is given by two files on the same side.
    """
    preds, gts = _by_case(pred_paths), _by_case(gt_paths)
    pairs = [(cid, preds[cid], gts[cid]) for cid in sorted(preds.keys() & gts.keys())]
    return CaseMatch(
        pairs=pairs,
        unmatched_pred={cid: preds[cid] for cid in sorted(preds.keys() - gts.keys())},
        unmatched_gt={cid: gts[cid] for cid in sorted(gts.keys() - preds.keys())},
    )


# --------------------------------------------------------------------------- loading


@dataclass
class _Segmentation:
    """A label map whose geometry is known before its voxels are read."""

    path: Path
    shape: tuple[int, ...]
    affine: np.ndarray | None  # None for TIFF stacks, which carry no geometry
    spacing: tuple[float, ...] | None  # None for TIFF: pixels of unknown size
    read: Callable[[], np.ndarray]

    @property
    def is_tiff(self) -> bool:
        return self.affine is None


def _open(path: Path) -> _Segmentation:
    if path.is_dir() or layouts.is_tiff_path(path):
        stack = read_mask_stack(path) if path.is_dir() else _read_tiff_pages(path)
        return _Segmentation(path, stack.shape, None, None, lambda: stack)
    try:
        image = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for damaged files
        raise BtsInputError(path, f"cannot read NIfTI file ({exc})") from exc
    shape = tuple(int(s) for s in image.shape)
    if len(shape) < 3 or any(s != 1 for s in shape[3:]):
        raise BtsInputError(path, f"expected a 3-D label map, got shape {shape}")
    spatial = shape[:3]
    # float32 zooms widened exactly: the spacing the BraTS reference code computes with.
    zooms = tuple(float(z) for z in image.header.get_zooms()[:3])

    def read() -> np.ndarray:
        try:
            data = np.asanyarray(image.dataobj)
        except Exception as exc:
            raise BtsInputError(path, f"cannot read NIfTI data ({exc})") from exc
        return _as_labels(data.reshape(spatial), path)

    return _Segmentation(path, spatial, np.asarray(image.affine, dtype=float), zooms, read)


def _as_labels(data: np.ndarray, path: Path) -> np.ndarray:
    if np.issubdtype(data.dtype, np.integer) or data.dtype == bool:
        return data
    if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
        raise BtsInputError(path, "holds non-integer values; expected a label map, not probabilities")
    return data.astype(np.int64)


def _mask_page(mask: np.ndarray, where: str, path: Path) -> np.ndarray:
    if mask.ndim == 3 and mask.shape[-1] in (3, 4):  # RGB(A)-saved greyscale mask
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise BtsInputError(path, f"{where}: expected a 2-D mask, got shape {mask.shape}")
    return _as_labels(mask, path)


def read_mask_stack(folder: Path) -> np.ndarray:
    """LGG mask slices ``<patient>_<n>_mask.tif`` stacked in slice order into ``(H, W, N)``."""
    import tifffile

    files = sorted(_mask_slices(folder), key=lambda p: _mask_number(p) or 0)
    slices: list[np.ndarray] = []
    for file in files:
        try:
            raw = np.asarray(tifffile.imread(file))
        except Exception as exc:
            raise BtsInputError(file, f"cannot read TIFF mask ({exc})") from exc
        mask = _mask_page(raw, "slice", file)
        if slices and mask.shape != slices[0].shape:
            raise BtsInputError(file, f"slice shape {mask.shape} differs from {files[0].name} {slices[0].shape}")
        slices.append(mask)
    return np.stack(slices, axis=-1)


def _read_tiff_pages(path: Path) -> np.ndarray:
    """A TIFF segmentation (one page per slice, as ``bts-infer`` writes for an LGG patient, or one
    page for one slice) as ``(H, W, N)``, the layout of :func:`read_mask_stack`."""
    import tifffile

    pages: list[np.ndarray] = []
    try:
        with tifffile.TiffFile(path) as tif:
            for index, page in enumerate(tif.pages):
                mask = _mask_page(np.asarray(page.asarray()), f"page {index + 1}", path)
                if pages and mask.shape != pages[0].shape:
                    raise BtsInputError(path, f"page {index + 1} has shape {mask.shape}, page 1 {pages[0].shape}")
                pages.append(mask)
    except BtsInputError:
        raise
    except Exception as exc:  # tifffile raises many types for damaged files
        raise BtsInputError(path, f"cannot read TIFF segmentation ({exc})") from exc
    if not pages:
        raise BtsInputError(path, "holds no image pages")
    return np.stack(pages, axis=-1)


def _check_geometry(pred: _Segmentation, gt: _Segmentation) -> None:
    # The project's one same-grid rule and tolerance; the message names both files in full.
    problem = layouts.grid_mismatch(pred.shape, pred.affine, gt.shape, gt.affine, f"ground truth {gt.path}")
    if problem:
        raise BtsInputError(pred.path, problem + "; nothing is resampled")


def _values(label: np.ndarray) -> set[int]:
    flat = label.ravel()
    if flat.size and np.issubdtype(flat.dtype, np.integer) and flat.min() >= 0 and flat.max() < 1 << 16:
        return {int(v) for v in np.flatnonzero(np.bincount(flat))}
    return {int(v) for v in np.unique(flat)}


def resolve_scheme(
    gt_values: Iterable[int],
    pred_values: Iterable[int],
    gt_path: PathLike | None = None,
    pred_path: PathLike | None = None,
) -> LabelScheme:
    """The label scheme ``scheme="auto"`` picks for a NIfTI pair.

    The first of brats2021, brats2023 and lgg whose labels hold every ground-truth value and
    every predicted value: BraTS 2017-2021 unless the enhancing-tumour label of BraTS 2023
    appears. A ground truth with only labels both BraTS schemes share (so identical regions)
    lets the prediction decide.

    Raises:
        BtsInputError: when the ground truth fits none of them (pass a scheme), or the
            prediction fits none of those the ground truth fits.
    """
    gt_set, pred_set = set(gt_values), set(pred_values)
    candidates = [get_scheme(name) for name in _AUTO_NIFTI_SCHEMES]
    fits_gt = [s for s in candidates if gt_set <= set(s.labels)]
    if not fits_gt:
        raise BtsInputError(
            gt_path,
            f"label values {sorted(gt_set)} fit none of the label schemes {list(_AUTO_NIFTI_SCHEMES)}; "
            "name the scheme (e.g. --scheme brats2024)",
        )
    for scheme in fits_gt:
        if pred_set <= set(scheme.labels):
            return scheme
    names = [s.name for s in fits_gt]
    raise BtsInputError(
        pred_path,
        f"label values {sorted(pred_set)} do not fit the label scheme of ground truth {gt_path} "
        f"({' or '.join(names)}, values {fits_gt[0].all_values})",
    )


# --------------------------------------------------------------------------- evaluation


def _case_spacing(g_seg: _Segmentation, spacing: Sequence[float] | None) -> tuple[float, ...] | None:
    """The spacing (mm) to score a pair at: the ground truth's header, or ``spacing`` for TIFF
    inputs (which carry none); ``None`` means pixels."""
    if g_seg.spacing is not None:
        if spacing is not None and not np.allclose(spacing, g_seg.spacing, atol=layouts.GRID_TOLERANCE_MM):
            raise BtsInputError(
                g_seg.path,
                f"its header gives spacing {list(g_seg.spacing)} mm, not the --spacing {list(spacing)}; "
                "--spacing is for TIFF slices, which carry none",
            )
        return g_seg.spacing
    if spacing is None:
        return None
    if len(spacing) != len(g_seg.shape) or not all(s > 0 for s in spacing):
        raise BtsInputError(
            g_seg.path,
            f"--spacing {list(spacing)} does not fit its {len(g_seg.shape)}-D shape {g_seg.shape} "
            "(give one positive size in mm per axis: rows, columns, slices)",
        )
    return tuple(float(s) for s in spacing)


def evaluate_case(
    pred: PathLike,
    gt: PathLike,
    scheme: str | LabelScheme = "auto",
    lesion_wise_metrics: bool = False,
    dilation: int = 3,
    min_volume: float = 50.0,
    case: str | None = None,
    spacing: Sequence[float] | None = None,
) -> tuple[list[dict[str, Any]], LabelScheme]:
    """Metrics of one prediction against its ground truth, one row per region.

    Args:
        pred: prediction NIfTI file, TIFF segmentation or LGG folder of mask slices.
        gt: ground-truth NIfTI file or LGG patient folder.
        scheme: a label scheme or its name, or ``"auto"`` (see :func:`evaluate`).
        lesion_wise_metrics: add the BraTS 2023 lesion-wise columns ``lesion_*``.
        dilation: lesion-wise dilation iterations.
        min_volume: lesion-wise minimum lesion size in mm³ (in pixels for TIFF without ``spacing``).
        case: the case id for the rows (default: :func:`case_id` of ``gt``).
        spacing: voxel size (mm) for TIFF inputs, whose slices carry none; NIfTI headers must agree.

    Returns:
        The rows and the scheme used. HD95 is in mm and volumes in mL; for TIFF inputs without
        ``spacing`` the columns are renamed to pixel units (``hd95_px``, ``pred_area_px``,
        ``ref_area_px``, ``lesion_hd95_px``).

    Raises:
        BtsInputError: unreadable file, grid mismatch (naming both files), a ``spacing`` that
            contradicts the header, or label values outside the scheme (naming the file).
    """
    pred_path, gt_path = Path(pred), Path(gt)
    p_seg, g_seg = _open(pred_path), _open(gt_path)
    _check_geometry(p_seg, g_seg)
    p_lab, g_lab = p_seg.read(), g_seg.read()
    if isinstance(scheme, str) and scheme.lower() == "auto":
        if g_seg.is_tiff:
            chosen = get_scheme("lgg")
        else:
            chosen = resolve_scheme(_values(g_lab), _values(p_lab), gt_path, pred_path)
    else:
        chosen = get_scheme(scheme)
    ref_regions = chosen.to_regions(g_lab, str(gt_path))
    pred_regions = chosen.to_regions(p_lab, str(pred_path))
    used_spacing = _case_spacing(g_seg, spacing)
    sp = used_spacing if used_spacing is not None else (1.0,) * len(g_seg.shape)
    penalty = empty_hd95(chosen)
    per_region = region_metrics(pred_regions, ref_regions, chosen.region_names, sp, empty_hd95=penalty)
    cid = case if case is not None else case_id(gt_path)
    rows: list[dict[str, Any]] = []
    for index, region in enumerate(chosen.region_names):
        row: dict[str, Any] = {"case_id": cid, "region": region, **per_region[region]}
        if lesion_wise_metrics:
            scores = lesion_wise_scores(
                pred_regions[index], ref_regions[index], sp, dilation=dilation, min_volume_mm3=min_volume
            )
            row.update({f"lesion_{key}": scores[key] for key in _LESION_KEYS})
        if used_spacing is None:
            row = _in_pixels(row, int(pred_regions[index].sum()), int(ref_regions[index].sum()))
        rows.append(row)
    return rows, chosen


def _in_pixels(row: dict[str, Any], pred_pixels: int, ref_pixels: int) -> dict[str, Any]:
    """A row scored at 1 unit per pixel, its distance and size columns named in pixels: sizes
    are pixel counts (over all slices), not mL; the one-empty HD95 penalty keeps its number."""
    counts = {"pred_volume_ml": pred_pixels, "ref_volume_ml": ref_pixels}
    return {_PIXEL_COLUMNS.get(key, key): counts.get(key, value) for key, value in row.items()}


def _dataset_scheme(gt_root: Path) -> str | dict[str, Any] | None:
    """The label scheme an MSD or nnU-Net ``dataset.json`` beside the labels names, if there is one."""
    labels = label_folder(gt_root)
    if labels.name != "labelsTr" or not labels.is_dir():
        return None
    js = labels.parent / "dataset.json"
    if not js.is_file():
        return None
    from bts_monai.data.discovery import dataset_json_info

    return dataset_json_info(js)["scheme"]


def evaluate(
    pred: PathLike,
    gt: PathLike,
    scheme: str | LabelScheme = "auto",
    lesion_wise: bool = False,
    dilation: int = 3,
    min_volume: float = 50.0,
    spacing: Sequence[float] | None = None,
    model: PathLike | None = None,
) -> EvaluationResult:
    """Evaluate predictions against ground truth, case by case and region by region.

    Args:
        pred: a prediction file (NIfTI, or the multi-page ``<patient>_seg.tif`` ``bts-infer``
            writes for an LGG patient), an LGG mask folder, or a folder of them (BraTS
            ``<case>_seg.nii.gz``, nnU-Net-style ``<case>.nii.gz``...).
        gt: a ground-truth file, LGG patient folder, or a dataset folder (BraTS
            ``<case>_seg.nii.gz`` flat or in case folders, LGG patient folders, an nnU-Net/MSD
            dataset or its ``labelsTr/``, or any flat folder of ``<case>.nii.gz`` labels).
            A prediction file (or LGG mask folder) given with a ``gt`` that holds one case is
            paired with it whatever the names.
        scheme: ``"brats2021"``, ``"brats2023"``, ``"lgg"`` (any :func:`get_scheme` name) or
            ``"auto"``: the ``dataset.json`` beside a ``labelsTr/``; lgg for TIFF masks; for
            other NIfTI see :func:`resolve_scheme`.
        lesion_wise: add BraTS 2023 lesion-wise Dice/HD95 and lesion counts.
        dilation: lesion-wise dilation iterations (BraTS-GLI: 3).
        min_volume: lesion-wise minimum lesion size in mm³, as the BraTS 2023 code counts it
            (BraTS-GLI: 50); pixels for TIFF inputs without ``spacing``.
        spacing: voxel size (mm) per axis for TIFF inputs (rows, columns, slices); without it
            their distances and sizes are reported in pixels.
        model: the model that made the predictions, recorded as the result's provenance (see
            :func:`model_provenance`): a packaged model's name, a model folder, a checkpoint, or
            the ``bts-infer --report`` JSON of the run.

    Returns:
        Rows, summary, the unmatched cases and the provenance.

    Raises:
        BtsInputError: missing input, no ground truth, no matching case, or a bad pair.
    """
    pred_root, gt_root = Path(pred), Path(gt)
    provenance = None if model is None else model_provenance(model)  # a bad name fails before the work
    gt_found = find_cases(gt_root, ground_truth=True)
    pred_found = find_cases(pred_root)
    if not gt_found:
        raise BtsInputError(
            gt_root,
            "no ground truth found: expected <case>_seg.nii.gz files (flat or in case folders), "
            "a flat folder of <case>.nii.gz labels (such as labelsTr/) or LGG patient folders of *_mask.tif slices",
        )
    if isinstance(scheme, str) and scheme.lower() == "auto":
        scheme = _dataset_scheme(gt_root) or scheme
        if not isinstance(scheme, str):
            scheme = get_scheme(scheme)
    if _is_case_source(pred_root) and len(gt_found) == 1:
        # One named prediction against one ground truth: the user paired them.
        match = CaseMatch(pairs=[(case_id(gt_found[0]), pred_root, gt_found[0])])
    else:
        match = match_cases(pred_found, gt_found)
    for cid, path in match.unmatched_pred.items():
        logger.warning("prediction without ground truth: %s (%s)", cid, path)
    for cid, path in match.unmatched_gt.items():
        logger.warning("ground truth without prediction: %s (%s)", cid, path)
    if not match.pairs:
        raise BtsInputError(pred_root, f"no prediction matches a ground-truth case in {gt_root}")

    rows: list[dict[str, Any]] = []
    schemes: dict[str, str] = {}
    for cid, p_path, g_path in tqdm(match.pairs, desc="evaluating", unit="case", disable=None, leave=False):
        case_rows, used = evaluate_case(
            p_path,
            g_path,
            scheme,
            lesion_wise_metrics=lesion_wise,
            dilation=dilation,
            min_volume=min_volume,
            case=cid,
            spacing=spacing,
        )
        rows.extend(case_rows)
        schemes[cid] = used.name
        logger.debug("evaluated %s with the %s scheme", cid, used.name)
    return EvaluationResult(
        rows=rows,
        summary=summarize(rows),
        unmatched_pred=match.unmatched_pred,
        unmatched_gt=match.unmatched_gt,
        schemes=schemes,
        provenance=provenance,
    )


def model_provenance(model: PathLike) -> dict[str, Any]:
    """The provenance of the model that made the predictions, for the evaluation's outputs.

    Args:
        model: the ``.json`` report ``bts-infer --report`` wrote for the predictions (every
            :data:`~bts_monai.inference.report.PROVENANCE_FIELDS` of that run: model, backend,
            precision, overlap, mirroring, package versions), or the model itself: a packaged
            model's name, a model folder or a checkpoint (its name, version and weights' SHA-256,
            with this environment's package versions; how it was run is then unknown).

    Raises:
        BtsInputError: no such model, or a report without provenance or whose cases differ in it.
    """
    path = Path(model)
    if path.suffix.lower() == ".json" and path.is_file():
        import json

        try:
            report = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BtsInputError(path, f"cannot read the report ({exc})") from exc
        cases = report.get("cases", [report]) if isinstance(report, dict) else []
        found = [c.get("provenance") for c in cases if isinstance(c, dict)]
        if not found or any(not isinstance(p, dict) for p in found):
            raise BtsInputError(path, "is not a bts-infer report with a provenance (from bts-infer --report)")
        if any(p != found[0] for p in found):
            raise BtsInputError(path, "its cases were segmented with different models or settings")
        return dict(found[0])
    from bts_monai.model.packaged import model_provenance as describe
    from bts_monai.model.packaged import package_versions

    return {**describe(model), "package_versions": package_versions()}


# --------------------------------------------------------------------------- summary and output


def _metric_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        for key, value in row.items():
            if key in ("case_id", "region", "statistic") or key in columns:
                continue
            if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
                columns.append(key)
    return columns


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean, (population) std, median, 25th and 75th percentile of every metric per region.

    Returns:
        One dict per region and statistic: ``region``, ``statistic`` (one of
        :data:`STATISTICS`), ``cases`` (rows in that region) and one value per metric;
        NaN values are left out of the statistics.
    """
    columns = _metric_columns(rows)
    regions = list(dict.fromkeys(row["region"] for row in rows))
    out: list[dict[str, Any]] = []
    for region in regions:
        subset = [row for row in rows if row["region"] == region]
        stats: dict[str, dict[str, float]] = {s: {} for s in STATISTICS}
        for column in columns:
            values = np.asarray([float(r[column]) for r in subset if column in r], dtype=float)
            values = values[~np.isnan(values)]
            if values.size == 0:
                computed = dict.fromkeys(STATISTICS, math.nan)
            else:
                computed = {
                    "mean": float(np.mean(values)),
                    "std": float(np.std(values)),
                    "median": float(np.median(values)),
                    "p25": float(np.percentile(values, 25)),
                    "p75": float(np.percentile(values, 75)),
                }
            for stat in STATISTICS:
                stats[stat][column] = computed[stat]
        for stat in STATISTICS:
            out.append({"region": region, "statistic": stat, "cases": len(subset), **stats[stat]})
    return out


def _format_value(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return "nan" if math.isnan(value) else format(float(value), ".10g")
    return value


def _csv_writer(
    rows: Sequence[dict[str, Any]], summary: Sequence[dict[str, Any]], provenance: dict[str, Any] | None
) -> Callable[[Path], None]:
    """What writes the CSV to a (temporary) path: per-case rows, then summary rows, then, on every
    row, the provenance columns when the model is named."""
    from bts_monai.inference.report import PROVENANCE_FIELDS, provenance_columns

    extra = provenance_columns(provenance) if provenance is not None else {}
    header = ["case_id", "region", "statistic", *_metric_columns(rows), *(PROVENANCE_FIELDS if extra else ())]

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=header, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({key: _format_value({**row, **extra}.get(key, "")) for key in header})
            for row in summary:
                filled = {**row, **extra, "case_id": _SUMMARY_CASE_ID}
                writer.writerow({key: _format_value(filled.get(key, "")) for key in header})

    return write


def write_csv(
    rows: Sequence[dict[str, Any]],
    summary: Sequence[dict[str, Any]],
    path: PathLike,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Write per-case rows, then summary rows, to one CSV file (atomically).

    Columns: ``case_id, region, statistic`` and the metrics. Case rows leave ``statistic``
    empty; summary rows have ``case_id`` ``summary`` and the statistic's name. With
    ``provenance`` (see :func:`model_provenance`), every row also has the
    :data:`~bts_monai.inference.report.PROVENANCE_FIELDS` columns.

    Returns:
        The path written.
    """
    return write_outputs(rows, summary, csv_path=path, provenance=provenance)[0]


def check_plot_path(path: PathLike) -> str:
    """The plot's file format, from its suffix (none: png).

    Raises:
        BtsInputError: matplotlib cannot write that format.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    supported = FigureCanvasAgg(Figure()).get_supported_filetypes()
    if fmt not in supported:
        raise BtsInputError(path, f"cannot plot to .{fmt} files: use one of {', '.join('.' + f for f in supported)}")
    return fmt


def _plot_writer(rows: Sequence[dict[str, Any]], path: Path) -> Callable[[Path], None]:
    """What draws the box plots into a (temporary) path in ``path``'s format."""
    # The object API with the Agg canvas leaves pyplot's global backend alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fmt = check_plot_path(path)
    columns = _metric_columns(rows)
    metrics = [m for m in ("dice", "hd95", "hd95_px", "lesion_dice", "lesion_hd95", "lesion_hd95_px") if m in columns]
    regions = list(dict.fromkeys(row["region"] for row in rows))
    fig = Figure(figsize=(4.0 * max(len(metrics), 1), 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, max(len(metrics), 1), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        data = [[float(r[metric]) for r in rows if r["region"] == region] for region in regions]
        ax.boxplot(data)
        ax.set_xticks(range(1, len(regions) + 1), regions)
        ax.set_title(_title(metric))
        ax.grid(axis="y", alpha=0.3)

    def write(tmp: Path) -> None:
        try:
            fig.savefig(tmp, format=fmt, dpi=120)
        except (ValueError, RuntimeError) as exc:  # matplotlib's own failures (a backend, a font)
            raise BtsInputError(path, f"cannot draw the plot ({type(exc).__name__}: {exc})") from exc

    return write


def plot(rows: Sequence[dict[str, Any]], path: PathLike) -> Path:
    """Box plots of Dice and HD95 (and the lesion-wise scores, when present) per region.

    The format follows the file suffix (``.png``, ``.pdf``, ``.svg``...); written atomically.

    Returns:
        The path written.

    Raises:
        BtsInputError: a format matplotlib cannot write, or the file cannot be written.
    """
    return write_outputs(rows, (), plot_path=path)[0]


def write_outputs(
    rows: Sequence[dict[str, Any]],
    summary: Sequence[dict[str, Any]],
    csv_path: PathLike | None = None,
    plot_path: PathLike | None = None,
    provenance: dict[str, Any] | None = None,
) -> list[Path]:
    """Write the CSV (see :func:`write_csv`) and the box plots (see :func:`plot`) as one: both
    files appear or neither does (:class:`~bts_monai.fileio.StagedFiles`), so a plot that fails
    leaves no CSV behind.

    Returns:
        The files written (CSV first).

    Raises:
        BtsInputError: a plot format matplotlib cannot write, or a file that cannot be written;
            nothing is written then.
    """
    from bts_monai.fileio import StagedFiles

    plot_target = None if plot_path is None else Path(plot_path)
    draw = None if plot_target is None else _plot_writer(rows, plot_target)  # refusals before writing
    with StagedFiles() as staged:
        if csv_path is not None:
            staged.add(csv_path, _csv_writer(rows, summary, provenance))
        if draw is not None and plot_target is not None:
            staged.add(plot_target, draw)
        written = staged.targets
    for path in written:
        logger.info("wrote %s", path)
    return written


def _title(metric: str) -> str:
    if metric.endswith("_px"):
        return metric[: -len("_px")].replace("_", " ") + " (pixels)"
    return metric.replace("_", " ") + (" (mm)" if metric in _DISTANCE_COLUMNS else "")


def format_summary(result: EvaluationResult) -> str:
    """A plain-text table of mean ± std per region, and the unmatched cases."""
    means = {row["region"]: row for row in result.summary if row["statistic"] == "mean"}
    stds = {row["region"]: row for row in result.summary if row["statistic"] == "std"}
    candidates = (*METRIC_NAMES[:3], "hd95_px", *METRIC_NAMES[3:5], "lesion_dice", "lesion_hd95", "lesion_hd95_px")
    shown = [m for m in candidates if any(m in row for row in means.values())]
    header = ["region", "cases", *[m + (" (mm)" if m in _DISTANCE_COLUMNS else "") for m in shown]]
    table = [header]
    for region, mean in means.items():
        cells = [region, str(mean["cases"])]
        for metric in shown:
            digits = 2 if "hd95" in metric else 4
            cells.append(f"{mean[metric]:.{digits}f} ± {stds[region][metric]:.{digits}f}")
        table.append(cells)
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    used = sorted(set(result.schemes.values()))
    lines.insert(0, f"{len(result.schemes)} case(s), label scheme {', '.join(used)}; mean ± std")
    if result.provenance is not None:
        prov = result.provenance
        sha = str(prov.get("weights_sha256") or "?")[:12]
        lines.insert(0, f"model {prov.get('model_name')} {prov.get('model_version')} (weights sha256 {sha}...)")
    for title, unmatched in (
        ("prediction(s) without ground truth", result.unmatched_pred),
        ("ground truth without prediction", result.unmatched_gt),
    ):
        if unmatched:
            lines.append(f"{len(unmatched)} {title}:")
            lines.extend(f"  {cid}  {path}" for cid, path in unmatched.items())
    return "\n".join(lines)
