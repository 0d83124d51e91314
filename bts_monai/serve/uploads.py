"""Receiving an upload: stream a multipart body to disk under server-chosen names, with a size limit.

The browser's file names are used only to recognise what a file is (``*_flair.nii.gz``,
``*_12.tif``) and for display; every file lands at a name this module makes up inside the job's
folder, so no name from the browser ever becomes a path. Starlette's own form parser would
spool large parts to the system temporary folder; parsing the stream here keeps every byte
inside the server's folder and stops reading as soon as the limit is passed.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header

from bts_monai.data import layouts
from bts_monai.errors import BtsInputError
from bts_monai.serve.limits import ServerBusy

__all__ = [
    "UploadTooLarge",
    "ReceivedFile",
    "Upload",
    "UploadedCase",
    "content_length",
    "receive_multipart",
    "arrange_case",
    "display_name",
]

_MAX_FIELD_BYTES = 1024  # plain form fields are small options ("probabilities": "1")


class UploadTooLarge(Exception):
    """The request body is larger than the server accepts."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        super().__init__(f"upload larger than the limit of {limit_bytes / 2**20:.0f} MB")


@dataclass
class ReceivedFile:
    """One uploaded file: the name the browser gave (never used as a path) and where it is stored.

    Args:
        name: the browser's file name, for matching and display only.
        path: the server-chosen file it was written to.
        size: its length in bytes.
    """

    name: str
    path: Path
    size: int = 0


@dataclass
class Upload:
    """The parts of one multipart request: files (in order) and small plain fields."""

    files: list[ReceivedFile] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)


def display_name(name: str, fallback: str = "case", max_len: int = 64) -> str:
    """A browser-supplied name reduced to ``[A-Za-z0-9._-]`` (for download names and the page only)."""
    base = re.split(r"[\\/]", name)[-1]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._-")[:max_len]
    return safe or fallback


class _PartWriter:
    """Multipart callbacks that write file parts to ``dest/upload_<n>.part`` and keep small fields."""

    def __init__(self, dest: Path, max_files: int) -> None:
        self.dest = dest
        self.max_files = max_files
        self.upload = Upload()
        self._headers: dict[bytes, bytes] = {}
        self._field_name = b""
        self._value = b""
        self._out: IO[bytes] | None = None
        self._current: ReceivedFile | None = None
        self._field: str | None = None
        self._field_value = bytearray()

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._headers = {}
        self._field_name = b""
        self._value = b""

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field_name += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field_name.lower()] = self._value
        self._field_name = b""
        self._value = b""

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        filename = params.get(b"filename")
        if filename is None:
            self._field, self._field_value = name, bytearray()
            return
        if len(self.upload.files) >= self.max_files:
            raise BtsInputError(None, f"too many files in one upload (at most {self.max_files})")
        path = self.dest / f"upload_{len(self.upload.files):04d}.part"
        self._current = ReceivedFile(filename.decode("utf-8", "replace"), path)
        self._out = open(path, "xb")  # closed in _part_end, or close() when the upload breaks off

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._out is not None and self._current is not None:
            self._out.write(data[start:end])
            self._current.size += end - start
        elif self._field is not None:
            self._field_value += data[start:end]
            if len(self._field_value) > _MAX_FIELD_BYTES:
                raise BtsInputError(None, f"form field {self._field!r} is too long")

    def _part_end(self) -> None:
        if self._out is not None and self._current is not None:
            self._out.close()
            self._out = None
            self.upload.files.append(self._current)
            self._current = None
        elif self._field is not None:
            self.upload.fields[self._field] = self._field_value.decode("utf-8", "replace")
            self._field = None

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


def content_length(header: str | None) -> int | None:
    """The ``Content-Length`` header's value (``None`` when absent, as in chunked uploads).

    Raises:
        BtsInputError: not a non-negative whole number.
    """
    if header is None:
        return None
    try:
        value = int(header)
    except ValueError:
        value = -1
    if value < 0:
        raise BtsInputError(None, "invalid Content-Length header")
    return value


async def receive_multipart(
    content_type: str,
    content_length_header: str | None,
    chunks: AsyncIterator[bytes],
    dest: str | os.PathLike[str],
    max_bytes: int,
    max_files: int = 2000,
    on_bytes: Callable[[int], None] | None = None,
) -> Upload:
    """Stream a ``multipart/form-data`` body into ``dest``, never holding a whole file in memory.

    Args:
        content_type: the request's ``Content-Type`` header (carries the boundary).
        content_length_header: the ``Content-Length`` header, if any (checked before reading).
        chunks: the body as it arrives.
        dest: an existing, empty folder owned by the server.
        max_bytes: largest body accepted.
        max_files: most file parts accepted.
        on_bytes: called with the bytes received so far after each chunk; what it raises
            stops the upload and is raised as it is (the server's quota, :mod:`~bts_monai.serve.limits`).

    Returns:
        The files (server-side paths, browser names) and plain fields.

    Raises:
        UploadTooLarge: the body is (or announces to be) larger than ``max_bytes``.
        BtsInputError: not a multipart form, malformed, or too many files.
        ServerBusy: raised by ``on_bytes``.
    """
    import asyncio

    ctype, params = parse_options_header(content_type or "")
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise BtsInputError(None, "expected a multipart/form-data upload of files")
    announced = content_length(content_length_header)
    if announced is not None and announced > max_bytes:
        raise UploadTooLarge(max_bytes)
    writer = _PartWriter(Path(dest), max_files)
    parser = MultipartParser(boundary, writer.callbacks())
    received = 0
    try:
        async for chunk in chunks:
            received += len(chunk)
            if received > max_bytes:
                raise UploadTooLarge(max_bytes)
            if on_bytes is not None:
                on_bytes(received)
            if chunk:
                # Writing to disk blocks; keep the event loop free for progress polls meanwhile.
                await asyncio.to_thread(parser.write, chunk)
        parser.finalize()
    except (UploadTooLarge, BtsInputError, ServerBusy):
        raise
    except Exception as exc:  # python-multipart raises several types for a malformed body
        raise BtsInputError(None, f"malformed upload ({type(exc).__name__}: {exc})") from exc
    finally:
        writer.close()
    if not writer.upload.files:
        raise BtsInputError(None, "no files in the upload")
    return writer.upload


# ---- what was uploaded ----------------------------------------------------------------------------
# Which file is what: the one module of layouts and names (BraTS 2017-2021 and 2023 names, LGG slices).
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class UploadedCase:
    """One case arranged from an upload, under server-chosen names.

    Args:
        kind: ``"volume"`` (one 4D NIfTI), ``"modalities"`` (one NIfTI per modality, by suffix),
            ``"slices"`` (LGG TIFF slices of one patient) or ``"study"`` (a zip of a DICOM study).
        name: display name (from the browser's names, sanitised).
        folder: the folder holding the arranged files.
        files: the arranged files: ``{"image": path}``, ``{modality: path}``, ``{"<n>": path}``
            (slice number, ascending) or ``{"study": folder}`` (the zip's files, unpacked).
        names: server path -> browser name, to name files in messages.
        ignored: browser names of files not used (label files, masks).
        scheme: the label scheme of the dataset whose names the files carry (BraTS 2023 names:
            ``brats2023``; 2017-2021 names: ``brats2021``), so the segmentation is written back in
            it as ``bts-infer`` does; ``None`` when the names do not say.
    """

    kind: str
    name: str
    folder: Path
    files: dict[str, Path]
    names: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    scheme: str | None = None


def _nifti_ext(path: Path) -> str:
    """``.nii.gz`` when the bytes are gzip, else ``.nii``: the content decides, not the name."""
    with open(path, "rb") as fh:
        return ".nii.gz" if fh.read(2) == _GZIP_MAGIC else ".nii"


def _base(name: str) -> str:
    return re.split(r"[\\/]", name)[-1]


def arrange_case(files: list[ReceivedFile], dest: str | os.PathLike[str]) -> UploadedCase:
    """Recognise one case in uploaded files and move them under server-chosen names in ``dest``.

    One NIfTI is a 4D volume; several NIfTI files are matched by their suffix (``_flair``, ``_t1``,
    ``_t1ce``, ``_t2``; BraTS 2023's ``-t2f``, ``-t1n``, ``-t1c``, ``-t2w`` too), label files are
    ignored; TIFF files are the numbered slices of one LGG patient, masks ignored.

    Raises:
        BtsInputError: mixed or unknown file types, a modality missing or given twice, slices of
            several patients, or no image at all (the message names the browser's files).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=False)
    names = [_base(f.name) for f in files]
    empty = [n for f, n in zip(files, names) if f.size == 0]
    if empty:
        raise BtsInputError(empty[0], "the file is empty")
    if len(files) == 1 and names[0].lower().endswith(".zip"):
        return _arrange_study(files[0], names[0], dest)
    unknown = [n for n in names if not (layouts.is_nifti_path(n) or layouts.is_tiff_path(n))]
    if unknown:
        raise BtsInputError(
            unknown[0],
            "not a NIfTI (.nii, .nii.gz) or TIFF (.tif) file; upload a 4D NIfTI, the four "
            "modality files of a BraTS case, the TIFF slices of an LGG patient, or a .zip of a DICOM study",
        )
    nifti = [(f, n) for f, n in zip(files, names) if layouts.is_nifti_path(n)]
    tiff = [(f, n) for f, n in zip(files, names) if layouts.is_tiff_path(n)]
    if nifti and tiff:
        raise BtsInputError(None, "the upload mixes NIfTI and TIFF files; upload one case at a time")
    if tiff:
        return _arrange_slices(tiff, dest)
    if len(nifti) == 1:
        f, name = nifti[0]
        target = dest / f"image{_nifti_ext(f.path)}"
        os.replace(f.path, target)
        stem = layouts.strip_image_suffix(name)
        names = {str(target): name, str(dest): "the upload"}
        return UploadedCase("volume", display_name(stem), dest, {"image": target}, names)
    return _arrange_modalities(nifti, dest)


MAX_STUDY_BYTES = 2 * 2**30
"""Most bytes a zipped study may unpack to (a brain MR study is ~50-500 MB): a zip bomb stops here."""

MAX_STUDY_FILES = 20000
"""Most files a zipped study may hold."""


def _arrange_study(f: ReceivedFile, name: str, dest: Path) -> UploadedCase:
    """Unpack a zip of a DICOM study into ``dest/study`` under server-chosen names.

    Member names never become paths: each file is written as ``<n>_<sanitised base name>`` (DICOM
    is grouped by the UIDs in the files, not by folders or names), folders and hidden files
    (``__MACOSX/``, ``.DS_Store``) are skipped, and the bytes written are counted against
    :data:`MAX_STUDY_BYTES` whatever the archive's headers claim.
    """
    study = dest / "study"
    study.mkdir()
    names = {str(dest): "the upload", str(study): f"the study in {display_name(name, 'the zip')}"}
    try:
        archive = zipfile.ZipFile(f.path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise BtsInputError(name, f"not a readable zip archive ({exc})") from None
    written = 0
    with archive:
        members = [
            m
            for m in archive.infolist()
            if not m.is_dir() and not any(part.startswith((".", "__MACOSX")) for part in re.split(r"[\\/]", m.filename))
        ]
        if len(members) > MAX_STUDY_FILES:
            raise BtsInputError(name, f"holds {len(members)} files, more than the {MAX_STUDY_FILES} a study may have")
        if not members:
            raise BtsInputError(name, "the zip archive holds no files")
        for n, member in enumerate(members):
            target = study / f"{n:05d}_{display_name(_base(member.filename), 'file')}"
            try:
                with archive.open(member) as src, open(target, "xb") as out:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > MAX_STUDY_BYTES:
                            limit = f"{MAX_STUDY_BYTES / 2**20:.0f} MB"
                            raise BtsInputError(name, f"unpacks to more than {limit}, more than a study may take")
                        out.write(chunk)
            except (zipfile.BadZipFile, RuntimeError, NotImplementedError, OSError, EOFError) as exc:
                # corrupt data, an encrypted member (RuntimeError), an unsupported compression method
                raise BtsInputError(name, f"cannot unpack {member.filename} ({exc})") from None
            names[str(target)] = member.filename
    os.remove(f.path)  # the zip itself is no longer needed; keep the job folder's size honest
    stem = name[: -len(".zip")]
    return UploadedCase("study", display_name(stem, "study"), study, {"study": study}, names)


def _arrange_modalities(nifti: list[tuple[ReceivedFile, str]], dest: Path) -> UploadedCase:
    found: dict[str, tuple[ReceivedFile, str]] = {}
    ignored: list[str] = []
    cases: set[str] = set()
    named: dict[str, str] = {}  # BraTS naming ("brats", "brats2023") -> an example browser name
    for f, name in nifti:
        m = layouts.parse_modality_file(name, strict=False)
        if m is None:
            raise BtsInputError(
                name,
                "cannot tell which modality this is: name the files <case>_flair, <case>_t1, "
                "<case>_t1ce and <case>_t2 (.nii or .nii.gz), or upload one 4D NIfTI",
            )
        mod = m.kind
        if mod == "seg":
            ignored.append(name)
            continue
        if mod in found:
            raise BtsInputError(name, f"two {mod} files: {found[mod][1]} and {name}; upload one case at a time")
        found[mod] = (f, name)
        cases.add(m.case)
        named.setdefault(m.layout, name)
    if len(cases) > 1:
        raise BtsInputError(None, f"files of several cases ({', '.join(sorted(cases))}); upload one case at a time")
    if len(named) > 1:  # as bts-infer refuses such a case folder: the label scheme would be a guess
        raise BtsInputError(
            named["brats2023"],
            f"the upload mixes BraTS 2017-2021 names ({named['brats']}) and BraTS 2023 names "
            f"({named['brats2023']}); name all files one way",
        )
    arranged: dict[str, Path] = {}
    names: dict[str, str] = {}
    for mod, (f, name) in found.items():
        target = dest / f"case_{mod}{_nifti_ext(f.path)}"
        os.replace(f.path, target)
        arranged[mod] = target
        names[str(target)] = name
    case_id = next(iter(cases)) if cases else "case"
    scheme = layouts.brats_dataset(case_id, next(iter(named)))[1] if named else None
    names[str(dest)] = "the upload"
    return UploadedCase("modalities", display_name(case_id), dest, arranged, names, ignored, scheme)


def _arrange_slices(tiff: list[tuple[ReceivedFile, str]], dest: Path) -> UploadedCase:
    slices: dict[int, tuple[ReceivedFile, str]] = {}
    ignored: list[str] = []
    patients: set[str] = set()
    for f, name in tiff:
        s = layouts.parse_lgg_slice(name)
        if s is None:
            raise BtsInputError(name, "LGG slices are named <patient>_<n>.tif (n = slice number)")
        if s.mask:
            ignored.append(name)
            continue
        n = s.number
        if n in slices:
            raise BtsInputError(name, f"slice {n} given twice ({slices[n][1]} and {name})")
        slices[n] = (f, name)
        patients.add(s.patient)
    if not slices:
        raise BtsInputError(None, "only mask files were uploaded; upload the image slices (<patient>_<n>.tif)")
    if len(patients) > 1:
        raise BtsInputError(None, f"slices of several patients ({', '.join(sorted(patients))}); upload one at a time")
    arranged: dict[str, Path] = {}
    names: dict[str, str] = {}
    for n in sorted(slices):
        f, name = slices[n]
        target = dest / f"patient_{n}.tif"
        os.replace(f.path, target)
        arranged[str(n)] = target
        names[str(target)] = name
    names[str(dest)] = "the uploaded slices"
    return UploadedCase("slices", display_name(next(iter(patients))), dest, arranged, names, ignored)
