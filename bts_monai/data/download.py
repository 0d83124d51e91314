"""Download the Kaggle copies of BraTS 2020, BraTS 2021 and the LGG MRI set into a clean folder.

``download_dataset("brats2021", "data/")`` fetches the dataset's archive from Kaggle with the
maintained client (kagglehub: credentials, endpoint, resumable transfer, MD5 check), extracts it
safely, fixes the Kaggle copies' quirks, checks the case counts and that every image opens, and
writes ``datalist.json`` beside the data. The result is ``DEST/<name>/``; its completion marker
``.bts_download.json`` is written last and the folder only appears, by an atomic rename, once it
is complete, so an interrupted run never leaves a dataset that looks finished. Running again on a
complete folder does no work (and needs no network); after an interruption it resumes the download
or restarts the extraction.

Layout while working (all inside ``DEST``, so nothing is written elsewhere)::

    DEST/.<name>.download/<slug>-v<N>.zip   the archive (kept until the dataset is complete)
    DEST/.<name>.download/extracted/        extraction, fix-ups and checks happen here
    DEST/<name>/                            the finished dataset (renamed from ``extracted``)
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import stat
import tarfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from tqdm import tqdm

from bts_monai.errors import BtsInputError
from bts_monai.fileio import write_text

__all__ = [
    "DATALIST_NAME",
    "DATASETS",
    "MARKER_NAME",
    "DatasetSpec",
    "DownloadError",
    "download_dataset",
    "find_kaggle_credentials",
    "get_spec",
]

logger = logging.getLogger(__name__)

MARKER_NAME = ".bts_download.json"  # in DEST/<name>: the completion marker (handle, version, counts)
DATALIST_NAME = "datalist.json"  # in DEST/<name>: the datalist written beside the data
_BRATS_MODALITIES = ("flair", "t1", "t1ce", "t2")
_BLOCK = 4096  # bytes a small file takes on disk at least; used to estimate the space extraction needs

KAGGLE_SETTINGS_URL = "https://www.kaggle.com/settings"
_CREDENTIALS_STEPS = (
    "no Kaggle API credentials found. To create them: (1) sign in at https://www.kaggle.com and open "
    f"{KAGGLE_SETTINGS_URL}, section 'API', 'Create New Token'; (2) save the token it shows as "
    "~/.kaggle/access_token (or export KAGGLE_API_TOKEN=<token>) - or, with a legacy key from "
    "'Create Legacy API Key', save the downloaded kaggle.json as ~/.kaggle/kaggle.json (or in "
    "$KAGGLE_CONFIG_DIR), or export KAGGLE_USERNAME and KAGGLE_KEY; (3) make the file private: "
    "chmod 600 ~/.kaggle/access_token (or ~/.kaggle/kaggle.json). Then run this again."
)


class DownloadError(RuntimeError):
    """The download failed for a reason outside the user's input: network, server, cut transfer.

    Running the same command again resumes where it stopped.
    """


class _BadArchiveError(BtsInputError):
    """An unsafe, corrupt or truncated archive: deleted, as keeping it cannot help a later run."""

    def __init__(self, path: str | os.PathLike[str], problem: str, corrupt: bool = False) -> None:
        super().__init__(path, problem)
        self.corrupt = corrupt


# -- the datasets -----------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSpec:
    """A Kaggle dataset and how to turn its archive into a clean dataset folder.

    Args:
        name: short name, also the folder created in ``DEST``.
        handle: Kaggle handle ``owner/slug`` (``owner/slug/versions/N`` pins a version).
        expected: the counts a complete copy has, keyed as ``count`` returns them.
        count: counts of an extracted folder; raises :class:`BtsInputError` on an incomplete case.
        keep: which archive members to extract (drops Kaggle's duplicate copies).
        unpack: base names of archive members that are tar archives to unpack, not copy.
        fix_up: renames applied to the extracted folder (the Kaggle copy's naming quirks).
        description: one line for ``--help`` and logs.
    """

    name: str
    handle: str
    expected: Mapping[str, int]
    count: Callable[[Path], dict[str, int]]
    keep: Callable[[str], bool] = field(default=lambda member: True)
    unpack: tuple[str, ...] = ()
    fix_up: Callable[[Path], None] = field(default=lambda folder: None)
    description: str = ""

    @property
    def url(self) -> str:
        """The dataset's Kaggle page (licence and terms of use)."""
        owner, slug = self.handle.split("/")[:2]
        return f"https://www.kaggle.com/datasets/{owner}/{slug}"


def _case_dirs(root: Path, pattern: re.Pattern[str]) -> list[Path]:
    return sorted(
        Path(dirpath) / d for dirpath, dirs, _ in os.walk(root) for d in dirs if pattern.fullmatch(d) is not None
    )


def _count_cases(root: Path, pattern: re.Pattern[str], kinds: tuple[str, ...], suffix: str) -> int:
    """Number of case folders matching ``pattern``, each holding ``<case>_<kind><suffix>`` for every kind."""
    cases = _case_dirs(root, pattern)
    for case_dir in cases:
        missing = [
            f"{case_dir.name}_{k}{suffix}" for k in kinds if not (case_dir / f"{case_dir.name}_{k}{suffix}").is_file()
        ]
        if missing:
            raise BtsInputError(case_dir, f"incomplete case: {', '.join(missing)} missing")
    return len(cases)


_BRATS20_TRAINING = re.compile(r"BraTS20_Training_\d+")
_BRATS20_VALIDATION = re.compile(r"BraTS20_Validation_\d+")
_BRATS21_CASE = re.compile(r"BraTS2021_\d+")
_LGG_PATIENT = re.compile(r"TCGA_\w+")


def _count_brats2020(root: Path) -> dict[str, int]:
    """Labelled training cases and unlabelled validation cases."""
    return {
        "training": _count_cases(root, _BRATS20_TRAINING, (*_BRATS_MODALITIES, "seg"), ".nii"),
        "validation": _count_cases(root, _BRATS20_VALIDATION, _BRATS_MODALITIES, ".nii"),
    }


def _fix_up_brats2020(root: Path) -> None:
    """Kaggle's copy names case 355's label ``W39_1998.09.19_Segm.nii``; give it the standard name."""
    for case_dir in _case_dirs(root, _BRATS20_TRAINING):
        seg = case_dir / f"{case_dir.name}_seg.nii"
        strays = sorted(case_dir.glob("*_Segm.nii"))
        if not seg.exists() and len(strays) == 1:
            logger.info("%s: renaming the label %s to %s", case_dir.name, strays[0].name, seg.name)
            strays[0].rename(seg)


def _count_brats2021(root: Path) -> dict[str, int]:
    """Labelled cases."""
    return {"cases": _count_cases(root, _BRATS21_CASE, (*_BRATS_MODALITIES, "seg"), ".nii.gz")}


_BRATS21_TRAINING_TAR = "BraTS2021_Training_Data.tar"


def _keep_brats2021(member: str) -> bool:
    """Only the training tar: the loose ``BraTS2021_00495.tar``-style tars beside it duplicate
    cases that are in the big tar, packed without their case folder."""
    return PurePosixPath(member).name == _BRATS21_TRAINING_TAR


def _count_lgg(root: Path) -> dict[str, int]:
    """Patients and image slices; every slice must have its mask and every mask its slice."""
    patients = slices = 0
    for patient_dir in _case_dirs(root, _LGG_PATIENT):
        tifs = {p.name for p in patient_dir.iterdir() if p.suffix.lower() in (".tif", ".tiff")}
        masks = {n for n in tifs if Path(n).stem.endswith("_mask")}
        images = tifs - masks
        for image in sorted(images):
            if f"{Path(image).stem}_mask.tif" not in masks:
                raise BtsInputError(patient_dir / image, f"slice has no mask ({Path(image).stem}_mask.tif)")
        for mask in sorted(masks):
            if f"{Path(mask).stem[: -len('_mask')]}.tif" not in images:
                raise BtsInputError(patient_dir / mask, "mask has no image slice beside it")
        patients += 1
        slices += len(images)
    return {"patients": patients, "slices": slices}


def _keep_lgg(member: str) -> bool:
    """Drop the nested duplicate copy ``lgg-mri-segmentation/kaggle_3m/...``."""
    return not member.replace("\\", "/").startswith("lgg-mri-segmentation/")


# The datasets bts-download knows, by name; the counts are those of the published Kaggle copies.
DATASETS: dict[str, DatasetSpec] = {
    "brats2020": DatasetSpec(
        name="brats2020",
        handle="awsaf49/brats20-dataset-training-validation",
        expected={"training": 369, "validation": 125},
        count=_count_brats2020,
        fix_up=_fix_up_brats2020,
        description="BraTS 2020: 369 labelled training + 125 unlabelled validation cases (.nii)",
    ),
    "brats2021": DatasetSpec(
        name="brats2021",
        handle="dschettler8845/brats-2021-task1",
        expected={"cases": 1251},
        count=_count_brats2021,
        keep=_keep_brats2021,
        unpack=(_BRATS21_TRAINING_TAR,),
        description="BraTS 2021 task 1: 1251 labelled cases (.nii.gz)",
    ),
    "lgg": DatasetSpec(
        name="lgg",
        handle="mateuszbuda/lgg-mri-segmentation",
        expected={"patients": 110, "slices": 3929},
        count=_count_lgg,
        keep=_keep_lgg,
        description="LGG MRI segmentation (kaggle_3m): 110 patients, 3929 TIFF slices with masks",
    ),
}


def get_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of a dataset name.

    Raises:
        BtsInputError: for an unknown name.
    """
    try:
        return DATASETS[name.lower()]
    except KeyError:
        raise BtsInputError(None, f"unknown dataset {name!r}: choose from {', '.join(DATASETS)}") from None


# -- credentials ------------------------------------------------------------------------------


def find_kaggle_credentials() -> str:
    """Where the Kaggle client will find credentials, looked up the way kagglehub does.

    In order: ``KAGGLE_API_TOKEN`` (a token or a file holding one), ``~/.kaggle/access_token``,
    ``KAGGLE_USERNAME`` + ``KAGGLE_KEY``, ``kaggle.json`` in ``$KAGGLE_CONFIG_DIR`` or ``~/.kaggle``.

    Returns:
        A description of the source, for messages (never the secret).

    Raises:
        BtsInputError: none found (the message lists the steps to create them) or a malformed kaggle.json.
    """
    token = os.environ.get("KAGGLE_API_TOKEN", "").strip()
    if token:
        try:
            token_file = Path(token) if Path(token).is_file() else None
        except OSError:  # a token too long to be a file name
            token_file = None
        if token_file is None:
            return "the KAGGLE_API_TOKEN environment variable"
        if token_file.read_text().strip():
            return f"the file named by KAGGLE_API_TOKEN ({token_file})"
    for name in ("access_token", "access_token.txt"):
        path = Path(os.path.expanduser(f"~/.kaggle/{name}"))
        if path.is_file() and path.read_text().strip():
            _warn_if_readable_by_others(path)
            return str(path)
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return "the KAGGLE_USERNAME and KAGGLE_KEY environment variables"
    config_dir = os.environ.get("KAGGLE_CONFIG_DIR") or os.path.expanduser("~/.kaggle")
    path = Path(config_dir) / "kaggle.json"
    if path.is_file():
        try:
            creds = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            problem = f"not valid JSON ({exc}); download a new kaggle.json from {KAGGLE_SETTINGS_URL}"
            raise BtsInputError(path, problem) from exc
        missing = [k for k in ("username", "key") if not isinstance(creds, dict) or not creds.get(k)]
        if missing:
            raise BtsInputError(path, f"missing {' and '.join(missing)}; download a new one from {KAGGLE_SETTINGS_URL}")
        _warn_if_readable_by_others(path)
        return str(path)
    raise BtsInputError(None, _CREDENTIALS_STEPS)


def _warn_if_readable_by_others(path: Path) -> None:
    if os.name == "posix" and path.stat().st_mode & 0o077:
        logger.warning("%s is readable by other users; make it private with: chmod 600 %s", path, path)


# -- download ---------------------------------------------------------------------------------


def _fetch_archive(spec: DatasetSpec, work: Path, source: str) -> tuple[Path, int]:
    """Download (or resume downloading) the dataset's zip bundle into ``work``.

    kagglehub's public ``dataset_download`` would also extract the bundle, with ``ZipFile.extractall``
    (which silently rewrites unsafe names instead of refusing them), into its cache: a second copy
    of up to 13 GB before our own checks can run. So this uses the same client pieces it uses
    (credentials, endpoint, resumable download with MD5 check) and keeps the archive.

    Returns:
        The archive path and the dataset version number.
    """
    try:
        import requests
        from kagglehub.clients import build_kaggle_client, download_file
        from kagglehub.exceptions import DataCorruptionError, handle_call
        from kagglehub.handle import parse_dataset_handle
        from kagglesdk.datasets.types.dataset_api_service import ApiDownloadDatasetRequest, ApiGetDatasetRequest
    except ImportError as exc:
        raise BtsInputError(
            None, f"downloading needs kagglehub>=0.4 ({exc}): pip install 'bts_monai[download]'"
        ) from exc

    h = parse_dataset_handle(spec.handle)
    archive = work / f"{h.dataset}.zip"
    try:
        with build_kaggle_client() as client:
            api = client.datasets.dataset_api_client
            version = h.version
            if version is None:
                get = ApiGetDatasetRequest()
                get.owner_slug, get.dataset_slug = h.owner, h.dataset
                version = handle_call(lambda: api.get_dataset(get), h).current_version_number
                if not version:
                    raise DownloadError(f"Kaggle reported no version for {spec.handle}")
            archive = work / f"{h.dataset}-v{version}.zip"
            for stale in work.glob("*.zip"):
                if stale != archive:  # an older version's partial download
                    stale.unlink()
            req = ApiDownloadDatasetRequest()
            req.owner_slug, req.dataset_slug, req.dataset_version_number = h.owner, h.dataset, version
            logger.info("downloading %s (Kaggle %s, version %s) to %s", spec.name, spec.handle, version, archive)
            with handle_call(lambda: api.download_dataset(req), h) as response:
                total = int(response.headers.get("Content-Length") or 0)
                have = archive.stat().st_size if archive.exists() else 0
                if total and have > total:
                    archive.unlink()
                    have = 0
                _require_space(work, total - have, f"download {spec.name}'s archive")
                download_file(response, str(archive), h)
            if total and archive.stat().st_size != total:
                raise DownloadError(
                    f"{archive}: download stopped at {archive.stat().st_size} of {total} bytes; run again to resume"
                )
    except requests.HTTPError as exc:
        raise _http_error(exc, spec, source) from exc
    except DataCorruptionError as exc:
        raise DownloadError(
            f"{archive}: the downloaded archive failed its MD5 check and was deleted; run again to download it afresh"
        ) from exc
    except requests.RequestException as exc:
        done = archive.stat().st_size if archive.exists() else 0
        raise DownloadError(
            f"connection to Kaggle lost while downloading {spec.name} ({type(exc).__name__}); "
            f"{done} bytes kept in {archive}: run the same command again to resume"
        ) from exc
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise BtsInputError(
                work, f"disk full while downloading {spec.name}; free some space and run again"
            ) from exc
        raise
    return archive, int(version)


def _http_error(exc: Any, spec: DatasetSpec, source: str) -> Exception:
    status = getattr(exc.response, "status_code", None)
    if status == 401:
        return BtsInputError(
            None,
            f"Kaggle rejected the credentials from {source} (HTTP 401 Unauthorized): they are wrong, expired or "
            f"revoked. Create a new token at {KAGGLE_SETTINGS_URL} ('API', 'Create New Token'), save it as "
            "~/.kaggle/access_token (chmod 600) or export KAGGLE_API_TOKEN, and run again.",
        )
    if status == 403:
        return BtsInputError(
            None,
            f"Kaggle refused access to {spec.url} with the credentials from {source} (HTTP 403 Forbidden): "
            "open that page signed in, accept the dataset's terms if asked, and run again.",
        )
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return DownloadError(f"Kaggle answered HTTP {status} for {spec.handle}: {first_line}")


# -- safe extraction --------------------------------------------------------------------------
# monai.apps.extractall is not enough here: it skips extraction when the output folder is not
# empty (so a half-extracted folder passes as complete), writes zip symlink entries as files
# instead of refusing them, and cannot select members, unpack a tar inside the zip without
# writing it to disk first, check free space or show progress.


def _member_path(name: str, archive: Path, where: str = "") -> PurePosixPath | None:
    """The member's relative path, or ``None`` for the archive's root entry.

    Raises:
        BtsInputError: absolute paths and ``..`` components, which would write outside the destination.
    """
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        raise _BadArchiveError(archive, f"unsafe archive: member {name!r}{where} has an absolute path")
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _BadArchiveError(archive, f"unsafe archive: member {name!r}{where} points outside the destination")
    return PurePosixPath(*parts) if parts else None


def _zip_member_type(info: zipfile.ZipInfo) -> str | None:
    """``None`` for files and folders, else what the member is (symlink, device...)."""
    ftype = stat.S_IFMT(info.external_attr >> 16)
    if ftype in (0, stat.S_IFREG, stat.S_IFDIR):
        return None
    return "a symbolic link" if ftype == stat.S_IFLNK else "a special file (device, FIFO or socket)"


def _plan_zip(spec: DatasetSpec, zf: zipfile.ZipFile, archive: Path) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Check every member of the zip, then pick those to extract."""
    plan, skipped = [], []
    for info in zf.infolist():
        rel = _member_path(info.filename, archive)
        kind = _zip_member_type(info)
        if kind is not None:
            raise _BadArchiveError(archive, f"unsafe archive: member {info.filename!r} is {kind}")
        if rel is None:
            continue
        if spec.keep(info.filename):
            plan.append((info, rel))
        elif not info.is_dir():
            skipped.append(info.filename)
    missing = set(spec.unpack) - {rel.name for _, rel in plan}
    if missing:
        raise _BadArchiveError(archive, f"expected {', '.join(sorted(missing))} in the archive; it is not there")
    if skipped:
        logger.info("leaving out %d archive members (Kaggle's duplicate copies), e.g. %s", len(skipped), skipped[0])
    return plan


def _inside(target: Path, root: Path) -> bool:
    root_real = os.path.realpath(root)
    return os.path.commonpath([root_real, os.path.realpath(target)]) == root_real


class _Progress:
    """A read-only stream that advances a progress bar as it is read."""

    def __init__(self, raw: IO[bytes], bar: tqdm) -> None:
        self._raw, self._bar = raw, bar

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self._bar.update(len(data))
        return data


def _copy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, bar: tqdm) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with zf.open(info) as src, open(target, "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
            bar.update(len(chunk))


def _unpack_tar(zf: zipfile.ZipFile, info: zipfile.ZipInfo, out: Path, archive: Path, bar: tqdm) -> None:
    """Stream a tar stored in the zip straight into ``out`` (no copy of the tar on disk)."""
    where = f" of {info.filename}"

    def only_files(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
        _member_path(member.name, archive, where)
        if not (member.isreg() or member.isdir()):
            kind = "a link" if member.issym() or member.islnk() else "a special file (device, FIFO)"
            raise _BadArchiveError(archive, f"unsafe archive: member {member.name!r}{where} is {kind}")
        # The standard "data" filter as a second guard: it also drops permissions bits and owners.
        return tarfile.data_filter(member, dest)

    with zf.open(info) as src:
        with tarfile.open(fileobj=_Progress(src, bar), mode="r|*") as tf:  # type: ignore[call-overload]
            tf.extractall(out, filter=only_files)
        while src.read(1 << 20):  # the rest (tar padding) so the zip member's CRC gets checked
            pass


def _extract(spec: DatasetSpec, archive: Path, out: Path) -> None:
    """Extract the selected members of ``archive`` into the new folder ``out``, refusing unsafe ones.

    Raises:
        BtsInputError: unsafe member, corrupt or truncated archive, not enough disk space.
    """
    if not hasattr(tarfile, "data_filter"):
        raise RuntimeError("safe tar extraction needs Python >= 3.11.4 (tarfile extraction filters)")
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise _corrupt(archive, exc) from exc
    with zf:
        plan = _plan_zip(spec, zf, archive)
        # Decompressed sizes are enforced by zipfile (and a tar's members fit in the tar), so this is a bound.
        needed = sum((info.file_size // _BLOCK + 1) * _BLOCK for info, _ in plan)
        _require_space(out.parent, needed, f"extract {spec.name}")
        out.mkdir(parents=True)
        total = sum(info.file_size for info, _ in plan)
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"extracting {spec.name}") as bar:
            for info, rel in plan:
                target = out / rel
                if not _inside(target, out):
                    raise _BadArchiveError(archive, f"unsafe archive: member {info.filename!r} resolves outside {out}")
                try:
                    if rel.name in spec.unpack:
                        _unpack_tar(zf, info, out, archive, bar)
                    elif info.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                    else:
                        _copy_member(zf, info, target, bar)
                except tarfile.FilterError as exc:
                    raise _BadArchiveError(archive, f"unsafe archive: {exc} (in {info.filename})") from exc
                except (zipfile.BadZipFile, zlib.error, EOFError, tarfile.TarError) as exc:
                    raise _corrupt(archive, exc, info.filename) from exc
                except OSError as exc:
                    if exc.errno == errno.ENOSPC:
                        raise BtsInputError(out.parent, f"disk full while extracting {spec.name}") from exc
                    raise


def _corrupt(archive: Path, exc: BaseException, member: str = "") -> _BadArchiveError:
    inner = f" (member {member})" if member else ""
    return _BadArchiveError(archive, f"corrupt or truncated archive{inner}: {type(exc).__name__}: {exc}", corrupt=True)


def _require_space(folder: Path, needed: int, what: str) -> None:
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise BtsInputError(
            folder,
            f"not enough free disk space to {what}: {_human(needed)} needed, {_human(free)} free; "
            "free some space (or choose another destination) and run again",
        )


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


# -- checks -----------------------------------------------------------------------------------


def _check_counts(root: Path, counts: Mapping[str, int], expected: Mapping[str, int], spec: DatasetSpec) -> None:
    wrong = [f"{v} {k} expected, {counts.get(k)} found" for k, v in expected.items() if counts.get(k) != v]
    if wrong:
        raise BtsInputError(
            root,
            f"{spec.name} is not the expected dataset: {'; '.join(wrong)} (Kaggle {spec.handle}). If the Kaggle "
            "copy changed on purpose, pass the new counts as expected=...",
        )


def _check_readable(root: Path) -> int:
    """Open every NIfTI (header) and TIFF (first page) under ``root``; returns how many.

    Raises:
        BtsInputError: naming the first file that does not open.
    """
    import nibabel as nib
    import tifffile

    files = sorted(
        Path(d) / f
        for d, _, names in os.walk(root)
        for f in names
        if f.lower().endswith((".nii", ".nii.gz", ".tif", ".tiff"))
    )
    for path in tqdm(files, desc="checking files", unit="file"):
        is_tiff = path.name.lower().endswith((".tif", ".tiff"))
        try:
            if is_tiff:
                with tifffile.TiffFile(path) as tif:
                    _ = tif.pages[0].shape
            else:
                _ = nib.load(path).header
        except Exception as exc:  # both readers raise many types for corrupt files
            kind = "TIFF" if is_tiff else "NIfTI"
            raise BtsInputError(path, f"cannot be read as {kind} ({type(exc).__name__}: {exc})") from exc
    return len(files)


# -- bookkeeping ------------------------------------------------------------------------------


def _read_marker(root: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((root / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def _marker_matches(marker: Mapping[str, Any], spec: DatasetSpec, expected: Mapping[str, int]) -> bool:
    counts = marker.get("counts") or {}
    return marker.get("handle") == spec.handle and all(counts.get(k) == v for k, v in expected.items())


def _write_json_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    write_text(path, json.dumps(payload, indent=1))


def _write_datalist(folder: Path, spec: DatasetSpec, final_root: Path) -> None:
    from bts_monai.data.discovery import make_datalist
    from bts_monai.data.discovery import write_datalist as write

    datalist = make_datalist(folder, dataset=spec.name)
    # Paths in the file are relative to it, so they stay valid when ``folder`` is renamed to ``final_root``.
    datalist["root"] = str(final_root.resolve())
    write(datalist, folder / DATALIST_NAME)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise runs on the same dataset folder (e.g. one per node sharing a file system)."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; runs are not serialised
        yield
        return
    while True:
        fh = open(path, "a")  # noqa: SIM115 - held open for the lock's lifetime
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("another download of the same dataset is running; waiting for it (%s)", path)
            fcntl.flock(fh, fcntl.LOCK_EX)
        # The holder before us removes the file when done: if ours is no longer the file at ``path``,
        # a newcomer may lock the new one, so lock that one instead.
        try:
            same = os.fstat(fh.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        fh.close()
    try:
        yield
    finally:
        # Removed while still locked, so a run leaves no lock file behind (also when it fails).
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def _rmtree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _resolve_expected(spec: DatasetSpec, expected: Mapping[str, int] | None) -> dict[str, int]:
    if expected is None:
        return dict(spec.expected)
    unknown = sorted(set(expected) - set(spec.expected))
    if unknown:
        raise BtsInputError(None, f"unknown count(s) {unknown} for {spec.name}; it has {sorted(spec.expected)}")
    return {k: int(v) for k, v in expected.items()}


def _prepare_dest(dest: Path) -> None:
    if dest.exists() and not dest.is_dir():
        raise BtsInputError(dest, "the destination is a file, not a folder")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BtsInputError(dest, f"cannot create the destination folder ({exc.strerror})") from exc
    if not os.access(dest, os.W_OK | os.X_OK):
        raise BtsInputError(dest, "the destination folder is not writable")


# -- the API ----------------------------------------------------------------------------------


def download_dataset(
    name: str,
    dest: str | os.PathLike[str],
    *,
    force: bool = False,
    expected: Mapping[str, int] | None = None,
    write_datalist: bool = True,
) -> Path:
    """Download a Kaggle dataset into ``dest/<name>``, extract it safely, fix it up and check it.

    Needs Kaggle credentials (see :func:`find_kaggle_credentials`) unless the dataset is already
    complete, in which case nothing is done and nothing is fetched.

    Args:
        name: ``"brats2020"``, ``"brats2021"`` or ``"lgg"`` (see :data:`DATASETS`).
        dest: the folder to put the dataset in (created if needed).
        force: download and extract again even if a complete copy is there (replaces it).
        expected: the counts to check, e.g. ``{"cases": 1251}``; only the keys given are checked.
            Defaults to the dataset's published counts (:attr:`DatasetSpec.expected`).
        write_datalist: also write ``datalist.json`` (see :mod:`bts_monai.data.discovery`) beside the data.

    Returns:
        The dataset root, ``dest/<name>``.

    Raises:
        BtsInputError: missing or rejected credentials, not enough disk space, an unsafe or corrupt
            archive, counts that differ from ``expected``, a file that does not open, or a
            ``dest/<name>`` that was not made by this function (move it away or pass ``force``).
        DownloadError: network or server failure; running again resumes.
    """
    spec = get_spec(name)
    want = _resolve_expected(spec, expected)
    dest = Path(dest).expanduser()
    _prepare_dest(dest)
    root = dest / spec.name
    work = dest / f".{spec.name}.download"
    old = dest / f".{spec.name}.old"
    with _locked(dest / f".{spec.name}.lock"):
        marker = _read_marker(root)
        if marker is not None and not force and _marker_matches(marker, spec, want):
            logger.info(
                "%s is complete in %s (Kaggle %s v%s): nothing to do",
                spec.name,
                root,
                spec.handle,
                marker.get("version"),
            )
            for leftover in (work, old):  # from a run stopped just after finishing
                _rmtree(leftover)
            if write_datalist and not (root / DATALIST_NAME).is_file():
                _write_datalist(root, spec, root)
            return root
        if root.exists() and marker is None and not force:
            raise BtsInputError(
                root,
                f"exists but was not made by a completed download (no {MARKER_NAME} inside); "
                "move it away, or force the download (--force) to replace it",
            )
        if marker is not None and not force:
            logger.info("%s in %s does not match %s %s: downloading again", spec.name, root, spec.handle, want)
        source = find_kaggle_credentials()
        logger.info("Kaggle credentials: %s", source)
        work.mkdir(exist_ok=True)
        if force:
            for archive in work.glob("*.zip"):
                archive.unlink()
        archive, version = _fetch_archive(spec, work, source)

        staging = work / "extracted"
        _rmtree(staging)  # a previous run's half extraction: restart it
        _rmtree(old)
        try:
            _extract(spec, archive, staging)
        except _BadArchiveError as exc:
            _rmtree(staging)
            archive.unlink(missing_ok=True)
            again = "; run again to download it afresh" if exc.corrupt else ""
            raise _BadArchiveError(archive, f"{exc.problem}; the archive was deleted{again}", exc.corrupt) from exc
        except BaseException:
            _rmtree(staging)
            raise
        try:
            spec.fix_up(staging)
            counts = spec.count(staging)
            _check_counts(staging, counts, want, spec)
            n_files = _check_readable(staging)
            if write_datalist:
                _write_datalist(staging, spec, root)
            # Last file in the folder; the folder itself only becomes ``root`` by the rename below.
            _write_json_atomic(
                staging / MARKER_NAME,
                {
                    "dataset": spec.name,
                    "handle": spec.handle,
                    "version": version,
                    "counts": counts,
                    "files_checked": n_files,
                    "archive_bytes": archive.stat().st_size,
                    "datalist": DATALIST_NAME if write_datalist else None,
                    "completed": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                },
            )
        except BaseException:
            _rmtree(staging)
            raise
        if root.exists():
            os.replace(root, old)
        os.replace(staging, root)
        _rmtree(old)
        _rmtree(work)
    logger.info("%s is ready in %s: %s", spec.name, root, ", ".join(f"{v} {k}" for k, v in counts.items()))
    return root
