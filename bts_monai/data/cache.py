"""The preprocessed-case cache: the deterministic part of the pipeline, run once per case, kept on disk.

Decoding four ``.nii.gz`` files and normalising them costs far more than everything random a
training sample needs, so — like nnU-Net and NVIDIA's BraTS pipeline — each case goes once through
:func:`~bts_monai.data.transforms.deterministic_transforms` (load, RAS, optional resampling, labels
to target, crop to the brain, normalise) and the result is stored compactly:

```
CACHE_DIR/<settings digest>/        one folder per preprocessing settings (CacheSettings.digest)
  settings.json                     the settings behind the digest, and library versions
  <case_id>/                        appears whole or not at all (built under a temporary name)
    image.b2nd                      float16 (C, *spatial), blosc2, chunked per channel
    target.b2nd                     uint8 (*spatial): bit r = region r ("regions") or class index ("labels")
    fg.b2nd                         int64 flat indices of the voxels MONAI's positive sampling draws from
    meta.json                       source files, grids and the crop box, to map back to the original
```

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
import shutil
import uuid
from collections.abc import Hashable, Iterable, Mapping, Sequence
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
_TMP_PREFIX = ".tmp-"
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
    reused: list[str] = field(default_factory=list)


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


def _source_fingerprint(entry: Mapping[str, Any], keys: Sequence[str]) -> dict[str, list[Any]]:
    """File name and size per input: a case is rebuilt when either changes.

    Modification times are left out on purpose: copying a dataset to scratch space would
    otherwise invalidate every case.
    """
    out = {}
    for key in keys:
        path = Path(entry[key])
        try:
            out[key] = [path.name, path.stat().st_size]
        except OSError as exc:
            raise BtsInputError(path, f"cannot read ({exc.strerror or exc})") from exc
    return out


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


def _write_case(root: Path, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
    """Write one case under a temporary name, then rename it into place (whole or not at all)."""
    case_id = meta["case_id"]
    tmp = root / f"{_TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{case_id}"
    tmp.mkdir(parents=True)
    try:
        _write_array(arrays["image"], tmp / _IMAGE, channel_first=True)
        if "target" in arrays:
            _write_array(arrays["target"], tmp / _TARGET, channel_first=False)
            fg = arrays["fg"]
            blosc2.asarray(fg, urlpath=str(tmp / _FG), mode="w", chunks=(max(fg.size, 1),), cparams=_cparams())
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1))  # last: its presence marks a full case
        final = root / case_id
        if final.exists():
            shutil.rmtree(final)
        try:
            os.replace(tmp, final)
        except OSError:
            # Another process finished the same case between our check and our rename: keep theirs.
            if not (final / META_FILE).exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _build_one(entry: dict[str, Any], root: str, settings: CacheSettings) -> tuple[str, str | None, str | None]:
    """Process-pool worker: ``(case_id, error path, error problem)``; the error travels as text."""
    torch.set_num_threads(1)
    try:
        arrays, meta = preprocess_case(entry, settings)
        _write_case(Path(root), arrays, meta)
    except BtsInputError as exc:  # its constructor takes two arguments, so it does not unpickle
        return str(entry["case_id"]), exc.path, exc.problem
    return str(entry["case_id"]), None, None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
        return sorted(p.name for p in self.root.iterdir() if (p / META_FILE).is_file())

    def meta(self, case_id: str) -> dict[str, Any]:
        """The metadata of one cached case."""
        return json.loads((self.case_dir(case_id) / META_FILE).read_text())

    def is_current(self, entry: Mapping[str, Any]) -> bool:
        """Whether ``entry``'s case is cached with these settings from the same files."""
        path = self.case_dir(str(entry["case_id"])) / META_FILE
        try:
            meta = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return False
        try:
            fingerprint = _source_fingerprint(entry, _input_keys(entry, self.settings))
        except BtsInputError:
            return False
        return meta.get("settings_digest") == self.settings.digest and meta.get("source") == fingerprint

    def disk_bytes(self) -> int:
        """Bytes on disk of every cached case."""
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file()) if self.root.is_dir() else 0

    def build(
        self,
        entries: Iterable[Mapping[str, Any]],
        workers: int = 1,
        progress: bool = True,
        force: bool = False,
    ) -> BuildSummary:
        """Preprocess every entry not yet cached (or cached from other files), in parallel.

        Idempotent: current cases are skipped; a crash leaves only temporary folders, removed
        by the next build.

        Args:
            entries: BraTS datalist entries (``case_id``, one path per modality, ``label`` if labelled).
            workers: processes; 0 or 1 preprocesses in this process.
            progress: show a progress bar.
            force: rebuild current cases too.

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
        self._remove_stale_temporaries()
        summary = BuildSummary(self.root)
        todo = []
        for e in entries:
            if not force and self.is_current(e):
                summary.reused.append(str(e["case_id"]))
            else:
                todo.append(e)
        if not todo:
            logger.info("all %d cases already preprocessed in %s", len(entries), self.root)
            return summary
        logger.info("preprocessing %d cases into %s (%d already there)", len(todo), self.root, len(summary.reused))
        bar = tqdm(total=len(todo), desc="preprocessing", unit="case", disable=not progress)
        try:
            if workers <= 1:
                for e in todo:
                    _raise_on_error(_build_one(e, str(self.root), self.settings))
                    summary.built.append(str(e["case_id"]))
                    bar.update()
            else:
                with ProcessPoolExecutor(max_workers=min(workers, len(todo))) as pool:
                    futures = [pool.submit(_build_one, e, str(self.root), self.settings) for e in todo]
                    try:
                        for fut in as_completed(futures):
                            result = fut.result()
                            _raise_on_error(result)
                            summary.built.append(result[0])
                            bar.update()
                    except BaseException:
                        for f in futures:
                            f.cancel()
                        raise
        finally:
            bar.close()
        summary.built.sort()
        return summary

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

    def _remove_stale_temporaries(self) -> None:
        for p in self.root.glob(f"{_TMP_PREFIX}*"):
            try:
                pid = int(p.name[len(_TMP_PREFIX) :].split("-", 1)[0])
            except ValueError:
                continue
            if not _pid_alive(pid):
                logger.info("removing %s, left by an interrupted build", p.name)
                shutil.rmtree(p, ignore_errors=True)


def _raise_on_error(result: tuple[str, str | None, str | None]) -> None:
    case_id, path, problem = result
    if problem is not None:
        raise BtsInputError(path, problem)


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
def _read_meta(case_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((case_dir / META_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BtsInputError(case_dir, "not a complete preprocessed case (run bts-preprocess again)") from exc


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
        self.image = _open(self.dir / _IMAGE)
        self.target = _open(self.dir / _TARGET) if self.meta["target"] else None

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Spatial shape of the cached (cropped) grid."""
        return tuple(self.meta["image_shape"][1:])

    def foreground_indices(self) -> np.ndarray:
        """Flat indices (cached grid, C order) of the voxels positive crops are centred on."""
        if self.target is None:
            raise BtsInputError(self.dir, "case has no label: it cannot give training crops")
        return np.asarray(_open(self.dir / _FG)[:], dtype=np.int64)

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
