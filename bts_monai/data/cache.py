"""The preprocessed-case cache: the deterministic part of the pipeline, run once per case, kept on disk.

Decoding four ``.nii.gz`` files and normalising them costs far more than everything random a
training sample needs, so — like nnU-Net and NVIDIA's BraTS pipeline — each case goes once through
:func:`~bts_monai.data.transforms.deterministic_transforms` (load, RAS, optional resampling, labels
to target, crop to the brain, normalise) and the result is stored compactly:

```
CACHE_DIR/<settings digest>/        one folder per preprocessing settings (CacheSettings.digest)
  settings.json                     the settings behind the digest, and library versions
  .locks/<case_id>.lock             while a builder works on the case: its host, pid and start time
  <case_id>/                        appears whole or not at all (built under a temporary name)
    meta.json                       source files, grids, the crop box; ``data`` names a replacement
    image.b2nd                      float16 (C, *spatial), blosc2, chunked per channel
    target.b2nd                     uint8 (*spatial): bit r = region r ("regions") or class index ("labels")
    fg.b2nd                         int64 flat indices of the voxels MONAI's positive sampling draws from
    v-<token>/                      a rebuilt case's arrays; meta.json's ``data`` points at them
```

**Builds several hosts run at once over one shared folder** (every node of a cluster job
preprocessing the same release) share the work and never delete each other's: a builder works on
a case only while it holds the case's lock file (created atomically with ``os.link``, which NFS
and Lustre honour across clients), and re-checks the case after taking it, so each case is built
once. A lock names its host (``$BTS_HOSTNAME``, else the host name) and pid and is touched every
few seconds while held. Another builder takes over a lock only when its owner is provably gone:
on the same host, a pid that no longer runs; on any host, a lock untouched for ``stale_after``
seconds (:data:`LOCK_STALE_AFTER`; compared against this host's clock, so keep clocks in sync,
as NTP does on clusters). Temporary folders name their owner the same way and are removed by the
same rule. The worst a wrongly taken lock can do is build a case twice: the writes below keep the
case whole either way.

**A case is never absent while it is replaced** (a source changed, or ``force``): the new arrays
go to ``<case_id>/v-<token>/`` and one ``os.replace`` of ``meta.json`` switches readers over;
the superseded arrays stay for :data:`SUPERSEDED_GRACE` seconds (readers that read the old
``meta.json`` a moment earlier still find them) and are removed by a later build.

**A case is rebuilt when a source file changes**, also at the same size (an uncompressed ``.nii``
has the size its shape fixes): ``meta.json`` records each source's name, size, ``st_mtime_ns``
and SHA-256. Size and modification time equal: current (one ``stat``, as make and rsync decide).
Modification time moved (a copy to scratch space, a ``touch``, or an edit): the file is hashed, and
only a different hash rebuilds; an equal one just records the new time.

Training reads it lazily: :class:`RandCropPreprocessedd` draws crop centres with MONAI's own
``RandCropByPosNegLabel`` sampling (from the stored foreground indices) and decompresses only the
chunks its patches touch; the rest of :func:`~bts_monai.data.transforms.random_transforms` runs as
the same MONAI transform objects — the flips on the stored float16/packed patches (a quarter of the
bytes to move), then :class:`DecodePreprocessedd`, then the intensity jitter. A patch from the cache
equals the patch the uncached chain cuts with the same random state, up to float16 rounding of the
image (``tests/data/test_cache.py``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blosc2
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import Dataset, MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import (
    Compose,
    Crop,
    EnsureTyped,
    MapTransform,
    RandAxisFlipd,
    RandCropByPosNegLabel,
    RandCropByPosNegLabeld,
    RandFlipd,
    Randomizable,
    RandRotate90d,
    SpatialPad,
    SpatialPadd,
    SqueezeDimd,
)
from monai.transforms.utils import map_binary_to_indices
from monai.utils import fall_back_tuple
from tqdm.auto import tqdm

from bts_monai.data.discovery import BRATS_MODALITIES, entry_item
from bts_monai.data.transforms import INTENSITY_MODES, deterministic_transforms, random_transforms
from bts_monai.errors import BtsInputError
from bts_monai.labels import get_scheme

__all__ = [
    "HOST_ENV",
    "LOCK_STALE_AFTER",
    "SUPERSEDED_GRACE",
    "CacheSettings",
    "BuildSummary",
    "PreprocessedCache",
    "PreprocessedCase",
    "PreprocessedDataset",
    "LoadPreprocessedd",
    "DecodePreprocessedd",
    "RandCropPreprocessedd",
    "build_cache",
    "decode_target",
    "host_name",
    "preprocess_case",
    "preprocessed_train_transforms",
    "preprocessed_val_transforms",
    "to_original_grid",
]

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
SETTINGS_FILE = "settings.json"
META_FILE = "meta.json"
_IMAGE, _TARGET, _FG = "image.b2nd", "target.b2nd", "fg.b2nd"
_ARRAYS = (_IMAGE, _TARGET, _FG)
_TMP_PREFIX = ".tmp-"
_LOCKS = ".locks"
_VERSION_PREFIX = "v-"

HOST_ENV = "BTS_HOSTNAME"
"""Environment variable naming this host in lock files and temporary names (default: the host
name). Set it where several machines report one name (containers on one node with their own pid
namespaces) — or, in tests, to play two hosts on one machine."""

LOCK_STALE_AFTER = 600.0
"""Seconds after which a lock (or temporary folder) untouched by its owner counts as abandoned,
whatever host it names; a live builder touches its lock every :data:`_HEARTBEAT` seconds."""

SUPERSEDED_GRACE = 600.0
"""Seconds the arrays of a replaced case are kept for readers that read the old ``meta.json``."""

_HEARTBEAT = 20.0
# Chosen by measuring on the BraTS 2018 cases (benchmarks/README.md): LZ4HC with byte shuffle keeps
# the float16 brains at 1.37x the .nii.gz size and reads a 128^3 patch about twice as fast as ZSTD
# (1.2x the size); BLOSCLZ and LZ4 are no faster and larger. Per-channel 64^3 chunks of 32^3
# blocks were the fastest layout tried for 128^3 patches.
_STORAGE: dict[str, Any] = {
    "codec": "LZ4HC",
    "clevel": 5,
    "filter": "SHUFFLE",
    "chunk": 64,
    "block": 32,
}


@dataclass(frozen=True)
class CacheSettings:
    """Everything the deterministic part depends on; its digest names the cache folder.

    Args:
        scheme: label scheme (name or alias, e.g. ``brats2018`` -> ``brats2021``).
        modalities: BraTS modalities in channel order.
        label_mode: ``regions`` (one bit per overlapping region) or ``labels`` (class indices).
        intensity: ``zscore`` or ``minmax`` (see :func:`~bts_monai.data.transforms.intensity_transform`).
        spacing: resample to this voxel size in mm, or ``None`` to keep the source grid.
    """

    scheme: str = "brats2021"
    modalities: tuple[str, ...] = BRATS_MODALITIES
    label_mode: str = "regions"
    intensity: str = "zscore"
    spacing: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "scheme", get_scheme(self.scheme).name)
        object.__setattr__(self, "modalities", tuple(self.modalities))
        if self.spacing is not None:
            object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        bad = [m for m in self.modalities if m not in BRATS_MODALITIES]
        if bad or not self.modalities:
            raise ValueError(f"modalities must be a non-empty subset of {list(BRATS_MODALITIES)}, not {bad}")
        if self.label_mode not in ("regions", "labels"):
            raise ValueError(f"label_mode must be 'regions' or 'labels', not {self.label_mode!r}")
        if self.intensity not in INTENSITY_MODES:
            raise ValueError(f"intensity must be one of {INTENSITY_MODES}, not {self.intensity!r}")
        if self.label_mode == "regions" and get_scheme(self.scheme).num_regions > 8:
            raise ValueError("more than 8 regions do not fit the cache's one-byte target")

    def as_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready values, with the cache format and storage parameters."""
        return {
            "format": CACHE_FORMAT,
            "kind": "nifti",
            "scheme": self.scheme,
            "modalities": list(self.modalities),
            "label_mode": self.label_mode,
            "intensity": self.intensity,
            "spacing": list(self.spacing) if self.spacing else None,
            "crop_foreground": True,
            "image_dtype": "float16",
            "storage": dict(_STORAGE),
        }

    @property
    def digest(self) -> str:
        """16 hex digits identifying these settings: a change of any gives a fresh cache folder."""
        text = json.dumps(self.as_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class BuildSummary:
    """What :meth:`PreprocessedCache.build` did."""

    root: Path
    built: list[str] = field(default_factory=list)
    """Cases this build preprocessed."""
    reused: list[str] = field(default_factory=list)
    """Cases already cached from the same file contents."""
    elsewhere: list[str] = field(default_factory=list)
    """Cases another builder (process or host) finished while this build ran."""


# ---- writing ---------------------------------------------------------------------------------
def _atomic_write_text(path: Path, text: str) -> None:
    from bts_monai.fileio import write_text

    write_text(path, text)


def _cparams() -> dict[str, Any]:
    return {
        "codec": getattr(blosc2.Codec, _STORAGE["codec"]),
        "clevel": _STORAGE["clevel"],
        "filters": [getattr(blosc2.Filter, _STORAGE["filter"])],
        "filters_meta": [0],
        "nthreads": 1,
    }


def _write_array(arr: np.ndarray, path: Path, channel_first: bool) -> None:
    spatial = arr.shape[1:] if channel_first else arr.shape
    chunks = [min(_STORAGE["chunk"], s) for s in spatial]
    blocks = [min(_STORAGE["block"], c) for c in chunks]
    if channel_first:
        chunks, blocks = [1, *chunks], [1, *blocks]
    blosc2.asarray(
        np.ascontiguousarray(arr), urlpath=str(path), mode="w", chunks=chunks, blocks=blocks, cparams=_cparams()
    )


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _source_fingerprint(entry: Mapping[str, Any], keys: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per input: name, size, ``st_mtime_ns`` and SHA-256 of the whole file (see the module docstring).

    The whole file is hashed, not its first and last blocks: an edited voxel in the middle of an
    uncompressed ``.nii`` changes neither. It costs one more read of files preprocessing reads
    anyway (16 ms of a BraTS 2018 case's 4 s, ``benchmarks/README.md``), and is redone later only
    for a file whose modification time moved. The ``stat`` comes before the hash, so a file changed while it is
    read shows a newer time than the one recorded, and is hashed again next time.
    """
    out = {}
    for key in keys:
        path = Path(entry[key])
        try:
            st = path.stat()
            out[key] = {"name": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": _file_sha256(path)}
        except OSError as exc:
            raise BtsInputError(path, f"cannot read ({exc.strerror or exc})") from exc
    return out


def _source_state(recorded: Any, entry: Mapping[str, Any], keys: Sequence[str], verify: bool) -> str:
    """How the recorded sources compare with the files now.

    Returns:
        ``"current"`` (names, sizes and modification times equal), ``"stale"`` (a file differs, is
        gone, or the record predates content hashes), ``"unverified"`` (only a modification time
        moved and ``verify`` is off) or ``"touched"`` (a time moved but every hash is the same).
    """
    if not isinstance(recorded, dict) or set(recorded) != set(keys):
        return "stale"
    state = "current"
    for key in keys:
        rec, path = recorded[key], Path(entry[key])
        try:
            st = path.stat()
        except OSError:
            return "stale"
        if not isinstance(rec, dict) or rec.get("name") != path.name or rec.get("size") != st.st_size:
            return "stale"  # also the [name, size] records of earlier versions: they cannot tell an edit
        if rec.get("mtime_ns") == st.st_mtime_ns:
            continue
        if not verify:
            state = "unverified"
            continue
        try:
            if _file_sha256(path) != rec.get("sha256"):
                return "stale"
        except OSError:
            return "stale"
        state = "touched"
    return state


def _input_keys(entry: Mapping[str, Any], settings: CacheSettings) -> list[str]:
    images = ["image"] if "image" in entry else list(settings.modalities)  # MSD: one 4D file
    return images + (["label"] if "label" in entry else [])


def _applied(tensor: Any, name: str) -> dict[str, Any] | None:
    for op in getattr(tensor, "applied_operations", []):
        if op.get("class") == name:
            return op
    return None


def preprocess_case(entry: Mapping[str, Any], settings: CacheSettings) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Run the deterministic transforms on one datalist entry: the arrays to store and their metadata.

    Returns:
        ``({"image": float16 (C, *spatial), "target": uint8 (*spatial), "fg": int64 (N,)}, meta)``;
        ``target`` and ``fg`` only for labelled entries.

    Raises:
        BtsInputError: a missing modality, an unreadable file or labels outside the scheme.
    """
    case_id = str(entry["case_id"])
    with_label = "label" in entry
    item = entry_item(dict(entry), settings.modalities, with_label)  # raises for a missing modality
    keys = _input_keys(entry, settings)
    fingerprint = _source_fingerprint(entry, keys)
    transform = deterministic_transforms(
        settings.scheme, "nifti", settings.intensity, settings.label_mode, settings.spacing, with_label=with_label
    )
    try:
        d = transform(item)
    except Exception as exc:  # MONAI wraps every failure in RuntimeError: find what went wrong
        first = item["image"] if isinstance(item["image"], str) else item["image"][0]
        raise _as_input_error(exc, Path(first).parent, case_id) from exc
    image = d["image"]
    for c, m in enumerate(settings.modalities):  # a NaN voxel turns its whole channel NaN: never cache that
        if not bool(torch.isfinite(image[c]).all()):
            raise BtsInputError(entry[m], "contains NaN or Inf voxels")
    crop = _applied(image, "CropForeground")
    oriented_shape = list(crop["orig_size"]) if crop else list(image.shape[1:])
    scheme = get_scheme(settings.scheme)
    meta: dict[str, Any] = {
        "case_id": case_id,
        "settings_digest": settings.digest,
        "source": fingerprint,
        "image_shape": list(image.shape),
        "image_dtype": "float16",
        "modalities": list(settings.modalities),
        "affine": np.asarray(image.affine, dtype=float).tolist(),
        "original_affine": np.asarray(image.meta["original_affine"], dtype=float).tolist(),
        "original_shape": [int(s) for s in np.asarray(image.meta["spatial_shape"]).tolist()],
        "orientation": "RAS",
        "resampled": bool(settings.spacing),
        "spacing": [float(s) for s in np.asarray(image.pixdim).tolist()],
        "oriented_shape": [int(s) for s in oriented_shape],
        "foreground_start_coord": [int(s) for s in d["foreground_start_coord"]],
        "foreground_end_coord": [int(s) for s in d["foreground_end_coord"]],
        "target": None,
    }
    arrays = {"image": image.numpy().astype(np.float16)}
    if with_label:
        label = d["label"].as_tensor() if isinstance(d["label"], MetaTensor) else d["label"]
        arrays["target"] = _pack_target(label.numpy(), settings.label_mode)
        # MONAI's own rule (channel 0 dropped when several, union of the rest), on the exact target.
        fg, _ = map_binary_to_indices(label)
        arrays["fg"] = np.asarray(fg, dtype=np.int64)
        meta["num_foreground"] = int(arrays["fg"].size)
        if settings.label_mode == "regions":
            meta["target"] = {"mode": "regions", "channels": scheme.region_names}
        else:
            meta["target"] = {"mode": "labels", "values": scheme.all_values}
    return arrays, meta


def _pack_target(label: np.ndarray, mode: str) -> np.ndarray:
    if mode == "labels":
        return np.rint(label[0]).astype(np.uint8)
    packed = np.zeros(label.shape[1:], dtype=np.uint8)
    for r in range(label.shape[0]):
        packed |= (label[r] > 0.5).astype(np.uint8) << r
    return packed


def _as_input_error(exc: BaseException, where: Path, case_id: str) -> BtsInputError:
    inner: BaseException = exc
    seen = set()
    while inner is not None and id(inner) not in seen:
        seen.add(id(inner))
        if isinstance(inner, BtsInputError):
            return inner
        nxt = inner.__cause__ or inner.__context__
        if nxt is None:
            break
        inner = nxt
    logger.debug("preprocessing %s failed", case_id, exc_info=exc)
    text = " ".join(str(inner).split())[:300]
    return BtsInputError(where, f"cannot preprocess case {case_id} ({type(inner).__name__}: {text})")


# ---- who owns what: hosts, pids, locks, temporaries ---------------------------------------------
def host_name() -> str:
    """This host's name in lock files: ``$BTS_HOSTNAME`` (:data:`HOST_ENV`), else the host name."""
    return os.environ.get(HOST_ENV) or socket.gethostname()


def _owner_tag() -> str:
    """``<pid>@<host>`` for temporary names; the host without ``-`` and ``@``, so names parse back."""
    return f"{os.getpid()}@{re.sub(r'[^A-Za-z0-9._]', '_', host_name())}"


def _temp_name(name: str) -> str:
    return f"{_TMP_PREFIX}{_owner_tag()}-{uuid.uuid4().hex[:8]}-{name}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _newest_mtime(path: Path) -> float:
    """The latest modification time of ``path`` and (a folder) of anything inside it; 0 when gone."""
    try:
        newest = path.stat().st_mtime
        if path.is_dir():
            for p in path.rglob("*"):
                newest = max(newest, p.stat().st_mtime)
    except OSError:
        return 0.0
    return newest


def _owner_gone(host: str | None, pid: int | None, touched: float, stale_after: float) -> bool:
    """The stale rule for locks and temporaries: untouched for ``stale_after`` seconds (any host),
    or, on this host only, a pid that no longer runs. A foreign pid says nothing here."""
    if time.time() - touched > stale_after:
        return True
    return host == host_name() and pid is not None and not _pid_alive(pid)


def _temporary_owner(name: str, is_dir: bool = True) -> tuple[str | None, int | None]:
    """``(host, pid)`` from ``.tmp-<pid>@<host>-...``; ``(None, None)`` when unknown (then only age counts).

    Folders named ``.tmp-<pid>-...`` come from earlier, single-host versions of the cache and count
    as this host's; files so named are :mod:`bts_monai.fileio`'s atomic writes (``settings.json``),
    which name no host.
    """
    owner = name[len(_TMP_PREFIX) :].split("-", 1)[0]
    pid_text, _, host = owner.partition("@")
    try:
        pid = int(pid_text)
    except ValueError:
        return None, None
    if not host:
        return (host_name(), pid) if is_dir else (None, None)
    return (host_name() if host == _owner_tag().partition("@")[2] else host), pid


def _remove_abandoned_temporaries(folder: Path, stale_after: float) -> None:
    """Remove the temporaries in ``folder`` whose owner is gone (see :func:`_owner_gone`)."""
    for p in folder.glob(f"{_TMP_PREFIX}*"):
        host, pid = _temporary_owner(p.name, p.is_dir())
        if _owner_gone(host, pid, _newest_mtime(p), stale_after):
            logger.info("removing %s, left by an interrupted build", p.name)
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


class _CaseLock:
    """A lock file that names its owner: ``{"host", "pid", "created", "token"}``.

    Our own rather than ``filelock``: its ``fcntl``/``flock`` locks do not reach across NFS clients
    on every mount and name no owner, and its ``SoftFileLock`` has no rule for an owner that died.
    The file is written whole under a temporary name and hard-linked into place (``os.link`` fails
    when the name exists, on local file systems and on NFS alike), so a reader never sees half a
    lock; where hard links are refused (some FUSE and SMB mounts), an exclusive create does.

    Args:
        path: the lock file.
        stale_after: see :data:`LOCK_STALE_AFTER`.
    """

    def __init__(self, path: Path, stale_after: float = LOCK_STALE_AFTER) -> None:
        self.path = path
        self.stale_after = float(stale_after)
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def acquire(self) -> bool:
        """Take the lock, breaking it first if its owner is gone; ``False`` while someone holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # free, or broken just now: create; held by another since: give up
            if self._create():
                self._beat = threading.Thread(target=self._heartbeat, name=f"lock {self.path.name}", daemon=True)
                self._beat.start()
                return True
            holder = self.holder()
            if holder is not None:  # else it was released meanwhile: try again
                if not self._stale(holder):
                    return False
                self._break(holder)
        return False

    def release(self) -> None:
        """Give the lock back (only if it is still ours)."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        holder = self.holder()
        if holder is not None and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def holder(self) -> dict[str, Any] | None:
        """The lock's contents and its last touch (``touched``); ``{}`` when unreadable; ``None`` when free."""
        try:
            touched = self.path.stat().st_mtime
            info = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {"touched": _newest_mtime(self.path)}
        return {**info, "touched": touched} if isinstance(info, dict) else {"touched": touched}

    @staticmethod
    def describe(holder: Mapping[str, Any]) -> str:
        """``host:pid`` of a holder, for messages."""
        return f"{holder.get('host', '?')}:{holder.get('pid', '?')}"

    def _create(self) -> bool:
        info = {"host": host_name(), "pid": os.getpid(), "created": time.time(), "token": self.token}
        text = json.dumps(info)
        tmp = self.path.with_name(_temp_name(self.path.name))
        tmp.write_text(text)
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def _stale(self, holder: Mapping[str, Any]) -> bool:
        pid = holder.get("pid")
        pid = pid if isinstance(pid, int) else None
        return _owner_gone(holder.get("host"), pid, holder["touched"], self.stale_after)

    def _break(self, holder: Mapping[str, Any]) -> None:
        # Checked again just before: the owner may have released it and another taken it since.
        now = self.holder()
        if now is not None and now.get("token") == holder.get("token"):
            logger.info("taking over %s from %s (gone)", self.path.name, self.describe(holder))
            self.path.unlink(missing_ok=True)

    def _heartbeat(self) -> None:
        interval = min(_HEARTBEAT, self.stale_after / 4)
        while not self._stop.wait(interval):
            try:
                os.utime(self.path)
            except OSError:
                pass


# ---- writing a case ----------------------------------------------------------------------------
def _write_arrays(folder: Path, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
    _write_array(arrays["image"], folder / _IMAGE, channel_first=True)
    if "target" in arrays:
        _write_array(arrays["target"], folder / _TARGET, channel_first=False)
        fg = arrays["fg"]
        blosc2.asarray(fg, urlpath=str(folder / _FG), mode="w", chunks=(max(fg.size, 1),), cparams=_cparams())
    (folder / META_FILE).write_text(json.dumps(meta, indent=1))  # last: its presence marks a full case


def _write_case(root: Path, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
    """Write one case under a temporary name, then put it in place without a moment's gap.

    A new case is the temporary folder renamed (whole or not at all). A cached case is replaced by
    moving the new arrays into ``<case>/v-<token>/`` and then replacing ``meta.json`` (one
    ``os.replace``) with one that points at them: every reader finds either version, whole.
    """
    from bts_monai.fileio import fsync_dir, write_text

    case_id = meta["case_id"]
    tmp = root / _temp_name(case_id)
    tmp.mkdir(parents=True)
    final = root / case_id
    try:
        _write_arrays(tmp, arrays, meta)
        if not final.exists():
            try:
                os.rename(tmp, final)
                fsync_dir(root)
                return
            except OSError:  # a builder that took over our lock finished first: replace theirs below
                if not (final / META_FILE).is_file():
                    raise
        version = f"{_VERSION_PREFIX}{uuid.uuid4().hex[:12]}"
        os.rename(tmp, final / version)
        write_text(final / META_FILE, json.dumps({**meta, "data": version}, indent=1))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _referenced(meta: Mapping[str, Any]) -> set[str]:
    """Names in a case folder that its ``meta.json`` uses."""
    data = meta.get("data")
    return {META_FILE, data} if data else {META_FILE, *_ARRAYS}


def _collect_case_garbage(case_dir: Path, stale_after: float, grace: float | None = None) -> None:
    """Under the case's lock: remove a case folder without a readable ``meta.json`` (no reader can use
    it), or what a replacement superseded once it and ``meta.json`` are ``grace`` seconds old."""
    if not case_dir.is_dir():
        return
    try:
        meta = json.loads((case_dir / META_FILE).read_text())
        meta_age = time.time() - (case_dir / META_FILE).stat().st_mtime
    except (OSError, ValueError):
        logger.info("removing %s: not a complete case", case_dir)
        shutil.rmtree(case_dir, ignore_errors=True)
        return
    grace = SUPERSEDED_GRACE if grace is None else grace
    keep = _referenced(meta)
    for p in case_dir.iterdir():
        if p.name in keep:
            continue
        if p.name.startswith(_TMP_PREFIX):  # a meta.json being replaced by a builder gone since
            if _owner_gone(None, None, _newest_mtime(p), stale_after):
                p.unlink(missing_ok=True)
        elif (p.name.startswith(_VERSION_PREFIX) or p.name in _ARRAYS) and min(
            meta_age, time.time() - _newest_mtime(p)
        ) > grace:
            logger.debug("removing %s, superseded", p)
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def _case_state(case_dir: Path, entry: Mapping[str, Any], settings: CacheSettings, verify: bool) -> str:
    """``"missing"``, or :func:`_source_state`'s answer for the cached case (``"stale"`` for other settings)."""
    try:
        meta = json.loads((case_dir / META_FILE).read_text())
    except (OSError, ValueError):
        return "missing"
    if meta.get("settings_digest") != settings.digest:
        return "stale"
    return _source_state(meta.get("source"), entry, _input_keys(entry, settings), verify)


def _build_one(
    entry: dict[str, Any],
    root: str,
    settings: CacheSettings,
    force: bool = False,
    stale_after: float = LOCK_STALE_AFTER,
) -> tuple[str, str, str | None, str | None]:
    """Process-pool worker, under the case's lock: ``(case_id, outcome, error path, error problem)``.

    Outcomes: ``built``; ``current`` (another builder made it since the caller looked); ``refreshed``
    (only modification times moved: recorded anew); ``busy`` (someone holds the lock; the problem
    slot names them); ``error``. The error travels as text (BtsInputError does not unpickle).
    """
    torch.set_num_threads(1)
    case_id = str(entry["case_id"])
    case_dir = Path(root) / case_id
    lock = _CaseLock(Path(root) / _LOCKS / f"{case_id}.lock", stale_after)
    if not lock.acquire():
        holder = lock.holder() or {}
        return case_id, "busy", None, _CaseLock.describe(holder)
    try:
        state = "missing" if force else _case_state(case_dir, entry, settings, verify=True)
        if state == "current":
            return case_id, "current", None, None
        if state == "touched":
            from bts_monai.fileio import write_text

            meta = json.loads((case_dir / META_FILE).read_text())
            meta["source"] = _source_fingerprint(entry, _input_keys(entry, settings))
            write_text(case_dir / META_FILE, json.dumps(meta, indent=1))
            return case_id, "refreshed", None, None
        _collect_case_garbage(case_dir, stale_after)
        arrays, meta = preprocess_case(entry, settings)
        _write_case(Path(root), arrays, meta)
    except BtsInputError as exc:
        return case_id, "error", exc.path, exc.problem
    finally:
        lock.release()
    return case_id, "built", None, None


# ---- the cache -------------------------------------------------------------------------------
class PreprocessedCache:
    """The cached cases of one settings digest, under ``cache_dir/<digest>``.

    Args:
        cache_dir: the cache folder (several settings can share it: each has its own subfolder).
        settings: the preprocessing settings.
    """

    def __init__(self, cache_dir: str | os.PathLike[str], settings: CacheSettings | None = None) -> None:
        self.settings = settings or CacheSettings()
        self.cache_dir = Path(cache_dir)
        self.root = self.cache_dir / self.settings.digest

    def case_dir(self, case_id: str) -> Path:
        """Folder of one cached case."""
        return self.root / case_id

    def case_ids(self) -> list[str]:
        """Ids of the complete cases on disk, sorted."""
        if not self.root.is_dir():
            return []
        # Hidden names are temporaries and locks (a case id never starts with a dot).
        return sorted(p.name for p in self.root.iterdir() if not p.name.startswith(".") and (p / META_FILE).is_file())

    def meta(self, case_id: str) -> dict[str, Any]:
        """The metadata of one cached case (a copy)."""
        return copy.deepcopy(_read_meta(self.case_dir(case_id)))

    def is_current(self, entry: Mapping[str, Any]) -> bool:
        """Whether ``entry``'s case is cached with these settings from the same file contents
        (a file whose modification time moved is hashed; see the module docstring)."""
        return _case_state(self.case_dir(str(entry["case_id"])), entry, self.settings, verify=True) in (
            "current",
            "touched",
        )

    def disk_bytes(self) -> int:
        """Bytes on disk of every cached case."""
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file()) if self.root.is_dir() else 0

    def build(
        self,
        entries: Iterable[Mapping[str, Any]],
        workers: int = 1,
        progress: bool = True,
        force: bool = False,
        stale_after: float = LOCK_STALE_AFTER,
        poll: float = 0.5,
    ) -> BuildSummary:
        """Preprocess every entry not yet cached (or cached from other files), in parallel.

        Idempotent: current cases are skipped; a crash leaves only temporary folders, removed
        by the next build. Safe to run at once from several processes and hosts over one folder:
        they share the cases (each built once) and each returns when every entry is cached; a case
        another builder holds is waited for (see the module docstring).

        Args:
            entries: BraTS datalist entries (``case_id``, one path per modality, ``label`` if labelled).
            workers: processes; 0 or 1 preprocesses in this process.
            progress: show a progress bar.
            force: rebuild current cases too (not those another builder finishes while this one waits).
            stale_after: seconds after which another builder's untouched lock counts as abandoned.
            poll: seconds between looks at cases another builder holds.

        Raises:
            BtsInputError: an LGG entry, a duplicate case id, or a case that cannot be preprocessed.
        """
        entries = [dict(e) for e in entries]
        seen: set[str] = set()
        for e in entries:
            cid = str(e.get("case_id", ""))
            if "slices" in e:
                raise BtsInputError(None, f"{cid}: LGG slices are small TIFFs; the cache is for BraTS volumes")
            if not cid or cid.startswith(".") or os.sep in cid or cid in seen:
                raise BtsInputError(e.get("label"), f"bad or duplicate case id {cid!r}")
            seen.add(cid)
        self.root.mkdir(parents=True, exist_ok=True)
        self._write_settings()
        _remove_abandoned_temporaries(self.root, stale_after)
        if (self.root / _LOCKS).is_dir():
            _remove_abandoned_temporaries(self.root / _LOCKS, stale_after)
        summary = BuildSummary(self.root)
        todo = []
        for e in entries:
            # One stat per file here; hashing, if a time moved, happens in the workers under the lock.
            if not force and _case_state(self.case_dir(str(e["case_id"])), e, self.settings, verify=False) == "current":
                summary.reused.append(str(e["case_id"]))
            else:
                todo.append(e)
        if not todo:
            logger.info("all %d cases already preprocessed in %s", len(entries), self.root)
            self._collect_superseded(summary.reused, stale_after)
            return summary
        logger.info("preprocessing %d cases into %s (%d already there)", len(todo), self.root, len(summary.reused))
        bar = tqdm(total=len(todo), desc="preprocessing", unit="case", disable=not progress)
        pool = ProcessPoolExecutor(max_workers=min(workers, len(todo))) if workers > 1 else None
        waited: set[str] = set()
        try:
            pending = [(e, force) for e in todo]
            while pending:
                busy = []
                for e, result in self._run(pool, pending, stale_after):
                    case_id, outcome, path, problem = result
                    if outcome == "error":
                        raise BtsInputError(path, str(problem))
                    if outcome == "busy":
                        if case_id not in waited:
                            logger.info("%s is being built by %s: waiting for it", case_id, problem)
                        waited.add(case_id)
                        busy.append((e, False))
                        continue
                    {"built": summary.built, "current": summary.elsewhere, "refreshed": summary.reused}[
                        outcome
                    ].append(case_id)
                    bar.update()
                pending = busy
                if pending:
                    time.sleep(poll)
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
            bar.close()
        for names in (summary.built, summary.reused, summary.elsewhere):
            names.sort()
        self._collect_superseded([str(e["case_id"]) for e in entries], stale_after)
        return summary

    def _collect_superseded(self, case_ids: Sequence[str], stale_after: float) -> None:
        """Remove what replacements superseded (see :func:`_collect_case_garbage`) in cases no one holds."""
        for case_id in case_ids:
            case_dir = self.case_dir(case_id)
            try:
                meta = _read_meta(case_dir)
                extra = set(os.listdir(case_dir)) - _referenced(meta) if meta.get("data") else set()
            except (BtsInputError, OSError):
                continue
            if not extra:
                continue
            lock = _CaseLock(self.root / _LOCKS / f"{case_id}.lock", stale_after)
            if lock.acquire():
                try:
                    _collect_case_garbage(case_dir, stale_after)
                finally:
                    lock.release()

    def _run(
        self, pool: ProcessPoolExecutor | None, pending: list[tuple[dict[str, Any], bool]], stale_after: float
    ) -> Iterator[tuple[dict[str, Any], tuple[str, str, str | None, str | None]]]:
        """``(entry, result)`` of :func:`_build_one` for each ``(entry, force)``, as they finish."""
        if pool is None:
            for e, forced in pending:
                yield e, _build_one(e, str(self.root), self.settings, forced, stale_after)
            return
        root = str(self.root)
        futures = {pool.submit(_build_one, e, root, self.settings, forced, stale_after): e for e, forced in pending}
        for f in as_completed(futures):
            yield futures[f], f.result()

    def _write_settings(self) -> None:
        path = self.root / SETTINGS_FILE
        if path.exists():
            return
        import monai

        info = {
            "digest": self.settings.digest,
            "settings": self.settings.as_dict(),
            "versions": {"monai": monai.__version__, "torch": torch.__version__, "blosc2": blosc2.__version__},
        }
        _atomic_write_text(path, json.dumps(info, indent=1))


def build_cache(
    entries: Iterable[Mapping[str, Any]],
    cache_dir: str | os.PathLike[str],
    settings: CacheSettings | None = None,
    workers: int = 1,
    progress: bool = True,
    force: bool = False,
) -> PreprocessedCache:
    """Preprocess ``entries`` into ``cache_dir`` (see :meth:`PreprocessedCache.build`) and return the cache."""
    cache = PreprocessedCache(cache_dir, settings)
    cache.build(entries, workers=workers, progress=progress, force=force)
    return cache


# ---- reading ---------------------------------------------------------------------------------
_META_CACHE: OrderedDict[str, tuple[tuple[int, ...], dict[str, Any]]] = OrderedDict()
_META_CACHE_SIZE = 4096  # cases; a meta.json is about 2 kB parsed
_META_LOCK = threading.Lock()


def _load_meta(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _read_meta(case_dir: Path) -> dict[str, Any]:
    """A case's ``meta.json``, read once per process while it is unchanged (shared: do not modify).

    Every patch of a case needs it (its grid, its packing); the ``stat`` that revalidates it costs
    far less than reading and parsing, and a replaced case (a new ``meta.json``: a new inode and
    time) is read afresh.
    """
    path = case_dir / META_FILE
    try:
        st = path.stat()
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with _META_LOCK:
            hit = _META_CACHE.get(str(path))
            if hit is not None and hit[0] == key:
                _META_CACHE.move_to_end(str(path))
                return hit[1]
        meta = _load_meta(path)
    except (OSError, ValueError) as exc:
        raise BtsInputError(case_dir, "not a complete preprocessed case (run bts-preprocess again)") from exc
    with _META_LOCK:
        _META_CACHE[str(path)] = (key, meta)
        while len(_META_CACHE) > _META_CACHE_SIZE:
            _META_CACHE.popitem(last=False)
    return meta


def _data_dir(case_dir: Path, meta: Mapping[str, Any]) -> Path:
    """Where a case's arrays are: its folder, or the ``v-<token>/`` of a replacement."""
    data = meta.get("data")
    if not data:
        return case_dir
    if not str(data).startswith(_VERSION_PREFIX) or "/" in str(data) or os.sep in str(data):
        raise BtsInputError(case_dir / META_FILE, f"names a data folder {data!r} outside the case")
    return case_dir / str(data)


def decode_target(packed: torch.Tensor, spec: Mapping[str, Any]) -> torch.Tensor:
    """Packed target ``(1, *spatial)`` uint8 -> float32 region masks ``(R, ...)`` or class indices ``(1, ...)``.

    Args:
        packed: as stored (bit ``r`` = region ``r``, or the class index).
        spec: the case's ``meta["target"]``.
    """
    if spec["mode"] == "labels":
        return packed.to(torch.float32)
    shifts = torch.arange(len(spec["channels"]), dtype=torch.uint8).view(-1, *([1] * (packed.ndim - 1)))
    return ((packed >> shifts) & 1).to(torch.float32)


def _open(path: Path) -> Any:
    # Data-loader workers are the parallelism: one decompression thread each, not one per core.
    dparams = {"nthreads": 1} if torch.utils.data.get_worker_info() is not None else None
    return blosc2.open(str(path), mode="r", **({"dparams": dparams} if dparams else {}))


class PreprocessedCase:
    """Lazy handles on one cached case: nothing is decompressed until sliced.

    Args:
        case_dir: the case's folder in the cache.
    """

    def __init__(self, case_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(case_dir)
        self.meta = _read_meta(self.dir)
        self.data_dir = _data_dir(self.dir, self.meta)
        self.image = _open(self.data_dir / _IMAGE)
        self.target = _open(self.data_dir / _TARGET) if self.meta["target"] else None

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Spatial shape of the cached (cropped) grid."""
        return tuple(self.meta["image_shape"][1:])

    def foreground_indices(self) -> np.ndarray:
        """Flat indices (cached grid, C order) of the voxels positive crops are centred on."""
        if self.target is None:
            raise BtsInputError(self.dir, "case has no label: it cannot give training crops")
        return np.asarray(_open(self.data_dir / _FG)[:], dtype=np.int64)

    def read_image(self, box: Sequence[slice] | None = None) -> np.ndarray:
        """float16 ``(C, *box)``; the whole case when ``box`` is ``None``."""
        return self.image[(slice(None), *box)] if box is not None else self.image[:]

    def read_target(self, box: Sequence[slice] | None = None) -> np.ndarray:
        """The packed uint8 target ``(1, *box)``; the whole case when ``box`` is ``None``."""
        if self.target is None:
            raise BtsInputError(self.dir, "case has no label")
        return (self.target[tuple(box)] if box is not None else self.target[:])[None]

    def box_affine(self, start: Sequence[int]) -> torch.Tensor:
        """Affine of a sub-grid starting at voxel ``start`` of the cached grid."""
        affine = torch.as_tensor(self.meta["affine"], dtype=torch.float64)
        shift = torch.eye(4, dtype=torch.float64)
        shift[: len(start), 3] = torch.as_tensor([float(s) for s in start], dtype=torch.float64)
        return affine @ shift


class _Complement:
    """Sorted flat indices of ``range(n)`` not in ``excluded`` (sorted), without materialising them.

    ``len`` and integer indexing are all MONAI's centre sampling needs; the k-th kept index is
    ``k + #{i : excluded[i] - i <= k}``.
    """

    def __init__(self, excluded: np.ndarray, n: int) -> None:
        self._shifted = np.asarray(excluded, dtype=np.int64) - np.arange(len(excluded), dtype=np.int64)
        self._len = int(n) - len(excluded)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, k: int) -> int:
        k = int(k)
        if not 0 <= k < self._len:
            raise IndexError(k)
        return k + int(np.searchsorted(self._shifted, k, side="right"))


def _as_output(data: torch.Tensor, case: PreprocessedCase, start: Sequence[int], extra: dict[str, Any]) -> Any:
    if not get_track_meta():
        return data
    meta = {"filename_or_obj": str(case.dir), "case_id": case.meta["case_id"], **extra}
    return MetaTensor(data, affine=case.box_affine(start), meta=meta)


class LoadPreprocessedd(MapTransform):
    """A whole cached case -> ``image`` float16 ``(C, ...)`` and ``label`` packed uint8 ``(1, ...)``.

    Follow with :class:`DecodePreprocessedd` (values) — after any flips, which are cheaper on the
    stored types. ``foreground_start_coord``/``foreground_end_coord`` are set as ``CropForegroundd``
    sets them.

    Args:
        keys: output keys of the image and the label (left out for unlabelled cases).
        case_key: key holding the case's folder in the cache.
    """

    def __init__(self, keys: KeysCollection = ("image", "label"), case_key: str = "case") -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.case_key = case_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        case = PreprocessedCase(d[self.case_key])
        image_key, *rest = list(self.keys)
        origin = [0] * len(case.spatial_shape)
        d[image_key] = _as_output(torch.from_numpy(case.read_image()), case, origin, {})
        if rest and case.target is not None:
            d[rest[0]] = _as_output(torch.from_numpy(case.read_target()), case, origin, {})
        d["foreground_start_coord"] = np.asarray(case.meta["foreground_start_coord"])
        d["foreground_end_coord"] = np.asarray(case.meta["foreground_end_coord"])
        return d


class DecodePreprocessedd(MapTransform):
    """Stored types -> training types: image float16 -> float32, packed label -> float32 target.

    Args:
        keys: keys of the image and the label.
        case_key: key holding the case's folder (its ``meta.json`` says how the label is packed).
    """

    def __init__(self, keys: KeysCollection = ("image", "label"), case_key: str = "case") -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.case_key = case_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image_key, *rest = list(self.keys)
        d[image_key] = d[image_key].to(torch.float32)
        if rest and rest[0] in d:
            spec = _read_meta(Path(d[self.case_key]))["target"]
            label = d[rest[0]]
            decoded = decode_target(label.as_tensor() if isinstance(label, MetaTensor) else label, spec)
            if isinstance(label, MetaTensor):
                decoded = MetaTensor(decoded, meta=label.meta, applied_operations=label.applied_operations)
            d[rest[0]] = decoded
        return d


class RandCropPreprocessedd(Randomizable, MapTransform):
    """``SpatialPadd`` + ``RandCropByPosNegLabeld`` on a cached case, decompressing only the patches.

    Crop centres come from MONAI's ``RandCropByPosNegLabel.randomize`` fed with the stored
    foreground indices (shifted into the padded grid) and their lazy complement, so the same
    random state picks the same patches as the uncached chain. Parts of a patch in the padding are
    zero, as ``SpatialPadd`` makes them. Patches keep the stored types (float16 image, packed
    uint8 label): follow with :class:`DecodePreprocessedd`.

    Args:
        spatial_size: patch size (``roi + [1]`` for 2D patches from volumes).
        pos, neg, num_samples, allow_smaller: as in ``RandCropByPosNegLabeld``.
        keys: output keys of the image and the label patches.
        case_key: key holding the case's folder in the cache.
    """

    def __init__(
        self,
        spatial_size: Sequence[int],
        pos: float = 1.0,
        neg: float = 1.0,
        num_samples: int = 1,
        allow_smaller: bool = False,
        keys: KeysCollection = ("image", "label"),
        case_key: str = "case",
    ) -> None:
        MapTransform.__init__(self, keys)
        self.case_key = case_key
        self.padder = SpatialPad(spatial_size)
        self.cropper = RandCropByPosNegLabel(
            spatial_size, pos=pos, neg=neg, num_samples=num_samples, allow_smaller=allow_smaller
        )

    @classmethod
    def from_monai(
        cls, pad: SpatialPadd, crop: RandCropByPosNegLabeld, case_key: str = "case"
    ) -> RandCropPreprocessedd:
        """The same padding and sampling as a configured ``SpatialPadd`` + ``RandCropByPosNegLabeld``."""
        if crop.image_key is not None or crop.fg_indices_key is not None:
            raise ValueError("only label-based sampling (no image_key, no precomputed indices) reads from the cache")
        out = cls([1], keys=(list(crop.keys)[0], crop.label_key), case_key=case_key)
        out.padder = copy.deepcopy(pad.padder)
        out.cropper = copy.deepcopy(crop.cropper)
        return out

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandCropPreprocessedd:
        """Seed this transform and its cropper alike, as ``RandCropByPosNegLabeld`` does."""
        super().set_random_state(seed, state)
        self.cropper.set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        """Centres are drawn in ``__call__``, from the case being read."""

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict[Hashable, Any]]:
        d = dict(data)
        case = PreprocessedCase(d[self.case_key])
        shape = case.spatial_shape
        pad = [(int(lo), int(hi)) for lo, hi in self.padder.compute_pad_width(shape)[1:]]
        padded = tuple(s + lo + hi for s, (lo, hi) in zip(shape, pad))
        fg = case.foreground_indices()
        if padded != shape and fg.size:
            coords = np.unravel_index(fg, shape)
            fg = np.ravel_multi_index(tuple(c + lo for c, (lo, _) in zip(coords, pad)), padded)
        # randomize() only needs the label's spatial shape: a broadcast view allocates nothing.
        shape_only = np.broadcast_to(np.zeros((), dtype=np.uint8), (1, *padded))
        bg = _Complement(fg, int(np.prod(padded)))
        self.cropper.randomize(label=shape_only, fg_indices=fg, bg_indices=bg)  # type: ignore[arg-type]
        roi = fall_back_tuple(self.cropper.spatial_size, default=padded)
        image_key, label_key = list(self.keys)[:2]
        out = []
        for i, center in enumerate(self.cropper.centers or ()):
            slices = Crop.compute_slices(roi_center=center, roi_size=roi)
            start = [s.start - lo for s, (lo, _) in zip(slices, pad)]
            src = tuple(slice(max(a, 0), min(a + r, n)) for a, r, n in zip(start, roi, shape))
            dst = tuple(slice(s.start - a, s.stop - a) for s, a in zip(src, start))
            extra = {"patch_index": i, "crop_center": list(center)}
            sample = {k: copy.deepcopy(v) for k, v in d.items() if k not in (image_key, label_key)}
            sample[image_key] = _as_output(_place(case.read_image(src), dst, roi), case, start, extra)
            sample[label_key] = _as_output(_place(case.read_target(src), dst, roi), case, start, extra)
            out.append(sample)
        return out


def _place(part: np.ndarray, dst: tuple[slice, ...], roi: Sequence[int]) -> torch.Tensor:
    """``part`` (channels, then space) at ``dst`` inside a zero patch of spatial size ``roi``."""
    src = torch.from_numpy(np.ascontiguousarray(part))
    if tuple(src.shape[1:]) == tuple(roi):
        return src
    out = torch.zeros((src.shape[0], *roi), dtype=src.dtype)
    out[(slice(None), *dst)] = src
    return out


class PreprocessedDataset(Dataset):
    """One item per cached case, ``{"case": <folder>, "case_id": ...}``, through ``transform``.

    Holds folder names only: arrays are opened and sliced when an item is drawn, so memory does
    not grow with the number of cases.

    Args:
        cache: the cache the cases are in.
        case_ids: which cases (all complete ones when ``None``).
        transform: e.g. :func:`preprocessed_train_transforms` or :func:`preprocessed_val_transforms`.
    """

    def __init__(self, cache: PreprocessedCache, case_ids: Sequence[str] | None = None, transform: Any = None) -> None:
        ids = list(case_ids) if case_ids is not None else cache.case_ids()
        missing = [c for c in ids if not (cache.case_dir(c) / META_FILE).is_file()]
        if missing:
            raise BtsInputError(cache.root, f"cases not preprocessed: {', '.join(missing[:5])}")
        super().__init__([{"case": str(cache.case_dir(c)), "case_id": c} for c in ids], transform)


# Steps that only move voxels (values untouched), so they commute with decoding.
_GEOMETRIC = (SqueezeDimd, RandFlipd, RandAxisFlipd, RandRotate90d)


def preprocessed_train_transforms(
    roi_size: Sequence[int],
    spatial_dims: int = 3,
    num_samples: int = 1,
    pos: float = 1.0,
    neg: float = 1.0,
    augment: bool = True,
    spatial_augment: bool = False,
) -> Compose:
    """:func:`~bts_monai.data.transforms.random_transforms` reading from the cache.

    Its ``SpatialPadd`` + ``RandCropByPosNegLabeld`` become :class:`RandCropPreprocessedd` with the
    same parameters; every later step is the very same transform object.
    """
    rand = random_transforms(roi_size, spatial_dims, num_samples, pos, neg, augment, spatial_augment)
    pad, crop, *rest = rand.transforms
    if not (isinstance(pad, SpatialPadd) and isinstance(crop, RandCropByPosNegLabeld)):
        raise RuntimeError("random_transforms no longer starts with SpatialPadd + RandCropByPosNegLabeld")
    # Flips move voxels without changing values: done before decoding, on the smaller stored types.
    n_geometric = 0
    while n_geometric < len(rest) and isinstance(rest[n_geometric], _GEOMETRIC):
        n_geometric += 1
    return Compose(
        [
            RandCropPreprocessedd.from_monai(pad, crop),
            *rest[:n_geometric],
            DecodePreprocessedd(keys=list(crop.keys)[:2]),
            *rest[n_geometric:],
        ]
    )


def preprocessed_val_transforms() -> Compose:
    """Whole cached cases, typed like :func:`~bts_monai.data.transforms.val_transforms`' output."""
    return Compose(
        [LoadPreprocessedd(), DecodePreprocessedd(), EnsureTyped(keys=["image", "label"], dtype=torch.float32)]
    )


def to_original_grid(array: np.ndarray | torch.Tensor, meta: Mapping[str, Any]) -> np.ndarray:
    """A channel-first array on a cached case's grid -> the source file's grid.

    Undoes the crop to the brain (zeros outside the box) and the reorientation to RAS, using
    the case's ``meta.json``.

    Raises:
        ValueError: the case was resampled (``spacing`` set): that needs MONAI's ``Invertd``.
    """
    import nibabel as nib

    if meta.get("resampled"):
        raise ValueError("the case was resampled at preprocessing; invert it with MONAI's Invertd")
    arr = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    full = np.zeros((arr.shape[0], *meta["oriented_shape"]), dtype=arr.dtype)
    box = tuple(slice(s, e) for s, e in zip(meta["foreground_start_coord"], meta["foreground_end_coord"]))
    full[(slice(None), *box)] = arr
    original = nib.orientations.io_orientation(np.asarray(meta["original_affine"]))
    ras = nib.orientations.axcodes2ornt(meta.get("orientation", "RAS"))
    back = nib.orientations.ornt_transform(ras, original)
    return np.stack([nib.orientations.apply_orientation(c, back) for c in full])
