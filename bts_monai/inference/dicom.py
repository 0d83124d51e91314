"""DICOM in: a study folder (one series per MR sequence) -> a checked case on one voxel grid.

Reading uses **pydicom** (the maintained pure-Python DICOM library; decoders for compressed
transfer syntaxes plug into it) rather than dcm2niix, so no external binary is needed and every
check below names the series at fault. Geometry is computed here from the standard attributes,
because the conversion must be exact and auditable:

* files are grouped into series by ``SeriesInstanceUID`` (never by folder or file name);
* slices are ordered by their position along the slice normal (``ImagePositionPatient`` projected
  on the cross product of the two ``ImageOrientationPatient`` cosines), never by file name or
  ``InstanceNumber``;
* voxels are ``stored * RescaleSlope + RescaleIntercept`` (per slice);
* the voxel -> patient matrix is the DICOM one in LPS (column ``i`` steps ``PixelSpacing[1]``
  along the row cosine, row ``j`` steps ``PixelSpacing[0]`` along the column cosine, slice ``k``
  steps the measured vector between consecutive slice origins), turned into the NIfTI-style RAS
  affine by negating its first two rows, with array axes ``(column, row, slice)``: what nibabel
  and dcm2niix produce for the same files, so the rest of the pipeline is unchanged.

Sequences are matched to the model's modalities by ``SeriesDescription``/``ProtocolName``
(:data:`MODALITY_RULES`), overridable per modality (``flair=<SeriesInstanceUID or description>``).
Series on one grid pass through; otherwise :mod:`bts_monai.inference.registration` resamples them
rigidly onto a reference series when asked (``register=True``), else it is an error naming both
series. Skull stripping is not done: an unstripped-looking scan only gets a warning.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bts_monai.data import layouts
from bts_monai.errors import BtsInputError

__all__ = [
    "DICOM_EXTRA",
    "MODALITY_RULES",
    "DicomOptions",
    "DicomSeries",
    "SeriesVolume",
    "DicomStudy",
    "is_dicom_file",
    "holds_dicom",
    "find_series",
    "match_series",
    "load_series",
    "load_study",
    "parse_series_overrides",
    "same_grid",
    "lps_to_ras",
]

logger = logging.getLogger(__name__)

DICOM_EXTRA = "DICOM input needs the optional packages: pip install 'bts_monai[dicom]'"

_SPACING_RTOL = 0.01
"""Slice gaps may differ from their median by 1 % (scanners write positions rounded to ~0.01 mm)."""

_ORIENTATION_ATOL = 1e-4
"""Direction cosines of one series' slices must agree to this (an oblique localizer differs by far more)."""

# Localizers and non-anatomical series are never matched to a modality.
_EXCLUDED = re.compile(r"locali[sz]er|scout|survey|3[- ]?pl(ane)?\b|\bloc\b|dwi|diffusion|\badc\b|perfusion|\bswi\b")
_CONTRAST = re.compile(r"\+ ?c\b|\+ ?gd|\bc\+|post|gad|\bgd\b|contrast|\bce\b|t1c\b|t1ce|t1gd|mdc")
_FLAIR = re.compile(r"flair|tirm|dark[ _-]?fluid|\bt2f\b")

MODALITY_RULES: dict[str, Any] = {
    "flair": lambda d: bool(_FLAIR.search(d)),
    "t1ce": lambda d: bool(re.search(r"t1|mprage|spgr|bravo|tfl|vibe", d)) and bool(_CONTRAST.search(d)),
    "t1": lambda d: (
        bool(re.search(r"t1|mprage|spgr|bravo|tfl", d)) and not _CONTRAST.search(d) and not _FLAIR.search(d)
    ),
    "t2": lambda d: bool(re.search(r"t2", d)) and not _FLAIR.search(d) and not re.search(r"t2\*|t2 ?star|gre\b", d),
}
"""Modality -> test of a lowercased ``SeriesDescription + ProtocolName``. A series matching
FLAIR is never T1/T2; localizer, diffusion, perfusion and SWI series are never matched."""

_PART10_MAGIC = b"DICM"
_NOT_DICOM_SUFFIX = re.compile(r"\.(nii(\.gz)?|tiff?|png|jpe?g|json|csv|txt|md|zip|gz|xml|html?)$", re.IGNORECASE)


# ---- options ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DicomOptions:
    """How to read a DICOM study.

    Args:
        series: modality -> a ``SeriesInstanceUID`` or an exact ``SeriesDescription``/``ProtocolName``
            (case-insensitive) that overrides :data:`MODALITY_RULES` for it.
        register: resample series on different grids rigidly onto ``reference`` (else: an error).
        reference: the modality whose grid every output uses (default ``t1ce``; the model's first
            modality when it does not read T1ce).
    """

    series: Mapping[str, str] = field(default_factory=dict)
    register: bool = False
    reference: str | None = None


def parse_series_overrides(items: Iterable[str], modalities: Sequence[str]) -> dict[str, str]:
    """``["flair=1.2.3", "t1=AX T1 PRE"]`` -> ``{"flair": "1.2.3", "t1": "AX T1 PRE"}``.

    Raises:
        BtsInputError: an item without ``=``, an unknown modality, or one given twice.
    """
    out: dict[str, str] = {}
    for item in items:
        mod, sep, value = item.partition("=")
        mod, value = mod.strip().lower(), value.strip()
        if not sep or not value:
            raise BtsInputError(None, f"--series {item!r}: expected MODALITY=<SeriesInstanceUID or description>")
        if mod not in modalities:
            raise BtsInputError(
                None, f"--series {item!r}: unknown modality {mod!r} (the model reads {', '.join(modalities)})"
            )
        if mod in out:
            raise BtsInputError(None, f"--series: {mod} given twice")
        out[mod] = value
    return out


# ---- finding series ---------------------------------------------------------------------------------
def is_dicom_file(path: str | os.PathLike[str]) -> bool:
    """Whether the file is DICOM Part 10 (``DICM`` after the 128-byte preamble). Files without
    the preamble (pre-1993 ACR-NEMA) are not taken."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == _PART10_MAGIC


def _candidate_files(folder: Path) -> Iterable[Path]:
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and not _NOT_DICOM_SUFFIX.search(name):
                yield Path(root) / name


def holds_dicom(folder: str | os.PathLike[str]) -> bool:
    """Whether a DICOM Part 10 file lies anywhere under ``folder`` (stops at the first)."""
    folder = Path(folder)
    return folder.is_dir() and any(is_dicom_file(p) for p in _candidate_files(folder))


@dataclass
class DicomSeries:
    """The files of one series (headers read, pixels not).

    Args:
        uid: ``SeriesInstanceUID``.
        description: ``SeriesDescription`` (``""`` when absent).
        protocol: ``ProtocolName`` (``""`` when absent).
        number: ``SeriesNumber`` or ``None``.
        files: the files, in the order found (not slice order).
        headers: their datasets without pixel data, same order.
    """

    uid: str
    description: str
    protocol: str
    number: int | None
    files: list[Path] = field(default_factory=list)
    headers: list[Any] = field(default_factory=list, repr=False)

    @property
    def name(self) -> str:
        """How messages name the series: ``series 5 "AX T1 POST" (1.2.840...)``."""
        num = f" {self.number}" if self.number is not None else ""
        desc = f' "{self.description or self.protocol}"' if (self.description or self.protocol) else ""
        return f"series{num}{desc} ({self.uid})"

    @property
    def text(self) -> str:
        """Lowercased description and protocol, what :data:`MODALITY_RULES` test."""
        return f"{self.description} {self.protocol}".lower().replace("_", " ")

    @property
    def is_localizer(self) -> bool:
        """Every image is a localizer (``ImageType`` LOCALIZER) or the description says so."""
        types = [_image_type(h) for h in self.headers]
        return all("LOCALIZER" in t for t in types) or bool(_EXCLUDED.search(self.text))


def _image_type(ds: Any) -> tuple[str, ...]:
    value = ds.get("ImageType", ())
    if isinstance(value, str):
        value = value.split("\\")
    return tuple(str(v).upper() for v in value)


def _pydicom() -> Any:
    try:
        import pydicom
    except ImportError as exc:  # the optional extra is not installed
        raise BtsInputError(None, DICOM_EXTRA) from exc
    return pydicom


def find_series(folder: str | os.PathLike[str]) -> list[DicomSeries]:
    """Read every DICOM header under ``folder`` and group image files by ``SeriesInstanceUID``.

    Non-DICOM files are skipped; so are DICOM objects without pixels (DICOMDIR, reports) and
    segmentations (an earlier ``--dicom-seg`` output in the folder).

    Raises:
        BtsInputError: no DICOM image at all, or images of more than one study.
    """
    pydicom = _pydicom()
    folder = Path(folder)
    if not folder.is_dir():
        raise BtsInputError(folder, "is not a folder")
    series: dict[str, DicomSeries] = {}
    skipped = 0
    studies: set[str] = set()
    for path in _candidate_files(folder):
        if not is_dicom_file(path):
            skipped += 1
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as exc:  # pydicom raises several types for truncated or foreign files
            raise BtsInputError(path, f"cannot read the DICOM header ({type(exc).__name__}: {exc})") from exc
        if "SeriesInstanceUID" not in ds or "Rows" not in ds or str(ds.get("Modality", "")) in ("SEG", "SR", "PR"):
            continue
        uid = str(ds.SeriesInstanceUID)
        if uid not in series:
            number = ds.get("SeriesNumber")
            series[uid] = DicomSeries(
                uid,
                str(ds.get("SeriesDescription", "")).strip(),
                str(ds.get("ProtocolName", "")).strip(),
                int(number) if number not in (None, "") else None,
            )
        series[uid].files.append(path)
        series[uid].headers.append(ds)
        studies.add(str(ds.get("StudyInstanceUID", "")))
    if not series:
        what = f"{skipped} files, none of them DICOM" if skipped else "no files"
        raise BtsInputError(
            folder, f"no DICOM images here ({what}; DICOM Part 10 files start with 'DICM' after 128 bytes)"
        )
    if len(studies) > 1:
        raise BtsInputError(folder, f"holds {len(studies)} DICOM studies; give one study folder per case")
    return sorted(series.values(), key=lambda s: (s.number is None, s.number or 0, s.uid))


def match_series(
    series: Sequence[DicomSeries], modalities: Sequence[str], overrides: Mapping[str, str] | None = None
) -> dict[str, DicomSeries]:
    """Which series holds each modality: the override when given, else the one series whose
    description or protocol :data:`MODALITY_RULES` match.

    Raises:
        BtsInputError: a modality matched by no series or by several (naming them), or an
            override that names no series.
    """
    overrides = dict(overrides or {})
    chosen: dict[str, DicomSeries] = {}
    for mod, value in overrides.items():
        hits = [s for s in series if value == s.uid]
        if not hits:
            low = value.strip().lower()
            hits = [s for s in series if low in (s.description.lower(), s.protocol.lower())]
        if len(hits) != 1:
            known = "; ".join(s.name for s in series)
            what = "no series" if not hits else f"{len(hits)} series"
            raise BtsInputError(None, f"--series {mod}={value}: {what} with that UID or description (found: {known})")
        chosen[mod] = hits[0]
    taken = {s.uid for s in chosen.values()}
    candidates = [s for s in series if s.uid not in taken and not s.is_localizer]
    for mod in modalities:
        if mod in chosen:
            continue
        rule = MODALITY_RULES.get(mod)
        hits = [s for s in candidates if rule is not None and rule(s.text)]
        if not hits:
            known = "; ".join(s.name for s in series)
            raise BtsInputError(
                None,
                f"no {mod} series found (the model needs {', '.join(modalities)}; series here: {known}); "
                f"name it with --series {mod}=<SeriesInstanceUID or description>",
            )
        if len(hits) > 1:
            raise BtsInputError(
                None,
                f"{len(hits)} series look like {mod}: {'; '.join(s.name for s in hits)}; "
                f"choose one with --series {mod}=<SeriesInstanceUID or description>",
            )
        chosen[mod] = hits[0]
    dup = {}
    for mod in modalities:
        if chosen[mod].uid in dup:
            raise BtsInputError(None, f"{chosen[mod].name} was chosen for both {dup[chosen[mod].uid]} and {mod}")
        dup[chosen[mod].uid] = mod
    return {m: chosen[m] for m in modalities}


# ---- one series -> a volume -----------------------------------------------------------------------
@dataclass
class SeriesVolume:
    """One series read into a volume.

    Args:
        series: the series.
        data: float32 ``(columns, rows, slices)``, rescale slope and intercept applied.
        affine: voxel -> RAS (mm), NIfTI style.
        headers: the headers in slice order (what a DICOM SEG references, frame by frame).
    """

    series: DicomSeries
    data: np.ndarray = field(repr=False)
    affine: np.ndarray
    headers: list[Any] = field(repr=False)
    shape: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.data.shape)


def lps_to_ras(affine_lps: np.ndarray) -> np.ndarray:
    """DICOM's LPS voxel -> patient matrix as NIfTI's RAS affine (negate x and y)."""
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine_lps, dtype=np.float64)


def _floats(ds: Any, key: str, n: int, series: DicomSeries) -> np.ndarray:
    value = ds.get(key)
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.zeros(0)
    if arr.shape != (n,):
        raise BtsInputError(None, f"{series.name}: {getattr(ds, 'filename', 'a file')} lacks a valid {key}")
    return arr


def slice_geometry(series: DicomSeries) -> tuple[list[int], np.ndarray]:
    """Slice order and the LPS voxel -> patient matrix of a series, after checking it is one
    regular stack: one orientation (no localizer mixed in), one matrix size and pixel spacing,
    no duplicate, missing or irregularly spaced slice.

    Returns:
        ``(order, affine_lps)``: indices into ``series.headers`` in slice order, and the matrix.

    Raises:
        BtsInputError: naming the series and the problem.
    """
    headers = series.headers
    name = series.name
    for h in headers:
        if int(h.get("NumberOfFrames", 1) or 1) > 1:
            raise BtsInputError(None, f"{name}: multi-frame (enhanced) images are not read; export single-frame images")
        if "LOCALIZER" in _image_type(h):
            raise BtsInputError(None, f"{name}: a localizer image is mixed into the series ({Path(h.filename).name})")
    iops = np.stack([_floats(h, "ImageOrientationPatient", 6, series) for h in headers])
    ref_iop = np.median(iops, axis=0)
    off = np.abs(iops - ref_iop).max(axis=1) > _ORIENTATION_ATOL
    if off.any():
        bad = Path(headers[int(np.argmax(off))].filename).name
        raise BtsInputError(
            None, f"{name}: {int(off.sum())} slice(s) of another orientation (a localizer?) are mixed in, e.g. {bad}"
        )
    sizes = {(int(h.Rows), int(h.Columns)) for h in headers}
    if len(sizes) > 1:
        raise BtsInputError(None, f"{name}: slices of different sizes {sorted(sizes)}")
    spacings = np.stack([_floats(h, "PixelSpacing", 2, series) for h in headers])
    if np.abs(spacings - spacings[0]).max() > 1e-4:
        raise BtsInputError(None, f"{name}: slices with different pixel spacings")
    if len(headers) < 2:
        raise BtsInputError(None, f"{name}: has only {len(headers)} slice; a 3D volume is needed")
    row_cos, col_cos = iops[0, :3], iops[0, 3:]
    normal = np.cross(row_cos, col_cos)
    ipps = np.stack([_floats(h, "ImagePositionPatient", 3, series) for h in headers])
    dist = ipps @ normal
    order = [int(i) for i in np.argsort(dist, kind="stable")]
    d = dist[order]
    gaps = np.diff(d)
    step = float(np.median(gaps))
    tol = max(_SPACING_RTOL * abs(step), 1e-3)
    dups = np.flatnonzero(gaps < tol if step > tol else np.ones_like(gaps, dtype=bool))
    if dups.size:
        i = int(dups[0])
        a, b = (Path(headers[order[i]].filename).name, Path(headers[order[i + 1]].filename).name)
        raise BtsInputError(None, f"{name}: duplicate slices at position {d[i]:.2f} mm ({a} and {b})")
    bad = np.flatnonzero(np.abs(gaps - step) > tol)
    if bad.size:
        i = int(bad[0])
        ratio = gaps[i] / step
        if abs(ratio - round(ratio)) * step <= tol and round(ratio) >= 2:
            raise BtsInputError(
                None,
                f"{name}: {round(ratio) - 1} slice(s) missing between {d[i]:.2f} and {d[i + 1]:.2f} mm "
                f"(slices are {step:.2f} mm apart)",
            )
        raise BtsInputError(
            None, f"{name}: inconsistent slice spacing: gaps of {step:.3f} and {gaps[i]:.3f} mm (at {d[i]:.2f} mm)"
        )
    first, last = ipps[order[0]], ipps[order[-1]]
    affine = np.eye(4)
    affine[:3, 0] = row_cos * spacings[0][1]  # column index i: along the row, PixelSpacing[1] apart
    affine[:3, 1] = col_cos * spacings[0][0]  # row index j: down the column, PixelSpacing[0] apart
    affine[:3, 2] = (last - first) / (len(order) - 1)
    affine[:3, 3] = first
    return order, affine


def _decode(pydicom: Any, path: Path, series: DicomSeries) -> np.ndarray:
    """One slice's stored values, rescaled, as float32 ``(rows, columns)``."""
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise BtsInputError(None, f"{series.name}: cannot read {path.name} ({type(exc).__name__}: {exc})") from exc
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise BtsInputError(None, f"{series.name}: {path.name} is a colour image; MR series are greyscale")
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # no decoder for the transfer syntax, or corrupt compressed data
        meta = getattr(ds, "file_meta", None)
        ts = meta.get("TransferSyntaxUID") if meta is not None else None
        ts_name = f"{ts.name} ({ts})" if ts is not None else "unknown transfer syntax"
        first = str(exc).strip().splitlines()[0].rstrip(" :") if str(exc).strip() else type(exc).__name__
        raise BtsInputError(
            None,
            f"{series.name}: cannot decode the pixel data of {path.name}, transfer syntax {ts_name}: {first} "
            "(decompress the series, e.g. with `gdcmconv --raw`, or install the decoders: "
            "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg)",
        ) from exc
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    out = pixels.astype(np.float32)
    if slope != 1.0 or intercept != 0.0:
        out = out * np.float32(slope) + np.float32(intercept)
    if out.shape != (int(ds.Rows), int(ds.Columns)):
        raise BtsInputError(None, f"{series.name}: {path.name} decodes to shape {out.shape}, not Rows x Columns")
    return out


def load_series(series: DicomSeries) -> SeriesVolume:
    """Read a series into a ``(columns, rows, slices)`` volume with its RAS affine.

    Raises:
        BtsInputError: see :func:`slice_geometry`; pixel data that cannot be decoded.
    """
    pydicom = _pydicom()
    order, affine_lps = slice_geometry(series)
    first = series.headers[order[0]]
    data = np.empty((int(first.Columns), int(first.Rows), len(order)), dtype=np.float32)
    for k, idx in enumerate(order):
        data[:, :, k] = _decode(pydicom, series.files[idx], series).T
    if not np.isfinite(data).all():
        raise BtsInputError(None, f"{series.name}: contains NaN or Inf values")
    return SeriesVolume(series, data, lps_to_ras(affine_lps), [series.headers[i] for i in order])


def grid_mismatch(a: SeriesVolume, b: SeriesVolume, b_name: str | None = None) -> str | None:
    """Why ``a`` is not on ``b``'s voxel grid (the one rule and tolerance of
    :func:`bts_monai.data.layouts.grid_mismatch`; ``b_name`` names ``b`` in it), ``None`` when it is."""
    return layouts.grid_mismatch(a.shape, a.affine, b.shape, b.affine, b_name or b.series.name)


def same_grid(a: SeriesVolume, b: SeriesVolume) -> bool:
    """Whether two volumes share shape and affine (see :func:`grid_mismatch`)."""
    return grid_mismatch(a, b) is None


# ---- a study -> the model's channels on one grid ---------------------------------------------------
@dataclass
class DicomStudy:
    """A study read for a model: the channels on the reference series' grid, and what was done.

    Args:
        folder: the study folder.
        image: float32 ``(C, columns, rows, slices)`` in the model's modality order.
        affine: the reference series' RAS affine.
        reference: the series whose grid ``image`` uses (and a DICOM SEG references).
        reference_modality: its modality.
        series: modality -> the series used.
        registrations: per registered modality, the rigid transform found (see
            :func:`bts_monai.inference.registration.register_rigid`).
    """

    folder: Path
    image: np.ndarray
    affine: np.ndarray
    reference: SeriesVolume
    reference_modality: str
    series: dict[str, DicomSeries]
    registrations: dict[str, dict[str, Any]] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        """What goes into the case's report: the series per modality, the grid, the transforms."""
        ref = self.reference
        return {
            "study_folder": str(self.folder),
            "study_instance_uid": str(ref.headers[0].get("StudyInstanceUID", "")),
            "reference_modality": self.reference_modality,
            "reference_series": ref.series.uid,
            "series": {
                m: {
                    "series_instance_uid": s.uid,
                    "description": s.description,
                    "protocol": s.protocol,
                    "number": s.number,
                    "slices": len(s.files),
                }
                for m, s in self.series.items()
            },
            "registered": bool(self.registrations),
            "registrations": self.registrations,
        }


def _reference_modality(modalities: Sequence[str], wanted: str | None) -> str:
    if wanted is not None:
        if wanted not in modalities:
            raise BtsInputError(None, f"--register-to {wanted}: the model reads only {', '.join(modalities)}")
        return wanted
    return "t1ce" if "t1ce" in modalities else modalities[0]


def load_study(
    folder: str | os.PathLike[str], modalities: Sequence[str], options: DicomOptions | None = None
) -> DicomStudy:
    """Find, match, read and (if asked) register the series of one study for ``modalities``.

    Raises:
        BtsInputError: one line naming the folder, the series and the problem (see the module
            docstring); series on different grids without ``options.register``.
    """
    options = options or DicomOptions()
    folder = Path(folder)
    try:
        series = find_series(folder)
        chosen = match_series(series, modalities, options.series)
        ref_mod = _reference_modality(modalities, options.reference)
        volumes = {m: load_series(s) for m, s in chosen.items()}
        ref = volumes[ref_mod]
        registrations: dict[str, dict[str, Any]] = {}
        image = np.empty((len(modalities), *ref.shape), dtype=np.float32)
        for c, m in enumerate(modalities):
            vol = volumes[m]
            mismatch = None if m == ref_mod else grid_mismatch(vol, ref, ref_mod)
            if mismatch is None:
                image[c] = vol.data
            elif options.register:
                from bts_monai.inference.registration import register_rigid

                image[c], registrations[m] = register_rigid(ref.data, ref.affine, vol.data, vol.affine)
                # Interpolation spreads a skull-stripped series' edge into the background; the
                # models expect one brain mask for all channels (zero outside), so the reference's.
                image[c][ref.data == 0] = 0
                registrations[m]["series_instance_uid"] = vol.series.uid
                registrations[m]["zeroed_outside_reference"] = True
                logger.info("%s: %s registered onto %s (%s)", folder.name, m, ref_mod, registrations[m]["summary"])
            else:
                raise BtsInputError(
                    None,
                    f"{vol.series.name} ({m}) and {ref.series.name} ({ref_mod}) are on different voxel grids "
                    f"({mismatch}); pass --register to resample {m} rigidly onto {ref_mod}",
                )
            if m != ref_mod:
                vol.data = np.empty(0, dtype=np.float32)  # free each series once it is on the grid
        ref.data = np.empty(0, dtype=np.float32)
    except BtsInputError as exc:
        if exc.path is not None:
            raise
        raise BtsInputError(folder, exc.problem) from exc
    for c, m in enumerate(modalities):
        if not image[c].any():
            raise BtsInputError(folder, f"{chosen[m].name} ({m}) is empty: every voxel is zero")
    from bts_monai.inference.io import warn_if_not_skull_stripped  # the one rule, shared with NIfTI input

    warn_if_not_skull_stripped(folder, image)
    return DicomStudy(folder, image, ref.affine, ref, ref_mod, chosen, registrations)


def loaded_case(case: Any, model: Any) -> Any:
    """A :class:`~bts_monai.inference.io.CaseInput` of kind ``"dicom"`` read as a
    :class:`~bts_monai.inference.io.LoadedCase` on the reference series' grid; the NIfTI outputs
    get that grid's affine (qform/sform code 1, scanner), ``.dicom`` the :class:`DicomStudy`
    (what a DICOM SEG references and the report records).

    Raises:
        BtsInputError: see :func:`load_study`; a 2D TIFF model.
    """
    import nibabel as nib

    from bts_monai.inference.io import LoadedCase

    if model.tiff or model.spatial_dims != 3:
        raise BtsInputError(case.source, f"holds DICOM series (3D volumes), but the checkpoint is {model.describe()}")
    study = load_study(case.files.get("study", case.source), model.modalities, case.dicom_options)
    shape = study.image.shape[1:]
    ref = nib.Nifti1Image(np.broadcast_to(np.uint8(0), shape), study.affine)
    ref.set_qform(study.affine, code=1)
    ref.set_sform(study.affine, code=1)
    files = tuple(str(f) for s in study.series.values() for f in s.files)
    out = LoadedCase(
        case.case_id,
        case.source,
        "nifti",
        study.image,
        study.affine,
        ref,
        channels=tuple(model.modalities),
        files=files,
        dicom=study,
    )
    return out
