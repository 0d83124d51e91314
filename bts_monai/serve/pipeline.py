"""What the server does with one uploaded case: check it, segment it, write what ``bts-infer`` writes.

Everything here goes through the inference library's public API: the upload becomes a
:class:`~bts_monai.inference.io.CaseInput`, :meth:`Predictor.load` reads and checks it,
:meth:`Predictor.predict_case` segments it and :meth:`Prediction.save` writes the segmentation
(input geometry), probabilities, report and overlay PNG exactly as ``bts-infer`` does. The only
addition is the viewer's copy of the result (:mod:`bts_monai.serve.views`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bts_monai.errors import BtsInputError
from bts_monai.inference.io import CaseInput, explicit_case, resolve_input
from bts_monai.inference.overlay import region_colors
from bts_monai.inference.predictor import NO_DEFAULT_MODEL, Prediction, Predictor, default_model_path
from bts_monai.inference.report import write_report
from bts_monai.serve import views
from bts_monai.serve.jobs import Job, Progress
from bts_monai.serve.uploads import UploadedCase

__all__ = ["resolve_model", "load_predictor", "model_info", "case_input", "check_case", "run_case", "overlay_layers"]

logger = logging.getLogger(__name__)

# What the region abbreviations stand for, for people who do not read BraTS papers.
_REGION_TITLES = {
    "WT": "whole tumour",
    "TC": "tumour core",
    "ET": "enhancing tumour",
    "RC": "resection cavity",
    "abnormality": "FLAIR abnormality",
}

# Shares of the progress bar: reading and preparing the scan, the network's windows, writing.
_READ, _WINDOWS = 0.08, 0.82


def resolve_model(name: str | None) -> Path:
    """The folder of a packaged model: by name, or the default for ``brats``/``lgg`` (``None``: ``brats``).

    Raises:
        BtsInputError: an unknown name, or no default model packaged yet.
    """
    kind = name or "brats"
    if kind not in ("brats", "lgg"):
        from bts_monai.model.packaged import model_dir

        return model_dir(kind)  # a packaged model by name (bts-infer --list-models)
    try:
        path = default_model_path(kind)
    except ValueError as exc:
        raise BtsInputError(None, f"--model {kind}: {exc}") from None
    if path is None:
        raise BtsInputError(None, NO_DEFAULT_MODEL)
    return Path(path)


def load_predictor(ckpt: str | os.PathLike[str], device: str = "cpu", **options: Any) -> Predictor:
    """The predictor of a checkpoint (``options`` go to :class:`Predictor`: overlap, tta, precision...).

    Raises:
        BtsInputError: a missing, corrupt or foreign checkpoint, or an unavailable device.
    """
    return Predictor.from_checkpoint(ckpt, device=device, **options)


def model_info(predictor: Predictor, name: str | None = None) -> dict[str, Any]:
    """What the page says about the model: its name, inputs and regions."""
    cfg = predictor.config
    return {
        "name": name or "model",
        "dataset": str(cfg.get("dataset", "")),
        "scheme": predictor.scheme.name,
        "scheme_description": predictor.scheme.description,
        "modalities": predictor.modalities,
        "regions": predictor.region_names,
        "spatial_dims": predictor.spatial_dims,
        "tiff": predictor.inputs.tiff,
        "inputs": predictor.inputs.describe(),
    }


def case_input(predictor: Predictor, case: UploadedCase) -> CaseInput:
    """The upload as the inference library's case description (not read yet).

    Raises:
        BtsInputError: the upload is not a kind of input the model reads.
    """
    if case.kind == "modalities":
        if predictor.inputs.tiff:
            raise BtsInputError(None, f"NIfTI files were uploaded, but the model is {predictor.inputs.describe()}")
        missing = [m for m in predictor.modalities if m not in case.files]
        if missing:
            need = ", ".join(f"…_{m}" for m in predictor.modalities)
            raise BtsInputError(
                None, f"no {' or '.join(missing)} file among those uploaded: drop all of {need} together"
            )
        item = explicit_case({m: str(p) for m, p in case.files.items()}, predictor.inputs, case_id=case.name)
        # The files on disk carry the server's names; the browser's names say the dataset (and
        # so the scheme the labels are written in, unless the predictor's output_scheme is set).
        item.scheme = case.scheme
    elif case.kind == "volume":
        item = resolve_input(case.files["image"], predictor.inputs)
    else:
        item = resolve_input(case.folder, predictor.inputs)
    item.case_id = case.name
    item.source = case.name
    return item


def check_case(predictor: Predictor, case: UploadedCase) -> None:
    """Read and check the upload now, so bad input is answered at once rather than in the queue.

    Raises:
        BtsInputError: everything :func:`bts_monai.inference.io.load_case` checks (readable,
            co-registered, finite, not empty, the model's modalities and dimensionality).
    """
    predictor.load(case_input(predictor, case))


def _predict(predictor: Predictor, job: Job, progress: Progress) -> Prediction:
    progress(0.01, "reading the scan")
    case = predictor.load(case_input(predictor, job.payload["case"]))
    progress(_READ, "preparing the scan")

    def windows(done: int, total: int) -> None:
        progress(_READ + _WINDOWS * done / max(total, 1), f"segmenting: window {done} of {total}")

    return predictor.predict_case(case, progress_callback=windows)


def overlay_layers(prediction: Prediction) -> dict[str, list[dict[str, Any]]]:
    """The overlays the page can toggle: regions (outer to inner) and, where they differ, labels."""
    scheme = prediction.scheme
    names = scheme.region_names
    outer_first = sorted(names, key=lambda n: -len(scheme.regions[n]))
    regions = [
        {
            "name": n,
            "title": f"{_REGION_TITLES.get(n, n)} (labels {', '.join(map(str, scheme.regions[n]))})",
            "color": _css(c),
            "region": names.index(n),
        }
        for n, c in zip(outer_first, region_colors(outer_first))
    ]
    labels: list[dict[str, Any]] = []
    fg = scheme.foreground_labels
    if len(fg) > 1:
        label_names = [scheme.labels[v] for v in fg]
        for v, name, c in zip(fg, label_names, region_colors(label_names)):
            labels.append({"name": name, "title": f"label {v}: {name}", "color": _css(c), "value": v})
    return {"regions": regions, "labels": labels}


def _region_title(name: str) -> str:
    """``WT · whole tumour``; a name that says it all stays as it is."""
    title = _REGION_TITLES.get(name)
    if title is None or name.lower() in title.lower():
        return title or name
    return f"{name} · {title}"


def _css(rgb: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgb))


def _page_report(report: dict[str, Any], layers: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    colors = {layer["name"]: layer["color"] for layer in layers["regions"]}
    label_colors = {layer["name"]: layer["color"] for layer in layers["labels"]}
    rows = []
    order = list(colors)  # outer to inner, as the overlays
    primary = order[0] if order else None
    for r in sorted(report["regions"], key=lambda r: order.index(r["region"]) if r["region"] in order else 99):
        rows.append(
            {
                "kind": "region",
                "name": r["region"],
                "title": _region_title(r["region"]),
                "description": f"labels {', '.join(map(str, r['labels']))}",
                "color": colors.get(r["region"], "#888888"),
                "voxels": r["voxels"],
                "ml": r["volume_ml"],
                "primary": r["region"] == primary,
            }
        )
    if label_colors:
        for r in report["labels"]:
            rows.append(
                {
                    "kind": "label",
                    "name": r["name"],
                    "title": f"{r['name']} (label {r['label']})",
                    "description": f"label {r['label']}",
                    "color": label_colors.get(r["name"], "#888888"),
                    "voxels": r["voxels"],
                    "ml": r["volume_ml"],
                    "primary": False,
                }
            )
    size = report.get("voxel_size_mm")
    note = (
        f"Voxel size {' x '.join(f'{v:g}' for v in size)} mm."
        if size
        else "The voxel size is unknown for TIFF slices, so only voxel counts are given."
    )
    return {"rows": rows, "note": note}


def _downloads(job: Job, out: Path, written: Sequence[Path], base: str) -> dict[str, dict[str, Any]]:
    """Download key -> file under the job folder, its label and the name the browser saves it as."""
    name = job.name
    files: dict[str, dict[str, Any]] = {}

    def add(key: str, path: Path, label: str, media_type: str | None = None) -> None:
        if path.is_file():
            filename = name + path.name[len(base) :]
            files[key] = {
                "path": str(path.relative_to(job.folder)),
                "filename": filename,
                "label": label,
                "size": path.stat().st_size,
                "media_type": media_type,
            }

    for path in written:
        if path.name.startswith(f"{base}_seg"):
            kind = "NIfTI" if ".nii" in path.name else "TIFF"
            add("segmentation", path, f"Segmentation ({kind})")
    for path in written:
        if "_prob_" in path.name:
            region = path.name.split("_prob_", 1)[1].split(".", 1)[0]
            add(f"probability_{region}", path, f"Probability of {region} (NIfTI)")
    add("report_json", out / f"{base}_report.json", "Volume report (JSON)", "application/json")
    add("report_csv", out / f"{base}_report.csv", "Volume report (CSV)", "text/csv")
    add("overlay_png", out / f"{base}_overlay.png", "Overlay (PNG)", "image/png")
    return files


def run_case(predictor: Predictor, job: Job, progress: Progress) -> dict[str, Any]:
    """Segment a queued upload and write its outputs under the job folder.

    Returns:
        ``view`` (for the page's viewer), ``report`` (rows for its table) and ``files``
        (download key -> file).

    Raises:
        BtsInputError: bad input found while reading the case.
    """
    prediction = _predict(predictor, job, progress)
    progress(_READ + _WINDOWS, "writing the results")
    out = job.folder / "out"
    out.mkdir(exist_ok=True)
    base = "case"  # file names on disk are the server's; the browser gets the case's name
    ext = ".tif" if prediction.case.kind == "tiff" else ".nii.gz"
    written = prediction.save(
        out / f"{base}_seg{ext}",
        probabilities=bool(job.payload.get("probabilities")),
        report=out / f"{base}_report.json",
        overlay=out / f"{base}_overlay.png",
    )
    report = prediction.report()
    write_report(report, out / f"{base}_report.csv")
    progress(0.95, "preparing the viewer")
    layers = overlay_layers(prediction)
    case = prediction.case
    view = views.prepare_view(
        job.folder / "view",
        case.image,
        list(case.channels),
        prediction.regions,
        layers,
        np.asarray(case.affine),
        prediction.labels if layers["labels"] else None,
        orientation_known=case.kind != "tiff",
        convention=prediction.convention,
    )
    logger.info("job %s: %s segmented in %.1f s", job.id, job.name, prediction.seconds)
    return {
        "view": view,
        "report": _page_report(report, layers),
        "files": _downloads(job, out, written, base),
        "seconds": prediction.seconds,
    }
