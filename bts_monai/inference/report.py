"""Tumour volumes: voxel counts and millilitres per label and per region, as JSON or CSV.

Volumes come from the voxel size in the input's header (``pixdim``), so they hold for any voxel
size; for inputs without one (LGG TIFF slices) the counts are given and the volumes are ``None``.

Every report made by a :class:`~bts_monai.inference.predictor.Predictor` also says how it was made
(:func:`provenance`, as nnU-Net's ``predict_from_raw_data_args.json``): the model's name, version
and weights' SHA-256, the runtime backend, precision, the sliding-window and test-time mirroring
settings, and the package versions. JSON reports hold it as a ``provenance`` object; CSV reports
repeat it in :data:`PROVENANCE_FIELDS` columns on every row, so rows keep it when tables are joined.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bts_monai.errors import BtsInputError
from bts_monai.labels import LabelScheme, get_scheme

__all__ = [
    "PROVENANCE_FIELDS",
    "REPORT_SUFFIXES",
    "check_report_path",
    "format_report",
    "provenance",
    "provenance_columns",
    "report_rows",
    "volume_report",
    "write_report",
]

REPORT_SUFFIXES = (".json", ".csv")
"""File types :func:`write_report` writes, chosen by the path's extension."""

CSV_COLUMNS = ("case_id", "kind", "name", "labels", "voxels", "volume_ml")

PROVENANCE_FIELDS: tuple[str, ...] = (
    "model_name",
    "model_version",
    "weights_sha256",
    "model_source",
    "backend",
    "device",
    "precision",
    "threshold",
    "sw_roi_size",
    "sw_overlap",
    "sw_mode",
    "tta",
    "mirror_axes",
    "one_pass",
    "postprocess",
    "package_versions",
)
"""What :func:`provenance` records, in the order of the CSV columns."""


def provenance(
    config: Mapping[str, Any],
    settings: Mapping[str, Any],
    *,
    backend: str,
    device: str,
    precision: str,
    tta: bool,
    one_pass: bool,
    postprocess: str = "none",
) -> dict[str, Any]:
    """How a segmentation was made, for its report.

    Args:
        config: the model's inference config; its ``model_name``, ``model_version``,
            ``model_source`` and ``weights_sha256`` (set by the model loaders) name the model.
        settings: the :data:`~bts_monai.model.spec.INFERENCE_SETTINGS` in force (the model's, or
            the caller's overrides): threshold, window size, overlap and blending, mirror axes.
        backend: the runtime that ran the network (``torch``, ``onnxruntime``, ``openvino``).
        device: where it ran (``cpu``, ``cuda:0``...).
        precision: ``"32"`` or ``"bf16"``.
        tta: whether test-time mirroring over ``mirror_axes`` was on.
        one_pass: whether the network ran once over the brain box instead of windows.
        postprocess: the post-processing rule applied to the thresholded masks.

    Returns:
        A dict with the :data:`PROVENANCE_FIELDS` (``None`` where the model does not say).
    """
    from bts_monai.model.packaged import package_versions

    return {
        "model_name": config.get("model_name"),
        "model_version": config.get("model_version"),
        "weights_sha256": config.get("weights_sha256"),
        "model_source": config.get("model_source"),
        "backend": str(backend),
        "device": str(device),
        "precision": str(precision),
        "threshold": float(settings["threshold"]),
        "sw_roi_size": [int(r) for r in settings["sw_roi_size"]],
        "sw_overlap": float(settings["sw_overlap"]),
        "sw_mode": str(settings["sw_mode"]),
        "tta": bool(tta),
        "mirror_axes": [int(a) for a in settings["mirror_axes"]],
        "one_pass": bool(one_pass),
        "postprocess": str(postprocess),
        "package_versions": package_versions(),
    }


def provenance_columns(prov: Mapping[str, Any] | None, fields: Sequence[str] = PROVENANCE_FIELDS) -> dict[str, Any]:
    """``prov`` as CSV cells: scalars as they are, lists and dicts as JSON (``[0, 1, 2]``,
    ``{"torch": "2.13.0", ...}``), missing values empty."""
    prov = prov or {}
    out: dict[str, Any] = {}
    for key in fields:
        value = prov.get(key)
        if isinstance(value, (list, tuple, dict)):
            value = json.dumps(value)
        elif isinstance(value, bool):
            value = str(value).lower()
        out[key] = "" if value is None else value
    return out


def volume_report(
    labels: np.ndarray,
    scheme: LabelScheme | str,
    voxel_size_mm: Sequence[float] | None,
    case_id: str | None = None,
    source: str | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Count the voxels of each label and each region of a label map.

    Args:
        labels: integer label map in the scheme's values (e.g. BraTS 2020/21: {0, 1, 2, 4}).
        scheme: the label scheme (or its name).
        voxel_size_mm: voxel size along each axis in mm; ``None`` when unknown.
        case_id: written into the report.
        source: the input file or folder, written into the report.
        provenance: how the labels were made (see :func:`provenance`), written into the report.

    Returns:
        ``{"case_id", "input", "scheme", "voxel_size_mm", "voxel_volume_ml", "labels": [...],
        "regions": [...]}`` (and ``"provenance"`` when given); each label entry ``{"label", "name",
        "voxels", "volume_ml"}``, each region entry ``{"region", "labels", "voxels", "volume_ml"}``.
    """
    scheme = get_scheme(scheme)
    arr = np.asarray(labels)
    values, counts = np.unique(arr, return_counts=True)
    found = {int(v): int(n) for v, n in zip(values, counts)}
    scheme.check_values(found, source)
    voxel_ml = None if voxel_size_mm is None else float(np.prod([float(v) for v in voxel_size_mm])) / 1000.0

    def ml(n: int) -> float | None:
        return None if voxel_ml is None else round(n * voxel_ml, 6)

    label_rows = [
        {"label": v, "name": scheme.labels[v], "voxels": found.get(v, 0), "volume_ml": ml(found.get(v, 0))}
        for v in scheme.foreground_labels
    ]
    region_rows = []
    for name, vals in scheme.regions.items():
        n = sum(found.get(v, 0) for v in vals)
        region_rows.append({"region": name, "labels": list(vals), "voxels": n, "volume_ml": ml(n)})
    report = {
        "case_id": case_id,
        "input": source,
        "scheme": scheme.name,
        "voxel_size_mm": None if voxel_size_mm is None else [float(v) for v in voxel_size_mm],
        "voxel_volume_ml": voxel_ml,
        "labels": label_rows,
        "regions": region_rows,
    }
    if provenance is not None:
        report["provenance"] = dict(provenance)
    return report


def report_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One case's report as flat rows (one per label and per region), the CSV's rows; with the
    :data:`PROVENANCE_FIELDS` columns when the report has a provenance."""
    rows = []
    for r in report["labels"]:
        rows.append(
            {
                "case_id": report["case_id"],
                "kind": "label",
                "name": r["name"],
                "labels": str(r["label"]),
                "voxels": r["voxels"],
                "volume_ml": r["volume_ml"],
            }
        )
    for r in report["regions"]:
        rows.append(
            {
                "case_id": report["case_id"],
                "kind": "region",
                "name": r["region"],
                "labels": "+".join(str(v) for v in r["labels"]),
                "voxels": r["voxels"],
                "volume_ml": r["volume_ml"],
            }
        )
    if "provenance" in report:
        extra = provenance_columns(report["provenance"])
        rows = [{**row, **extra} for row in rows]
    return rows


def check_report_path(path: str | os.PathLike[str]) -> Path:
    """Raise :class:`BtsInputError` unless ``path`` ends in ``.json`` or ``.csv``."""
    path = Path(path)
    if path.suffix.lower() not in REPORT_SUFFIXES:
        raise BtsInputError(path, "report must end in .json or .csv")
    return path


def write_report(reports: dict[str, Any] | Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write one case's report, or several, atomically; JSON or CSV by the extension.

    JSON: one case -> its report object; several -> ``{"cases": [...]}``. CSV: one row per
    label and region of each case, columns ``case_id, kind, name, labels, voxels, volume_ml``,
    then the :data:`PROVENANCE_FIELDS` when the reports carry a provenance.

    Raises:
        BtsInputError: the extension is neither ``.json`` nor ``.csv``.
    """
    from bts_monai.fileio import atomic_path

    text = format_report(reports, path)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def format_report(reports: dict[str, Any] | Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> str:
    """The text :func:`write_report` writes to ``path`` (format chosen by its extension)."""
    path = check_report_path(path)
    many = not isinstance(reports, dict)
    items = list(reports) if many else [reports]  # type: ignore[arg-type]
    if path.suffix.lower() == ".json":
        return json.dumps({"cases": items} if many else items[0], indent=1) + "\n"
    buf = io.StringIO()
    columns = CSV_COLUMNS + (PROVENANCE_FIELDS if any("provenance" in rep for rep in items) else ())
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for rep in items:
        for row in report_rows(rep):
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()
