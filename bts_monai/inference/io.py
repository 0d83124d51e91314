"""Inference inputs and outputs: what the user gave -> checked arrays; predictions -> files.

Input forms (:func:`expand_inputs` then :func:`resolve_input`, or :func:`explicit_case`):

* a 4D NIfTI whose last axis holds the modalities (in the model's order unless told otherwise);
* a BraTS case folder (``<case>_{flair,t1,t1ce,t2}.nii[.gz]``, or BraTS 2023's
  ``<case>-{t2f,t1n,t1c,t2w}.nii.gz``, found by their suffix, matched by meaning);
* an nnU-Net channel set (``<case>_0000.nii.gz``..``_0003``, named by its ``dataset.json``);
* explicit files, one per modality;
* an LGG ``.tif`` slice or a patient folder of slices (for 2D LGG models);
* a folder of any of the above, expanded into one case each.

:func:`load_case` reads a case and checks it (shapes and affines agree, no NaN/Inf, not all zero,
NIfTI where NIfTI is due, 3D where the model is 3D), raising :class:`~bts_monai.errors.BtsInputError`
that names the file and the problem; the header and value checks are :mod:`bts_monai.data.checks`'s,
shared with ``bts-datalist --verify``. Every output file is written atomically
(:class:`~bts_monai.fileio.StagedFiles`): a temporary name in the same folder, renamed once
everything is written, never over an input of the run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bts_monai.data import layouts
from bts_monai.data.checks import check_voxels, load_nifti
from bts_monai.data.discovery import LGG_CHANNELS
from bts_monai.errors import BtsInputError
from bts_monai.fileio import StagedFiles, atomic_path

__all__ = [
    "LGG_CHANNELS",
    "CaseInput",
    "LoadedCase",
    "ModelInputs",
    "StagedFiles",
    "atomic_path",
    "expand_inputs",
    "resolve_input",
    "explicit_case",
    "load_case",
    "read_voxels",
    "nifti_like",
    "tiff_display_affine",
    "is_nifti_path",
    "is_tiff_path",
    "strip_image_suffix",
    "warn_if_not_skull_stripped",
]

logger = logging.getLogger(__name__)


# File names are read by the one module of layouts and names; re-exported here for callers.
is_nifti_path = layouts.is_nifti_path
is_tiff_path = layouts.is_tiff_path
strip_image_suffix = layouts.strip_image_suffix


@dataclass(frozen=True)
class ModelInputs:
    """What a model reads: its channels, 2D or 3D, and whether it segments LGG TIFF slices.

    Args:
        modalities: channel names in the network's order (BraTS modalities, or :data:`LGG_CHANNELS`).
        spatial_dims: 2 (slice by slice) or 3.
        tiff: the model segments RGB TIFF slices (Kaggle LGG) rather than NIfTI volumes.
    """

    modalities: tuple[str, ...]
    spatial_dims: int = 3
    tiff: bool = False

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelInputs:
        """From a checkpoint's inference config."""
        tiff = str(config.get("dataset", "")).lower() == "lgg" or tuple(config["modalities"]) == LGG_CHANNELS
        return cls(tuple(config["modalities"]), int(config["spatial_dims"]), tiff)

    def describe(self) -> str:
        """E.g. ``a 3D model of flair, t1, t1ce, t2 NIfTI volumes``."""
        if self.tiff:
            return "a 2D model of RGB TIFF slices (pre-contrast, FLAIR, post-contrast)"
        return f"a {self.spatial_dims}D model of {', '.join(self.modalities)} NIfTI volumes"


@dataclass
class CaseInput:
    """One case, resolved to files but not read yet.

    Args:
        case_id: name used for outputs (``<case_id>_seg.nii.gz``).
        kind: ``"nifti"`` (one file per modality), ``"nifti4d"`` (one 4D file), ``"tiff"`` or
            ``"dicom"`` (a study folder, :mod:`bts_monai.inference.dicom`).
        source: what the user gave (file or folder), for messages and reports.
        files: modality -> path (``"nifti"``), ``{"image": path}`` (``"nifti4d"``) or
            ``{"study": folder}`` (``"dicom"``).
        slices: TIFF slice paths in slice order (``"tiff"``).
        channel_order: names of a 4D file's channels along its last axis (default: the model's).
        scheme: the label scheme of the dataset the case comes from (BraTS 2023 names: ``brats2023``;
            an nnU-Net set: its ``dataset.json``'s), for writing its labels; ``None`` when unknown.
        dicom_options: how to read a ``"dicom"`` study folder (:class:`~bts_monai.inference.dicom.DicomOptions`).
    """

    case_id: str
    kind: str
    source: str
    files: dict[str, str] = field(default_factory=dict)
    slices: list[str] = field(default_factory=list)
    channel_order: tuple[str, ...] | None = None
    scheme: Any = None
    dicom_options: Any = None


@dataclass
class LoadedCase:
    """A checked case in its original voxel grid.

    Args:
        case_id: see :class:`CaseInput`.
        source: see :class:`CaseInput`.
        kind: ``"nifti"`` or ``"tiff"``.
        image: ``(C, *spatial)`` float32, channels in the model's order, the file's own grid
            (TIFF: ``(3, H, W, N)``, slices along the last axis).
        affine: voxel -> world (mm) matrix; for TIFF a display affine (:func:`tiff_display_affine`).
        reference: the NIfTI image whose header the outputs copy (``None`` for TIFF).
        slices: TIFF slice paths (``[]`` for NIfTI).
        channels: channel names of ``image``.
        scheme: the input dataset's label scheme (:attr:`CaseInput.scheme`), ``None`` when unknown.
        files: every file the case was read from (outputs are never written over them).
        dicom: for a DICOM study, the :class:`~bts_monai.inference.dicom.DicomStudy` read (its
            series, reference grid and registrations: what a DICOM SEG references and the
            report records); ``None`` otherwise.
    """

    case_id: str
    source: str
    kind: str
    image: np.ndarray
    affine: np.ndarray
    reference: Any = None
    slices: list[str] = field(default_factory=list)
    channels: tuple[str, ...] = ()
    scheme: Any = None
    files: tuple[str, ...] = ()
    dicom: Any = None

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Shape of the voxel grid."""
        return tuple(self.image.shape[1:])

    @property
    def voxel_size(self) -> tuple[float, ...] | None:
        """Voxel size in mm from the header, ``None`` when unknown (TIFF slices)."""
        if self.reference is None:
            return None
        return tuple(float(z) for z in self.reference.header.get_zooms()[:3])

    def display_channel(self) -> np.ndarray:
        """The channel to draw overlays on: FLAIR when present, else the first."""
        idx = self.channels.index("flair") if "flair" in self.channels else 0
        return self.image[idx]


# ---- input discovery (which file is what: :mod:`bts_monai.data.layouts`) ------------------------
def _brats_files(folder: Path) -> tuple[dict[str, list[Path]], str | None, str | None]:
    """Modality -> files of a BraTS case folder (2017-2021 or 2023 names), its case id and layout.

    Raises:
        BtsInputError: the folder holds both years' names (two layouts).
    """
    found: dict[str, list[Path]] = {}
    seen: dict[str, tuple[str, str]] = {}  # layout -> (case, example name)
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue
        m = layouts.parse_modality_file(p.name, strict=False)
        if m and m.kind != "seg":
            found.setdefault(m.kind, []).append(p)
            seen.setdefault(m.layout, (m.case, p.name))
    if len(seen) > 1:
        raise BtsInputError(
            folder,
            f"matches two layouts: BraTS 2017-2021 names ({seen['brats'][1]}) and BraTS 2023 names "
            f"({seen['brats2023'][1]}); keep one case's files per folder",
        )
    if not seen:
        return found, None, None
    layout, (case, _) = next(iter(seen.items()))
    return found, case, layout


def _nnunet_sets(folder: Path) -> dict[str, dict[int, Path]]:
    """nnU-Net channel files (``<case>_0000.nii.gz``, ``_0001``...) by case: sets of two or more."""
    groups: dict[str, dict[int, Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file() or not is_nifti_path(p):
            continue
        n = layouts.parse_nnunet_image(p.name)
        if n is not None:
            groups.setdefault(n.case, {})[n.channel] = p
    return {case: files for case, files in groups.items() if len(files) >= 2 and 0 in files}


def _dataset_json(folder: Path) -> Path | None:
    """The MSD/nnU-Net ``dataset.json`` of images in ``folder`` (``imagesTs/``) or in its parent."""
    for where in (folder, folder.parent):
        if (where / "dataset.json").is_file():
            return where / "dataset.json"
    return None


def _user_channels(channel_order: Sequence[str] | None) -> tuple[str, ...] | None:
    """``--channel-order`` names as canonical modalities (``t2f`` -> ``flair``; unknown names kept)."""
    if not channel_order:
        return None
    return tuple(layouts.canonical_modality(c) or c for c in channel_order)


def _nnunet_case(
    case: str, files: dict[int, Path], model: ModelInputs, channel_order: Sequence[str] | None, src: str
) -> CaseInput:
    first = files[0]
    missing = [c for c in range(max(files) + 1) if c not in files]
    if missing:
        want = layouts.nnunet_image_name(case, missing[0], layouts.nifti_ending(first.name))
        raise BtsInputError(first.parent, f"nnU-Net case {case} has no {want}")
    js = _dataset_json(first.parent)
    scheme: Any = None
    if js is not None and channel_order is None:
        from bts_monai.data.discovery import dataset_json_info

        info = dataset_json_info(js)
        names, scheme = tuple(info["channels"]), info["scheme"]
        if len(names) != len(files):
            raise BtsInputError(js, f"names {len(names)} channels, but case {case} has {len(files)} channel files")
    elif channel_order is not None:
        names = _user_channels(channel_order) or ()
        if len(names) != len(files):
            raise BtsInputError(
                first, f"--channel-order names {len(names)} channels, but case {case} has {len(files)} channel files"
            )
    else:
        raise BtsInputError(
            first,
            "cannot tell which modality each nnU-Net channel file is: no dataset.json in this folder or its "
            "parent; name them with --channel-order (e.g. t1,t1ce,t2,flair for _0000.._0003)",
        )
    by_modality = {m: str(files[c]) for c, m in enumerate(names)}
    missing_mod = [m for m in model.modalities if m not in by_modality]
    if missing_mod:
        raise BtsInputError(
            first, f"case {case}'s channels are {', '.join(names)}: no {', '.join(missing_mod)}, which the model needs"
        )
    return CaseInput(case, "nifti", src, files={m: by_modality[m] for m in model.modalities}, scheme=scheme)


def _tiff_slices(folder: Path) -> list[Path]:
    return [
        p
        for p in sorted(folder.iterdir())
        if p.is_file() and is_tiff_path(p) and not layouts.is_lgg_mask(p.name) and not p.name.startswith(".")
    ]


def _is_case_folder(folder: Path) -> bool:
    return bool(_brats_files(folder)[0]) or bool(_tiff_slices(folder)) or len(_nnunet_sets(folder)) == 1


def _is_dicom_study(folder: Path) -> bool:
    """A folder given by the user that holds DICOM files (at any depth) and no other case."""
    from bts_monai.inference.dicom import holds_dicom

    return holds_dicom(folder)


def expand_inputs(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The cases the user's paths stand for: files and case folders as given, and the cases
    found at any depth inside a folder of cases.

    A folder of cases contributes each sub-folder holding BraTS modality files (2017-2021 or 2023
    names) or TIFF slices, each nnU-Net channel set (``<case>_0000.nii.gz``..., as its first file)
    and each other NIfTI file directly inside it; other files (``data.csv``, READMEs, labels and
    earlier outputs: ``*_seg.nii.gz``, ``*_prob_<REGION>.nii.gz``) are ignored. Paths that do not
    exist are kept, so the caller reports them as bad cases.

    Raises:
        BtsInputError: a folder holds no case at all.
    """
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir() or _is_case_folder(path) or _is_dicom_study(path):
            out.append(path)
            continue
        found = _cases_in(path)
        if not found:
            raise BtsInputError(
                path,
                "no case found: expected BraTS case folders (<case>_{flair,t1,t1ce,t2}.nii.gz or "
                "<case>-{t2f,t1n,t1c,t2w}.nii.gz), 4D NIfTI files, nnU-Net channel files (<case>_0000.nii.gz...), "
                "LGG patient folders of .tif slices, or DICOM files (none is DICOM Part 10 here)",
            )
        out += found
    return out


def _cases_in(folder: Path) -> list[Path]:
    found: list[Path] = []
    sets = _nnunet_sets(folder)
    in_sets = {p for files in sets.values() for p in files.values()}
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir():
            found += [p] if _is_case_folder(p) else _cases_in(p)
        elif p in in_sets:
            n = layouts.parse_nnunet_image(p.name)
            if n is not None and n.channel == 0:
                found.append(p)
        elif is_nifti_path(p) and not layouts.is_output_name(p.name):
            found.append(p)
    return found


def resolve_input(
    path: str | os.PathLike[str], model: ModelInputs, channel_order: Sequence[str] | None = None
) -> CaseInput:
    """Decide what one path is (4D NIfTI, case folder, nnU-Net channel set, TIFF slice, patient
    folder) for ``model``; BraTS 2023 names (``t2f``, ``t1n``, ``t1c``, ``t2w``) and nnU-Net's
    ``dataset.json`` channel names are matched to the model's modalities by meaning, and the
    case's own label scheme is kept (:attr:`CaseInput.scheme`) so outputs can be written in it.

    Args:
        path: a file or a case folder (see :func:`expand_inputs` for folders of cases).
        model: what the model reads.
        channel_order: names of a 4D NIfTI's (or an nnU-Net set's) channels (default: its
            ``dataset.json``'s, else the model's).

    Raises:
        BtsInputError: the path is missing or of a kind the model cannot read.
    """
    path = Path(path)
    src = str(path)
    if not path.exists():
        raise BtsInputError(path, "does not exist")
    if path.is_dir():
        slices = _tiff_slices(path)
        if slices:
            if not model.tiff:
                raise BtsInputError(path, f"holds 2D TIFF slices, but the checkpoint is {model.describe()}")
            return CaseInput(path.name, "tiff", src, slices=[str(p) for p in _sort_slices(slices)])
        brats, case_id, layout = _brats_files(path)
        sets = _nnunet_sets(path) if not brats else {}
        if not brats and len(sets) == 1:
            if model.tiff:
                raise BtsInputError(path, f"holds NIfTI volumes, but the checkpoint is {model.describe()}")
            (case, files), = sets.items()
            return _nnunet_case(case, files, model, channel_order, src)
        if not brats:
            from bts_monai.inference.dicom import holds_dicom

            if holds_dicom(path):  # a DICOM study folder (bts_monai.inference.dicom)
                # The folder is kept in files: callers may rename the source for display (bts-serve).
                return CaseInput(path.name, "dicom", src, files={"study": src})
            raise BtsInputError(
                path,
                "no BraTS modality files (<case>_flair.nii.gz, <case>-t2f.nii.gz...), TIFF slices or DICOM files here",
            )
        if model.tiff:
            raise BtsInputError(path, f"holds NIfTI volumes, but the checkpoint is {model.describe()}")
        for kind, files in brats.items():
            if len(files) > 1:
                raise BtsInputError(path, f"two {kind} files: {', '.join(f.name for f in files)}")
        assert case_id is not None and layout is not None
        missing = [m for m in model.modalities if m not in brats]
        if missing:
            want = ", ".join(layouts.modality_file_name(case_id, m, layout) for m in missing)
            raise BtsInputError(
                path, f"no {' or '.join(missing)} file (expected {want}); the model needs {', '.join(model.modalities)}"
            )
        scheme = layouts.brats_dataset(case_id, layout)[1]
        return CaseInput(case_id, "nifti", src, files={m: str(brats[m][0]) for m in model.modalities}, scheme=scheme)
    # a file
    if is_tiff_path(path) or layouts.is_other_image_path(path.name):
        if layouts.is_lgg_mask(path.name):
            raise BtsInputError(path, "is a mask (…_mask.tif), not an image slice")
        if not model.tiff:
            raise BtsInputError(path, f"is a 2D image file, but the checkpoint is {model.describe()}")
        if not is_tiff_path(path):
            raise BtsInputError(path, "not a TIFF file (LGG slices are .tif)")
        return CaseInput(strip_image_suffix(path.name), "tiff", src, slices=[src])
    if not is_nifti_path(path):
        raise BtsInputError(path, "not a NIfTI file (expected .nii or .nii.gz)")
    if model.tiff:
        raise BtsInputError(path, f"is a NIfTI volume, but the checkpoint is {model.describe()}")
    n = layouts.parse_nnunet_image(path.name)
    if n is not None:
        sets = _nnunet_sets(path.parent)
        if n.case in sets and path in sets[n.case].values():
            return _nnunet_case(n.case, sets[n.case], model, channel_order, src)
    m = layouts.parse_modality_file(path.name, strict=False)
    if len(model.modalities) == 1 and _header_ndim(path) == 3:
        case_id = m.case if m else strip_image_suffix(path.name)
        return CaseInput(case_id, "nifti", src, {model.modalities[0]: src})
    order = _user_channels(channel_order)
    scheme = None
    js = _dataset_json(path.parent) if order is None else None
    if js is not None:  # a 4D volume of an MSD task (imagesTr/, imagesTs/)
        from bts_monai.data.discovery import dataset_json_info

        info = dataset_json_info(js)
        if info["layout"] == "msd":
            order, scheme = tuple(info["channels"]), info["scheme"]
    return CaseInput(
        strip_image_suffix(path.name), "nifti4d", src, files={"image": src}, channel_order=order, scheme=scheme
    )


def _sort_slices(slices: Iterable[Path]) -> list[Path]:
    def key(p: Path) -> tuple[int, str]:
        s = layouts.parse_lgg_slice(p.name)
        return (s.number if s else 0, p.name)

    return sorted(slices, key=key)


def _header_ndim(path: Path) -> int:
    return len(_squeezed_shape(_nib_load(path).shape))


def explicit_case(
    files: dict[str, str | os.PathLike[str]], model: ModelInputs, case_id: str | None = None
) -> CaseInput:
    """A case from one file per modality (``--flair F --t1 F ...``).

    Raises:
        BtsInputError: a modality the model needs is not given, or one it does not read is.
    """
    given = {k: os.fspath(v) for k, v in files.items() if v}
    if model.tiff:
        raise BtsInputError(None, f"explicit modality files were given, but the checkpoint is {model.describe()}")
    missing = [m for m in model.modalities if m not in given]
    if missing:
        raise BtsInputError(
            None,
            f"missing modality: --{' --'.join(missing)} (the model needs {', '.join(model.modalities)})",
        )
    unused = [m for m in given if m not in model.modalities]
    if unused:
        logger.warning("ignoring %s: the model reads only %s", ", ".join(unused), ", ".join(model.modalities))
    first = Path(given[model.modalities[0]])
    m = layouts.parse_modality_file(first.name, strict=False)
    cid = case_id or (m.case if m else strip_image_suffix(first.name))
    scheme = layouts.brats_dataset(m.case, m.layout)[1] if m else None
    return CaseInput(cid, "nifti", str(first), files={k: given[k] for k in model.modalities}, scheme=scheme)


# ---- reading and checking ----------------------------------------------------------------------
def _nib_load(path: Path) -> Any:
    return load_nifti(path)


def _squeezed_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """Drop trailing singleton axes beyond the third (``(X, Y, Z, 1)`` is a 3D volume)."""
    shape = tuple(int(s) for s in shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _check_spatial(path: Path, shape: Sequence[int], model: ModelInputs) -> None:
    if len(shape) < 3 or (model.spatial_dims == 3 and min(shape[:3]) == 1):
        raise BtsInputError(path, f"is a 2D image (shape {tuple(shape)}), but the checkpoint is {model.describe()}")


def _spatial_shape(path: Path, img: Any, model: ModelInputs, modality: str) -> tuple[int, ...]:
    """The 3D grid of a one-modality file; a 2D slice counts as one slice deep for 2D models."""
    shape = _squeezed_shape(img.shape)
    if len(shape) > 3:
        raise BtsInputError(path, f"expected a 3D {modality} volume, got shape {tuple(img.shape)}".replace("  ", " "))
    if len(shape) == 2 and model.spatial_dims == 2:
        shape = (*shape, 1)
    _check_spatial(path, shape, model)
    return shape


def _igzip() -> Any:
    """isal's gzip module (``isal.igzip``), or ``None`` when isal is not installed."""
    try:
        from isal import igzip
    except ImportError:
        return None
    return igzip


def read_voxels(path: str | os.PathLike[str], img: Any) -> np.ndarray:
    """The voxels of the NIfTI file ``path`` (whose header nibabel read as ``img``), scaled as
    nibabel scales them.

    A ``.nii.gz`` is decoded by isal (``isal.igzip``) where it is installed: it read the four
    modalities of a BraTS case 2.3x faster than nibabel's zlib reader (``indexed_gzip``, which
    nibabel would use by itself, was slower than zlib). The file streams through the decoder into
    nibabel's own reader (the same array proxy ``nib.load`` makes), so neither the whole compressed
    file nor a decompressed copy of it is held beside the array. Without isal, nibabel's zlib reader.
    """
    path = Path(path)
    igzip = _igzip() if path.name.lower().endswith(".gz") else None
    if igzip is None:
        return np.asanyarray(img.dataobj)
    import nibabel as nib

    with igzip.open(path, "rb") as stream:
        holder = nib.FileHolder(filename=str(path), fileobj=stream)
        fast = type(img).from_file_map({"header": holder, "image": holder})
        return np.asanyarray(fast.dataobj)


def _read_voxels(path: Path, img: Any, out: np.ndarray, what: str = "") -> None:
    """Decode into ``out`` (float32) and check the values."""
    try:
        out[...] = read_voxels(path, img).reshape(out.shape)
    except Exception as exc:  # truncated gzip, short file
        raise BtsInputError(path, f"cannot read the voxels, the file is corrupt or truncated ({exc})") from exc
    _check_values(path, out, what)


def _check_values(path: Path | str, arr: np.ndarray, what: str = "") -> None:
    check_voxels(path, arr, what)


def load_case(case: CaseInput, model: ModelInputs) -> LoadedCase:
    """Read and check one case for ``model`` (see the module docstring for the checks).

    Raises:
        BtsInputError: naming the file and the problem.
    """
    if case.kind == "tiff":
        return _load_tiff(case, model)
    if case.kind == "dicom":
        from bts_monai.inference.dicom import loaded_case

        return loaded_case(case, model)
    loaded = _load_nifti4d(case, model) if case.kind == "nifti4d" else _load_nifti(case, model)
    warn_if_not_skull_stripped(loaded.source, loaded.image)
    return loaded


def warn_if_not_skull_stripped(source: str | os.PathLike[str], image: np.ndarray) -> bool:
    """Log one warning when ``image`` does not look like skull-stripped MRI (most of the volume's
    border non-zero, see :func:`~bts_monai.data.brain.border_nonzero_fraction`); returns
    whether it warned. The models are trained on skull-stripped, zero-background scans."""
    from bts_monai.data.brain import NOT_SKULL_STRIPPED, border_nonzero_fraction

    share = border_nonzero_fraction(image)
    if share <= NOT_SKULL_STRIPPED:
        return False
    logger.warning(
        "%s: does not look like skull-stripped MRI (%.0f%% of the voxels on the volume's border are non-zero); "
        "the model was trained on skull-stripped scans with a zero background, expect a poor segmentation",
        source,
        100 * share,
    )
    return True


def _load_nifti(case: CaseInput, model: ModelInputs) -> LoadedCase:
    images = []
    ref_path: Path | None = None
    for m in model.modalities:
        if m not in case.files:
            raise BtsInputError(case.source, f"no {m} file; the model needs {', '.join(model.modalities)}")
        path = Path(case.files[m])
        img = _nib_load(path)
        shape = _spatial_shape(path, img, model, m)
        if images:
            ref = images[0]
            ref_shape = _spatial_shape(ref_path, ref, model, "")  # type: ignore[arg-type]
            layouts.check_same_grid(path, shape, img.affine, ref_path, ref_shape, ref.affine)
        else:
            ref_path = path
        images.append(img)
    shape = _spatial_shape(ref_path, images[0], model, "")  # type: ignore[arg-type]
    data = np.empty((len(images), *shape), dtype=np.float32)
    for c, (m, img) in enumerate(zip(model.modalities, images)):
        _read_voxels(Path(case.files[m]), img, data[c])
        img.uncache()
    return LoadedCase(
        case.case_id,
        case.source,
        "nifti",
        data,
        np.asarray(images[0].affine),
        images[0],
        channels=model.modalities,
        files=tuple(case.files[m] for m in model.modalities),
    )


def _load_nifti4d(case: CaseInput, model: ModelInputs) -> LoadedCase:
    path = Path(case.files["image"])
    img = _nib_load(path)
    shape = _squeezed_shape(img.shape)
    order = tuple(case.channel_order) if case.channel_order else model.modalities
    if len(shape) == 3:
        _check_spatial(path, shape, model)
        raise BtsInputError(
            path,
            f"is a single 3D volume, but the model needs {len(model.modalities)} modalities "
            f"({', '.join(model.modalities)}): give a 4D NIfTI, the case folder, or one file per modality",
        )
    if len(shape) != 4:
        if len(shape) > 4:
            raise BtsInputError(path, f"expected a 4D NIfTI (x, y, z, modality), got shape {tuple(img.shape)}")
        _check_spatial(path, shape, model)
    _check_spatial(path, shape[:3], model)
    if shape[3] != len(order):
        raise BtsInputError(
            path,
            f"has {shape[3]} channels on its last axis, but {len(order)} are expected ({', '.join(order)}); "
            "name them with --channel-order",
        )
    missing = [m for m in model.modalities if m not in order]
    if missing:
        raise BtsInputError(path, f"channel order {', '.join(order)} lacks {', '.join(missing)} that the model needs")
    try:
        raw = read_voxels(path, img).reshape(shape)
    except Exception as exc:
        raise BtsInputError(path, f"cannot read the voxels, the file is corrupt or truncated ({exc})") from exc
    data = np.empty((len(model.modalities), *shape[:3]), dtype=np.float32)
    for c, m in enumerate(model.modalities):
        data[c] = raw[..., order.index(m)]
        _check_values(path, data[c], f"channel {order.index(m)} ({m}) ")
    del raw
    img.uncache()
    aff = np.asarray(img.affine)
    return LoadedCase(
        case.case_id, case.source, "nifti", data, aff, img, channels=model.modalities, files=(str(path),)
    )


def _load_tiff(case: CaseInput, model: ModelInputs) -> LoadedCase:
    from bts_monai.data.checks import read_tiff_stack

    if not model.tiff:
        raise BtsInputError(case.source, f"is 2D TIFF, but the checkpoint is {model.describe()}")
    data = read_tiff_stack(case.slices)
    if data.shape[0] != len(model.modalities):
        raise BtsInputError(
            case.slices[0],
            f"has {data.shape[0]} channel(s), but the model reads {len(model.modalities)} "
            f"({', '.join(model.modalities)}): LGG slices are RGB",
        )
    _check_values(case.source, data)
    return LoadedCase(
        case.case_id,
        case.source,
        "tiff",
        data,
        tiff_display_affine(),
        None,
        slices=list(case.slices),
        channels=model.modalities,
        files=tuple(case.slices),
    )


def tiff_display_affine() -> np.ndarray:
    """A voxel -> RAS affine for ``(row, column, slice)`` stacks, so an axial view shows each slice
    as stored (row 0 at the top, column 0 on the left). The voxel size is unknown: 1 is assumed."""
    # Overlays draw axial slices radiologically (patient's right on the left): columns run to -x.
    return np.array([[0.0, -1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])


# ---- writing -------------------------------------------------------------------------------------
def nifti_like(data: np.ndarray, reference: Any, dtype: Any = np.uint8, slope: float | None = None) -> Any:
    """A NIfTI image of ``data`` in ``reference``'s grid: its affine and header, with the same
    qform and sform (matrices and codes), so viewers overlay it voxel for voxel.

    Args:
        data: spatial array of ``reference``'s spatial shape.
        reference: the input's NIfTI image (header source); ``None`` for an identity affine.
        dtype: on-disk type.
        slope: ``scl_slope`` for scaled integers (probabilities), ``None`` for none.
    """
    import nibabel as nib

    data = np.asarray(data)
    if reference is None:
        img = nib.Nifti1Image(data.astype(dtype, copy=False), np.eye(4))
        img.set_qform(np.eye(4), code=0)
        img.set_sform(np.eye(4), code=0)
    else:
        ref_shape = _squeezed_shape(reference.shape)[:3]
        if tuple(data.shape) != tuple(ref_shape):
            raise ValueError(f"data shape {data.shape} differs from the reference's {ref_shape}")
        header = reference.header.copy()
        img = type(reference)(data.astype(dtype, copy=False), reference.affine, header=header)
        qform, qcode = reference.get_qform(coded=False), int(reference.header["qform_code"])
        sform, scode = reference.get_sform(coded=False), int(reference.header["sform_code"])
        img.set_qform(qform, code=qcode)
        img.set_sform(sform, code=scode)
        img.header.set_intent("none")
        img.header["cal_min"], img.header["cal_max"] = 0, 0
        # Header extensions and free-text fields may carry patient data (DICOM tags, names): not copied.
        img.header.extensions.clear()
        for text_field in ("descrip", "aux_file", "db_name"):
            if text_field in img.header.keys():
                img.header[text_field] = b""
    img.header.set_data_dtype(dtype)
    if slope is not None:
        img.header.set_slope_inter(slope, 0.0)
    else:
        img.header.set_slope_inter(1.0, 0.0)
    return img
