"""The Predictor: a trained network + its inference config -> segmentations, volumes and overlays.

One code path serves Python users and ``bts-infer`` alike (:meth:`Predictor.run`). A case goes:
files -> checks (:mod:`~bts_monai.inference.io`) -> training's preprocessing (RAS, resampling,
crop to the brain's bounding box, the same intensity normalisation) -> sliding-window inference
with gaussian blending -> sigmoid (regions) or softmax (labels) -> back to the input's voxel grid
-> labels in the dataset's own values -> files written atomically with the input's header.

On a CPU the geometry and the windows are NumPy/SciPy (:mod:`~bts_monai.inference.engine`, the
same steps as MONAI's), so with an ONNX runtime (``backend="auto"`` with one installed) a packaged
model segments without importing torch or MONAI at all; on a GPU they are MONAI's
(:mod:`~bts_monai.inference.geometry`, :class:`~monai.inferers.SlidingWindowInferer`) under
``torch.inference_mode``.

Why it is fast on a CPU: a BraTS volume is mostly background, so windows cover only the brain's
box (8 windows of 128³ instead of 18 for a 240x240x155 scan), and only the box is resampled both
ways; windows run one at a time (larger batches are slower on CPUs); the gaussian weight map is
computed once per predictor; no autograd state is kept. Peak memory is that of one window plus a few copies of
the volume. With several cases, the next case is read (gzip decoding, checks) in a background
thread while the current one is segmented, one case ahead.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bts_monai.errors import BtsInputError
from bts_monai.fileio import ProtectedFiles, check_writable, refuse_overwrite
from bts_monai.inference import engine
from bts_monai.inference.backends import PRECISIONS as BACKEND_PRECISIONS
from bts_monai.inference.backends import make_backend
from bts_monai.inference.display import DEFAULT_CONVENTION, check_convention
from bts_monai.inference.io import (
    CaseInput,
    LoadedCase,
    ModelInputs,
    StagedFiles,
    expand_inputs,
    explicit_case,
    is_nifti_path,
    is_tiff_path,
    load_case,
    nifti_like,
    resolve_input,
    strip_image_suffix,
)
from bts_monai.inference.overlay import png_bytes, three_plane_overlay
from bts_monai.inference.postprocess import check_postprocess, postprocess_masks
from bts_monai.inference.report import check_report_path, format_report, provenance, volume_report, write_report
from bts_monai.inference.sharding import outputs_complete, part_path, same_grid, segmentation_labels, select_part
from bts_monai.labels import LabelScheme, convert_labels, get_scheme
from bts_monai.model.spec import check_settings, inference_settings

if TYPE_CHECKING:  # torch and MONAI are imported where a torch network or a GPU is used
    import torch
    from monai.inferers import SlidingWindowInferer
    from torch import nn

__all__ = [
    "PRECISIONS",
    "NO_DEFAULT_MODEL",
    "Predictor",
    "Prediction",
    "CaseResult",
    "check_inference_config",
    "default_model_path",
    "one_line",
    "output_files",
    "check_dicom_seg",
]

logger = logging.getLogger(__name__)

PRECISIONS = BACKEND_PRECISIONS
"""Inference precisions: ``auto`` (bf16 where it is native and measured faster: OpenVINO on CPUs
with AVX512-BF16/AMX, torch on bf16 GPUs; else float32), ``32`` or ``bf16``
(:data:`~bts_monai.inference.backends.PRECISIONS`)."""

NO_DEFAULT_MODEL = (
    "no packaged default model is installed for this input; pass --ckpt PATH (a checkpoint from "
    "`bts-train fit`) or --model NAME (see --list-models)"
)
"""What users are told when no checkpoint is given and no default model is packaged."""

PROBABILITY_SCALE = 32767
"""Probabilities are stored as int16 with ``scl_slope = 1/32767`` (NIfTI has no float16)."""

ONE_PASS_MAX_ROIS = 2.0
"""``one_pass`` runs the network once over the padded brain box when the box holds at most this
many windows' worth of voxels (peak memory grows with the box; beyond it, overlapping windows)."""

CONFIG_KEYS = ("modalities", "scheme", "label_mode", "spatial_dims", "roi_size", "intensity")


def default_model_path(kind: str = "brats") -> Path | None:
    """The packaged default model folder for ``kind`` (``"brats"`` 3D, ``"lgg"`` 2D), or ``None``
    when it is not installed. :meth:`Predictor.from_checkpoint` takes such a folder like a ``.ckpt``."""
    from bts_monai.model.packaged import DEFAULT_MODELS, MODELS_DIR, is_model_folder

    if kind not in DEFAULT_MODELS:
        raise ValueError(f"unknown model kind {kind!r}: use 'brats' or 'lgg'")
    folder = MODELS_DIR / DEFAULT_MODELS[kind]
    return folder if is_model_folder(folder) else None


@dataclass
class Prediction:
    """One case's result, in the input's voxel grid.

    Args:
        case: the input case (image, header, slices).
        labels: uint8 label map in the dataset's values (BraTS 2020/21: {0, 1, 2, 4}).
        probabilities: float32 ``(R, *spatial)``, the probability of each region.
        scheme: the label scheme.
        seconds: wall time of the prediction (preprocessing to labels).
        convention: how :meth:`overlay` draws left and right (:mod:`~bts_monai.inference.display`).
        provenance: how it was made, for the report (:func:`~bts_monai.inference.report.provenance`).
    """

    case: LoadedCase
    labels: np.ndarray
    probabilities: np.ndarray
    scheme: LabelScheme
    seconds: float = 0.0
    convention: str = DEFAULT_CONVENTION
    provenance: dict[str, Any] | None = None

    @property
    def region_names(self) -> list[str]:
        """Region names, in the order of :attr:`probabilities` and :attr:`regions`."""
        return self.scheme.region_names

    @property
    def regions(self) -> np.ndarray:
        """Boolean region masks ``(R, *spatial)`` of :attr:`labels`."""
        return self.scheme.to_regions(self.labels)

    def report(self) -> dict[str, Any]:
        """Voxel counts and volumes (mL) per label and per region (see :func:`volume_report`); for a
        DICOM study also ``"dicom"``: the series used, the reference grid and any registration."""
        case = self.case
        rep = volume_report(self.labels, self.scheme, case.voxel_size, case.case_id, case.source, self.provenance)
        if self.case.dicom is not None:
            rep["dicom"] = self.case.dicom.report()
        return rep

    def overlay(self, alpha: float = 0.45) -> np.ndarray:
        """Axial, coronal and sagittal views through the tumour's centre, with edge letters, as an RGB array."""
        regions, names = self.regions, self.region_names
        # Outer regions first, so nested ones stay visible (WT, TC, ET).
        order = sorted(range(len(names)), key=lambda i: -int(regions[i].sum()))
        return three_plane_overlay(
            self.case.display_channel(),
            regions[order],
            [names[i] for i in order],
            self.case.affine,
            alpha=alpha,
            title=self.case.case_id,
            convention=self.convention,
            orientation_known=self.case.kind != "tiff",
        )

    def save(
        self,
        path: str | os.PathLike[str],
        probabilities: bool = False,
        report: str | os.PathLike[str] | None = None,
        overlay: str | os.PathLike[str] | None = None,
        overwrite: bool = True,
        dicom_seg: str | os.PathLike[str] | None = None,
    ) -> list[Path]:
        """Write the segmentation (and optionally per-region probabilities, the report, the
        overlay PNG and a DICOM SEG) atomically: all files appear together or none does, and never
        over a file the case was read from.

        Args:
            path: the segmentation: ``.nii.gz``/``.nii`` for NIfTI inputs; for TIFF inputs ``.tif``
                (a mask, or a multi-page stack for a patient) or ``.nii.gz`` (an ``(H, W, N)`` stack).
            probabilities: also write ``<name>_prob_<REGION>.nii.gz`` beside it.
            report: a ``.json`` or ``.csv`` path for this case's volumes.
            overlay: a ``.png`` path for the three-plane overlay.
            overwrite: replace existing files (other than the case's inputs); ``False`` refuses them.
            dicom_seg: a ``.dcm`` path for a DICOM Segmentation object on the reference series'
                grid (DICOM study inputs only, :mod:`~bts_monai.inference.dicom_seg`).

        Returns:
            The files written.

        Raises:
            BtsInputError: a bad output name, an output that is an input of the case (or exists,
                without ``overwrite``), or a file that cannot be written; nothing is written then.
        """
        path = Path(path)
        _check_seg_path(path, self.case.kind)
        if report is not None:
            check_report_path(report)
        if overlay is not None:
            _check_png(overlay)
        if dicom_seg is not None:
            check_dicom_seg(dicom_seg, self.case)
        staged = StagedFiles(protect=self.case.files, overwrite=overwrite)
        try:
            for target in output_files(path, self.region_names, probabilities, report, overlay, dicom_seg):
                staged.check(target)  # all refusals before any work
            self._stage(staged, path, probabilities)
            if dicom_seg is not None:
                from bts_monai.inference.dicom_seg import write_dicom_seg

                prov = self.provenance or {}
                model = (str(prov.get("model_name") or "bts_monai model"), str(prov.get("model_version") or "unknown"))
                args = (self.labels, self.case.dicom.reference.headers, self.scheme, *model)
                staged.add(dicom_seg, lambda tmp: write_dicom_seg(tmp, *args))
            if overlay is not None:
                png = png_bytes(self.overlay())
                staged.add(overlay, lambda tmp: tmp.write_bytes(png))
            if report is not None:
                text = format_report(self.report(), report)
                staged.add(report, lambda tmp: tmp.write_text(text))
            return staged.commit()
        except BaseException:
            staged.discard()
            raise

    def _stage(self, staged: StagedFiles, path: Path, probabilities: bool) -> None:
        import nibabel as nib

        case = self.case
        if case.kind == "tiff" and not is_nifti_path(path):
            import tifffile

            masks = np.moveaxis(self.labels, -1, 0)  # (N, H, W), one page per slice
            data = masks[0] if masks.shape[0] == 1 else masks
            # minisblack: without it tifffile stores 3 or 4 slices as one RGB(A) page.
            staged.add(path, lambda tmp: tifffile.imwrite(tmp, data, photometric="minisblack"))
        else:
            img = nifti_like(self.labels, case.reference, np.uint8)
            staged.add(path, lambda tmp: nib.save(img, tmp))
        if probabilities:
            base = _probability_base(path)
            for name, prob in zip(self.region_names, self.probabilities):
                q = np.rint(np.clip(prob, 0.0, 1.0) * PROBABILITY_SCALE).astype(np.int16)
                pimg = nifti_like(q, case.reference, np.int16, slope=1.0 / PROBABILITY_SCALE)
                staged.add(_probability_path(base, name), lambda tmp, im=pimg: nib.save(im, tmp))


def output_files(
    seg_path: str | os.PathLike[str],
    region_names: Sequence[str],
    probabilities: bool = False,
    report: str | os.PathLike[str] | None = None,
    overlay: str | os.PathLike[str] | None = None,
    dicom_seg: str | os.PathLike[str] | None = None,
) -> list[Path]:
    """Every file :meth:`Prediction.save` writes for these arguments, in writing order."""
    seg = Path(seg_path)
    out = [seg]
    if probabilities:
        out += [_probability_path(_probability_base(seg), name) for name in region_names]
    out += [Path(p) for p in (dicom_seg, overlay, report) if p is not None]
    return out


def check_dicom_seg(path: str | os.PathLike[str], case: LoadedCase | CaseInput) -> None:
    """A DICOM SEG output needs a ``.dcm`` name and a DICOM study as the case's input.

    Raises:
        BtsInputError: naming the output or the input.
    """
    if not os.fspath(path).lower().endswith(".dcm"):
        raise BtsInputError(path, "a DICOM SEG output must end in .dcm")
    if case.kind != "dicom" and getattr(case, "dicom", None) is None:
        raise BtsInputError(case.source, "--dicom-seg needs a DICOM study as input (a folder of DICOM series)")


def _probability_path(base: Path, region: str) -> Path:
    return base.with_name(f"{base.name}_prob_{region}.nii.gz")


def _probability_base(seg_path: Path) -> Path:
    stem = strip_image_suffix(seg_path.name)
    if stem.endswith("_seg"):
        stem = stem[: -len("_seg")]
    return seg_path.with_name(stem)


def _check_seg_path(path: Path, kind: str) -> None:
    ok = is_nifti_path(path) or (kind == "tiff" and is_tiff_path(path))
    if not ok:
        want = ".tif or .nii.gz" if kind == "tiff" else ".nii.gz or .nii"
        raise BtsInputError(path, f"output must end in {want}, or be a folder")


def _check_png(path: str | os.PathLike[str]) -> None:
    if not os.fspath(path).lower().endswith(".png"):
        raise BtsInputError(path, "overlay must end in .png")


@dataclass
class CaseResult:
    """What :meth:`Predictor.run` did with one input.

    Args:
        case_id: the case's name (or the input path when it could not be resolved).
        source: the input as given.
        ok: whether the case was segmented and written.
        outputs: files written.
        volumes_ml: region -> volume in mL (``None`` values when the voxel size is unknown).
        seconds: wall time for the case.
        error: the one-line problem when ``ok`` is false.
        report: the case's volume report (see :func:`~bts_monai.inference.report.volume_report`).
        skipped: the case's outputs were complete already (``skip_existing``): nothing was written.
    """

    case_id: str
    source: str
    ok: bool
    outputs: list[Path] = field(default_factory=list)
    volumes_ml: dict[str, float | None] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None
    report: dict[str, Any] | None = field(default=None, repr=False)
    skipped: bool = False


def _open_checkpoint(
    path: str | os.PathLike[str], trusted: bool
) -> tuple[nn.Module | None, dict[str, Any], Callable[..., nn.Module] | None]:
    """A training checkpoint: ``(network, config, None)``, or ``(None, config, build)`` when its
    ONNX export is in the cache already (:func:`~bts_monai.inference.backends.cached_onnx`, keyed
    by the checkpoint's SHA-256). The network is then built only if torch runs it: an ONNX
    runtime needs neither MONAI nor the network (5.5 s of imports and the build on a DynUNet).
    The export was made from this very file, so it built and loaded then; a checkpoint with no
    export is built, and checked, at once, as before."""
    from bts_monai.inference.backends import onnx_cache_dir
    from bts_monai.model.checkpoint import load_checkpoint, network_from, read_checkpoint

    ckpt, config = read_checkpoint(path, "cpu", trusted)  # read and hashed once; untrusted refused here
    if not (onnx_cache_dir() / f"{config['weights_sha256']}.onnx").is_file():
        return network_from(ckpt, config, path), config, None
    del ckpt  # not kept for the run: a torch run (rare beside a cached export) reads it again

    def build(map_location: str = "cpu") -> nn.Module:
        return load_checkpoint(path, map_location=map_location, trusted=trusted)[0]

    return None, config, build


class Predictor:
    """Segment brain-tumour scans with a trained network, exactly as it was trained.

    Args:
        net: the network (e.g. from :func:`bts_monai.model.checkpoint.load_checkpoint`).
        config: its inference config: ``modalities``, ``scheme``, ``label_mode`` (``regions``:
            sigmoid per region; ``labels``: softmax over label values), ``spatial_dims`` (2: slice by
            slice along the last axis), ``roi_size``, ``intensity``, ``spacing`` (and ``dataset``).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        overlap: sliding-window overlap (0 to <1); default: the model's ``sw_overlap``.
        tta: average the network over mirror flips of the axes training mirrored (the model's
            ``mirror_axes``; up to 2^D times slower).
        precision: ``"auto"`` (default: bf16 where the hardware runs it natively and it was
            measured faster -- OpenVINO on CPUs with AVX512-BF16 or AMX, torch on bf16 GPUs --
            float32 elsewhere), ``"32"`` or ``"bf16"`` (autocast / OpenVINO's bf16).
        threads: CPU threads for torch (sets ``torch.set_num_threads``, process-wide); default torch's.
        sw_batch_size: windows per forward pass (default 1 on CPU, where larger is slower; 4 on GPU).
        progress: show a progress bar over the windows of each case.
        channels_last: run 3D networks in channels-last memory layout (off by default: 15% slower
            than the default layout on this project's CPU, see benchmarks/README.md).
        convention: how overlays draw left and right: ``radiological`` (default) or
            ``neurological`` (see :mod:`bts_monai.inference.display`).
        progress_callback: ``progress_callback(done, total)`` after each batch of sliding windows
            of a case (windows done, windows in the case), from the thread running the inference.
        backend: what runs the network: ``auto`` (default: the fastest ONNX runtime installed on a
            CPU, torch on a GPU or with none installed), ``torch``, ``onnxruntime``, ``openvino``
            (see :mod:`~bts_monai.inference.backends`).
        onnx_path: the network's ONNX export (default: the packaged model's, else exported once
            into the cache, keyed by the checkpoint's SHA-256).
        one_pass: run the network once over the whole padded brain box instead of overlapping
            windows, when the box is at most :data:`ONE_PASS_MAX_ROIS` windows' volume.
        threshold, sw_mode, roi_size, mirror_axes: override the model's saved
            :data:`~bts_monai.model.spec.INFERENCE_SETTINGS` (sigmoid threshold, window blending
            and size, test-time mirror axes); by default the Predictor runs as validation did.
        postprocess: the post-processing of the thresholded masks (``none`` or
            ``largest_component``, :mod:`~bts_monai.inference.postprocess`); default the model's
            ``postprocess`` (packaged models record the rule chosen on their training cases), else none.

    Example:
        >>> p = Predictor.from_checkpoint("run.ckpt")                      # doctest: +SKIP
        >>> pred = p.predict("BraTS2021_00000/")                           # doctest: +SKIP
        >>> pred.save("seg.nii.gz", report="volumes.json", overlay="o.png")  # doctest: +SKIP
    """

    def __init__(
        self,
        net: nn.Module | None,
        config: dict[str, Any],
        device: str | torch.device = "auto",
        overlap: float | None = None,
        tta: bool = False,
        precision: str = "auto",
        threads: int | None = None,
        sw_batch_size: int | None = None,
        progress: bool = False,
        channels_last: bool = False,
        convention: str = DEFAULT_CONVENTION,
        progress_callback: Callable[[int, int], None] | None = None,
        backend: str = "auto",
        onnx_path: str | os.PathLike[str] | None = None,
        one_pass: bool = False,
        threshold: float | None = None,
        sw_mode: str | None = None,
        roi_size: Sequence[int] | None = None,
        mirror_axes: Sequence[int] | None = None,
        postprocess: str | None = None,
        load_net: Callable[[], nn.Module] | None = None,
    ) -> None:
        if net is None and load_net is None:
            raise ValueError("give the network, or load_net to build it when needed")
        check_inference_config(net, config)
        overrides = {
            "threshold": threshold,
            "sw_overlap": overlap,
            "sw_mode": sw_mode,
            "sw_roi_size": roi_size,
            "mirror_axes": mirror_axes,
        }
        # The model's saved settings (or those of its day), then what the caller overrides.
        saved = inference_settings(config)
        self.settings = check_settings(
            {**saved, **{k: v for k, v in overrides.items() if v is not None}}, int(config["spatial_dims"])
        )
        if str(precision) not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
        if threads is not None and int(threads) < 1:
            raise ValueError(f"threads must be at least 1, not {threads}")
        self.threads = None if threads is None else int(threads)
        self.config = dict(config)
        self.convention = check_convention(convention)
        self.progress_callback = progress_callback
        self.scheme = get_scheme(config["scheme"])
        self.output_scheme: str | LabelScheme | None = None
        """Write labels in this scheme; ``None`` (default): the input dataset's own (a BraTS 2023-named
        case gets 2023 values, an nnU-Net set its dataset.json's), else the model's."""
        self.dicom_options: Any = None
        """How DICOM study inputs are read (:class:`~bts_monai.inference.dicom.DicomOptions`: series
        overrides, rigid registration, reference series); ``None``: the defaults."""
        self.label_mode = str(config["label_mode"])
        if self.label_mode not in ("regions", "labels"):
            raise ValueError(f"label_mode must be 'regions' or 'labels', not {self.label_mode!r}")
        self.inputs = ModelInputs.from_config(config)
        self.spatial_dims = self.inputs.spatial_dims
        self._device = _resolve_device(device)
        self.precision = str(precision)
        self.tta = bool(tta)
        self.overlap = self.settings["sw_overlap"]
        self.threshold = self.settings["threshold"]
        self.postprocess = check_postprocess(
            postprocess if postprocess is not None else config.get("postprocess"),
            "post-processing" if postprocess is not None else config.get("model_source", "the model"),
        )
        """The rule applied to the thresholded masks (:mod:`~bts_monai.inference.postprocess`)."""
        self.mirror_axes = list(self.settings["mirror_axes"])
        self.channels_last = bool(channels_last) and self.spatial_dims == 3
        self._net: nn.Module | None = None
        self._load_net = load_net
        if net is not None:
            self.net = net
        if self.threads is not None and "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(self.threads)
        self.backend = make_backend(
            backend,
            self._net if self._net is not None else lambda: self.net,
            self.config,
            onnx_path=onnx_path or self.config.get("onnx_file"),
            precision=self.precision,
            threads=threads,
            channels_last=self.channels_last,
            device=self._device,
        )
        self.precision = self.backend.precision
        """What the network runs in: ``"32"`` or ``"bf16"`` (``auto`` resolved)."""
        self.one_pass = bool(one_pass)
        self.sw_batch_size = int(sw_batch_size or (1 if self._device == "cpu" else 4))
        roi = list(self.settings["sw_roi_size"])
        if len(roi) != self.spatial_dims:
            raise ValueError(f"roi_size {roi} does not have {self.spatial_dims} numbers")
        if self.spatial_dims == 2:  # slices along the last axis: windows one slice deep
            self._roi_3d, self._overlaps = [*roi, 1], [self.overlap, self.overlap, 0.0]
        else:
            self._roi_3d, self._overlaps = roi, [self.overlap] * 3
        self._progress = bool(progress)
        self._inferer: SlidingWindowInferer | None = None
        self._weights: np.ndarray | None = None
        self._transforms_by_kind: dict[str, Any] | None = None
        self.use_engine = self._device == "cpu"
        """Whether cases go through the NumPy/SciPy path (:mod:`~bts_monai.inference.engine`, on
        CPUs) rather than MONAI's transforms and sliding window (GPUs)."""

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], trusted: bool = False, **kwargs: Any) -> Predictor:
        """Rebuild network and settings from a training checkpoint (loaded with ``weights_only``)
        or a packaged-model folder (``bts_monai/models/<name>``, safetensors).

        Raises:
            BtsInputError: the file is missing, corrupt, or not a checkpoint of this project.
        """
        from bts_monai.model.packaged import is_model_folder, open_model_folder

        net, build = None, None
        try:
            if is_model_folder(path):  # the network is built only if torch runs it (no torch import)
                config, build = open_model_folder(path, trusted=trusted)
            else:
                net, config, build = _open_checkpoint(path, trusted)
        except BtsInputError as exc:
            raise one_line(exc) from exc
        try:
            check_inference_config(net, config)
        except ValueError as exc:
            raise BtsInputError(path, f"unusable model: {exc}") from exc
        if build is None:
            return cls(net, config, **kwargs)

        def load_net() -> nn.Module:
            try:
                return build()
            except BtsInputError as exc:
                raise one_line(exc) from exc

        return cls(None, config, load_net=load_net, **kwargs)

    @classmethod
    def from_packaged(cls, name: str | None = None, kind: str = "brats", **kwargs: Any) -> Predictor:
        """A packaged model by name (``bts-infer --list-models``), or the default one for ``kind``.

        Raises:
            BtsInputError: no packaged model of that name (or none installed for ``kind``).
        """
        from bts_monai.model.packaged import model_dir

        folder = model_dir(name) if name else default_model_path(kind)
        if folder is None:
            raise BtsInputError(None, NO_DEFAULT_MODEL)
        return cls.from_checkpoint(folder, **kwargs)

    # ---- properties --------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where the network runs (a ``torch.device``; reading it imports torch)."""
        import torch

        return torch.device(self._device)

    @property
    def net(self) -> nn.Module:
        """The torch network (built on first use when the Predictor was given ``load_net``)."""
        if self._net is None:
            assert self._load_net is not None
            self.net = self._load_net()
        assert self._net is not None
        return self._net

    @net.setter
    def net(self, value: nn.Module) -> None:
        import torch

        if self.threads is not None:
            torch.set_num_threads(self.threads)
        value = value.to(self._device).eval()
        if self.channels_last:
            value = value.to(memory_format=torch.channels_last_3d)
        self._net = value

    @property
    def inferer(self) -> SlidingWindowInferer:
        """MONAI's sliding window over a case (the GPU path and :meth:`logits`)."""
        if self._inferer is None:
            from bts_monai._monai_import import import_monai

            import_monai()
            from monai.inferers import SlidingWindowInferer

            self._inferer = SlidingWindowInferer(
                roi_size=self._roi_3d,
                sw_batch_size=self.sw_batch_size,
                overlap=self._overlaps,
                mode=self.settings["sw_mode"],
                sw_device=self.device,
                device=self.device,
                progress=self._progress,
                cache_roi_weight_map=True,
            )
        return self._inferer

    @property
    def _transforms(self) -> dict[str, Any]:
        if self._transforms_by_kind is None:
            from bts_monai.inference import geometry

            self._transforms_by_kind = {k: geometry.model_space_transforms(self.config, k) for k in ("nifti", "tiff")}
        return self._transforms_by_kind

    @property
    def modalities(self) -> list[str]:
        """Input channels the network reads, in order."""
        return list(self.inputs.modalities)

    @property
    def region_names(self) -> list[str]:
        """Names of the regions of :attr:`Prediction.probabilities`."""
        return self.scheme.region_names

    @property
    def progress(self) -> bool:
        """Whether a progress bar is shown over each case's windows."""
        return self._progress

    @progress.setter
    def progress(self, value: bool) -> None:
        self._progress = bool(value)
        if self._inferer is not None:
            self._inferer.progress = self._progress

    # ---- the network over a volume ----------------------------------------------------------
    def _network(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The backend on torch windows ``(N, C, *roi3d)`` (MONAI's sliding window), with TTA."""
        return _tta_network(self.backend, lambda t, axes: t.flip(axes), self)

    def _numpy_network(self) -> Callable[[np.ndarray], np.ndarray]:
        """The backend on NumPy windows ``(N, C, *roi3d)`` (:func:`engine.sliding_window`), with TTA."""
        return _tta_network(self.backend.run, lambda a, axes: np.ascontiguousarray(np.flip(a, axes)), self)

    def logits(self, image: torch.Tensor, progress_callback: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Blended network output ``(K, *spatial)`` for a model-space image ``(C, *spatial)`` (MONAI's
        sliding window; :meth:`predict_case` on a CPU uses :func:`engine.sliding_window` instead).

        ``progress_callback`` (default :attr:`progress_callback`) is called as windows are done.
        """
        import torch

        x = image.to(self.device, dtype=torch.float32)[None]
        network = self._network()
        callback = progress_callback or self.progress_callback
        inferer = self._one_pass_inferer(tuple(x.shape[2:]))
        if callback is not None:
            total = 1 if inferer is not None else self.window_count(tuple(x.shape[2:]))
            network = _counting_windows(network, callback, total)
        with torch.inference_mode():
            out = (inferer or self.inferer)(x, network)
        return out[0]  # type: ignore[index]

    def numpy_logits(
        self, image: np.ndarray, progress_callback: Callable[[int, int], None] | None = None
    ) -> np.ndarray:
        """:meth:`logits` in NumPy: the same windows, weights and blending, without torch."""
        x = np.asarray(image, dtype=np.float32)
        network = self._numpy_network()
        callback = progress_callback or self.progress_callback
        shape = tuple(x.shape[1:])
        box = self._one_pass_size(shape)
        total = 1 if box is not None else self.window_count(shape)
        if callback is not None:
            network = _counting_windows(network, callback, total)
        if self._progress and callback is None and total > 1:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, unit="window", leave=False)
            network = _counting_windows(network, lambda done, _: bar.update(done - bar.n), total)
        else:
            bar = None
        if box is not None:
            out = engine.sliding_window(x, network, box, [0.0] * len(box), "constant", 1)
        else:
            if self._weights is None:
                self._weights = engine.importance_map(self._roi_3d, self.settings["sw_mode"])
            x3 = x[..., None] if self.spatial_dims == 2 and x.ndim == 3 else x
            out = engine.sliding_window(
                x3, network, self._roi_3d, self._overlaps, self.settings["sw_mode"], self.sw_batch_size, self._weights
            )
        if bar is not None:
            bar.close()
        return out

    def _one_pass_size(self, spatial_shape: Sequence[int]) -> list[int] | None:
        """With ``one_pass``, the one window: the box padded up to a size the network's strides
        divide (padded with zeros, as training's crop did, and cropped back); ``None`` when the box
        is too large (see :data:`ONE_PASS_MAX_ROIS`) or the model is 2D."""
        if not self.one_pass or self.spatial_dims != 3:
            return None
        step = _size_divisor(self.config.get("net", {}).get("init_args", {}), len(spatial_shape))
        size = [max(-(-int(s) // d) * d, d) for s, d in zip(spatial_shape, step)]
        if float(np.prod(size)) > ONE_PASS_MAX_ROIS * float(np.prod(self.config["roi_size"])):
            logger.debug("one pass: box %s too large, sliding windows instead", size)
            return None
        return size

    def _one_pass_inferer(self, spatial_shape: Sequence[int]) -> SlidingWindowInferer | None:
        """MONAI's inferer with the one window of :meth:`_one_pass_size` (``None``: windows)."""
        size = self._one_pass_size(spatial_shape)
        if size is None:
            return None
        from monai.inferers import SlidingWindowInferer

        return SlidingWindowInferer(
            roi_size=size, sw_batch_size=1, overlap=0.0, mode="constant", sw_device=self.device, device=self.device
        )

    def window_count(self, spatial_shape: Sequence[int]) -> int:
        """How many sliding windows cover a model-space image of ``spatial_shape`` (one image):
        MONAI's grid for this roi and overlap (:func:`engine.window_starts`)."""
        dims = len(spatial_shape)
        roi = [int(r) for r in self._roi_3d[:dims]]
        size = [max(int(s), r) for s, r in zip(spatial_shape, roi)]  # smaller images are padded to the roi
        return len(engine.window_starts(size, roi, self._overlaps[:dims]))

    def class_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Sigmoid per region (``regions`` mode) or softmax over label values (``labels`` mode)."""
        import torch

        if self.label_mode == "regions":
            return torch.sigmoid(logits)
        return torch.softmax(logits, dim=0)

    def _labels_and_regions(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities in the input grid -> (labels, region probabilities)."""
        if self.label_mode == "regions":
            return self.scheme.from_regions(postprocess_masks(probs > self.threshold, self.postprocess)), probs
        labels = self.scheme.from_index_map(probs.argmax(0))
        if self.postprocess != "none":
            labels = np.where(postprocess_masks(labels[None] != 0, self.postprocess)[0], labels, 0).astype(labels.dtype)
        values = self.scheme.all_values
        region_probs = np.stack(
            [probs[[values.index(v) for v in vals]].sum(0) for vals in self.scheme.regions.values()]
        )
        return labels, region_probs

    # ---- cases -------------------------------------------------------------------------------
    def predict_case(
        self,
        case: LoadedCase,
        keep_image: bool = True,
        progress_callback: Callable[[int, int], None] | None = None,
    ) -> Prediction:
        """Segment a loaded (checked) case; the result is in the case's own voxel grid.

        Args:
            case: the case (see :meth:`load`).
            keep_image: keep every channel of ``case.image``; ``False`` keeps only the overlay's
                channel once the network's input is made, which lowers peak memory.
            progress_callback: ``(windows done, windows in total)`` for this case (default
                :attr:`progress_callback`).
        """
        start = time.perf_counter()

        def drop_image() -> None:  # once the network's input is made: only the overlay's channel
            if not keep_image:
                shown = case.channels.index("flair") if "flair" in case.channels else 0
                case.image, case.channels = case.image[shown : shown + 1].copy(), (case.channels[shown],)

        if self.use_engine:
            x, plan = engine.to_model_space(case.image, case.affine, self.config, case.kind)
            drop_image()
            logger.debug("%s: model input %s (input grid %s)", case.case_id, tuple(x.shape[1:]), case.spatial_shape)
            probs = engine.class_probabilities(self.numpy_logits(x, progress_callback), self.label_mode)
            del x
            grid = engine.to_input_grid(probs, plan)
            del probs
        else:
            from bts_monai.inference import geometry

            transforms = self._transforms[case.kind]
            mt = geometry.to_model_space(case.image, case.affine, transforms, case.source)
            drop_image()
            logger.debug("%s: model input %s (input grid %s)", case.case_id, tuple(mt.shape[1:]), case.spatial_shape)
            probs_t = self.class_probabilities(self.logits(mt.as_tensor(), progress_callback))
            grid = geometry.to_input_grid(probs_t.cpu(), mt, transforms).numpy()
            del probs_t, mt
        if tuple(grid.shape[1:]) != case.spatial_shape:  # a broken round trip must never be written
            raise RuntimeError(f"round trip gave shape {grid.shape[1:]}, expected {case.spatial_shape}")
        labels, region_probs = self._labels_and_regions(grid)
        out_scheme = self.output_scheme_for(case)
        if out_scheme is not self.scheme:  # same regions, the input dataset's values (by region name)
            labels = convert_labels(labels, self.scheme, out_scheme)
        return Prediction(
            case,
            labels,
            region_probs.astype(np.float32, copy=False),
            out_scheme,
            time.perf_counter() - start,
            convention=self.convention,
            provenance=self.provenance(),
        )

    def provenance(self) -> dict[str, Any]:
        """The model, runtime and settings this Predictor segments with, and the package versions
        (what every report records, see :func:`~bts_monai.inference.report.provenance`)."""
        return provenance(
            self.config,
            self.settings,
            backend=self.backend.name,
            device=self._device,
            precision=self.precision,
            tta=self.tta,
            one_pass=self.one_pass,
            postprocess=self.postprocess,
        )

    def output_scheme_for(self, case: LoadedCase) -> LabelScheme:
        """The scheme a case's labels are written in: :attr:`output_scheme` when set, else the
        input dataset's own when it has the model's regions, else the model's."""
        if self.output_scheme is not None:
            return get_scheme(self.output_scheme)
        if case.scheme is None or self.inputs.tiff:
            return self.scheme
        own = get_scheme(case.scheme)
        return own if set(self.scheme.region_names) <= set(own.region_names) else self.scheme

    def load(
        self, source: str | os.PathLike[str] | CaseInput | dict[str, str], channel_order: Sequence[str] | None = None
    ) -> LoadedCase:
        """Read and check one input: a path (4D NIfTI, case folder, TIFF slice or patient folder),
        a :class:`CaseInput`, or a ``{modality: path}`` dict.

        Raises:
            BtsInputError: naming the file and the problem.
        """
        if isinstance(source, dict):
            source = explicit_case(source, self.inputs)
        elif not isinstance(source, CaseInput):
            source = resolve_input(source, self.inputs, channel_order)
        case = load_case(self._with_dicom_options(source), self.inputs)
        case.scheme = source.scheme
        return case

    def _with_dicom_options(self, case: CaseInput) -> CaseInput:
        """``case`` with :attr:`dicom_options` when it is a DICOM study given without its own."""
        if case.kind == "dicom" and case.dicom_options is None:
            case.dicom_options = self.dicom_options
        return case

    def predict(
        self,
        source: str | os.PathLike[str] | CaseInput | LoadedCase | dict[str, str],
        channel_order: Sequence[str] | None = None,
    ) -> Prediction:
        """Segment one input (see :meth:`load` for the forms it takes)."""
        case = source if isinstance(source, LoadedCase) else self.load(source, channel_order)
        return self.predict_case(case)

    def predict_array(
        self, image: np.ndarray, affine: np.ndarray | None = None, case_id: str = "array", reference: Any = None
    ) -> Prediction:
        """Segment an in-memory ``(C, *spatial)`` image whose channels follow :attr:`modalities`.

        Args:
            image: the image in its voxel grid (for TIFF-like 2D models: ``(3, H, W, N)``).
            affine: voxel -> world matrix (default: identity); ignored when ``reference`` is given.
            case_id: a name for reports.
            reference: a NIfTI image whose header outputs should copy.
        """
        image = np.asarray(image, dtype=np.float32)
        if image.ndim != 4 or image.shape[0] != len(self.modalities):
            raise BtsInputError(None, f"expected an array (C={len(self.modalities)}, x, y, z), got shape {image.shape}")
        if not np.isfinite(image).all():
            raise BtsInputError(None, f"{case_id}: contains NaN or Inf voxels")
        if not image.any():
            raise BtsInputError(None, f"{case_id}: is empty: every voxel is zero")
        aff = np.asarray(reference.affine if reference is not None else (np.eye(4) if affine is None else affine))
        kind = "tiff" if self.inputs.tiff else "nifti"
        case = LoadedCase(case_id, case_id, kind, image, aff, reference, channels=self.inputs.modalities)
        return self.predict_case(case)

    # ---- many inputs to files: the CLI's path -------------------------------------------------
    def run(
        self,
        inputs: Sequence[str | os.PathLike[str]] = (),
        output: str | os.PathLike[str] | None = None,
        *,
        files: dict[str, str] | None = None,
        channel_order: Sequence[str] | None = None,
        probabilities: bool = False,
        report: str | os.PathLike[str] | None = None,
        overlay: str | os.PathLike[str] | None = None,
        progress: bool = True,
        overwrite: bool = False,
        num_parts: int = 1,
        part_id: int = 0,
        skip_existing: bool = False,
        dicom_seg: str | os.PathLike[str] | None = None,
        prefetch: bool = True,
    ) -> list[CaseResult]:
        """Segment inputs and write the results; what ``bts-infer`` does.

        Every output is checked before the case is read: it must be writable, must not be a file
        of any input of the run (ever), and must not exist already unless ``overwrite``.

        Args:
            inputs: files and folders (4D NIfTI, case folders, TIFF slices, patient folders, DICOM
                study folders, or folders of cases).
            output: one input: the segmentation file (or a folder for the default name); several:
                a folder. Default: ``<case>_seg.nii.gz`` (TIFF: ``<case>_seg.tif``) in the current folder.
            files: explicit ``{modality: path}`` for one case, instead of ``inputs``.
            channel_order: names of 4D NIfTI channels along the last axis (default: the model's).
            probabilities: write ``<case>_prob_<REGION>.nii.gz`` per region too.
            report: ``.json``/``.csv`` with voxel counts and volumes of every case.
            overlay: one input: a ``.png``; several: a folder for ``<case>_overlay.png``.
            progress: progress bars (over cases, or over one case's windows).
            overwrite: replace existing output files (never the run's inputs).
            num_parts: split the cases into this many parts (:mod:`~bts_monai.inference.sharding`)...
            part_id: ...and segment only this one (from 0); a report gets the part in its name.
            skip_existing: skip cases whose outputs are all there and read back whole; redo (and
                replace the files of) the others.
            dicom_seg: DICOM study inputs: a DICOM SEG per case; one input: a ``.dcm`` (or a folder
                for ``<case>_seg.dcm``), several: a folder.
            prefetch: with several cases, read the next case in a background thread while the
                current one is segmented (one case ahead, so at most two are in memory); a case's
                reading errors are reported for that case, in order, as without it.

        Returns:
            One :class:`CaseResult` per case. With one input, a bad input raises instead.

        Raises:
            BtsInputError: bad arguments, or the single input is bad (nothing is written then).
        """
        if files and inputs:
            raise BtsInputError(None, "give either input paths or --flair/--t1/--t1ce/--t2 files, not both")
        if files:
            items: list[Any] = [explicit_case(files, self.inputs)]
        elif inputs:
            items = expand_inputs(inputs)
        else:
            raise BtsInputError(None, "no input given: a case folder, a 4D NIfTI, TIFF slices, or modality files")
        many = len(items) > 1 or any(Path(p).is_dir() and Path(p) not in items for p in inputs)
        if report is not None:
            check_report_path(report)
        plan = _OutputPlan.make(output, overlay, many, dicom_seg)
        guard = _OutputGuard(_run_inputs(items), overwrite or skip_existing)  # incomplete outputs are redone
        if num_parts != 1 or part_id != 0:
            items = select_part(items, num_parts, part_id, lambda item: self._case_key(item, channel_order))
            report = None if report is None else part_path(report, num_parts, part_id)
            if not items:
                return []
        if not many:
            return [
                self._run_one(
                    items[0],
                    plan,
                    channel_order,
                    probabilities,
                    report,
                    progress,
                    raise_errors=True,
                    guard=guard,
                    skip_existing=skip_existing,
                )
            ]
        if report is not None:
            guard.check([Path(report)])
        from tqdm.auto import tqdm

        results: list[CaseResult] = []
        used: set[str] = set()
        self.progress = False
        bar = tqdm(total=len(items), desc="cases", unit="case", disable=not progress)

        def read(item: Path | CaseInput) -> _ReadCase:
            return self._read_one(item, plan, channel_order, probabilities, None, used, guard, skip_existing)

        with closing(_read_ahead(items, read, prefetch)) as cases:
            for case in cases:
                res = self._finish_one(case, probabilities, None, False, raise_errors=False, guard=guard)
                bar.update(1)
                bar.set_postfix_str(f"{res.case_id}: {'skipped' if res.skipped else 'ok' if res.ok else 'failed'}")
                results.append(res)
        bar.close()
        if report is not None:
            reports = [r.report for r in results if r.ok and r.report is not None]
            if reports:
                write_report(reports, report)
        return results

    def _run_one(
        self,
        item: Path | CaseInput,
        plan: _OutputPlan,
        channel_order: Sequence[str] | None,
        probabilities: bool,
        report: str | os.PathLike[str] | None,
        progress: bool,
        raise_errors: bool = False,
        used: set[str] | None = None,
        guard: _OutputGuard | None = None,
        skip_existing: bool = False,
    ) -> CaseResult:
        read = self._read_one(item, plan, channel_order, probabilities, report, used, guard, skip_existing)
        return self._finish_one(read, probabilities, report, progress, raise_errors, guard)

    def _read_one(
        self,
        item: Path | CaseInput,
        plan: _OutputPlan,
        channel_order: Sequence[str] | None,
        probabilities: bool,
        report: str | os.PathLike[str] | None,
        used: set[str] | None,
        guard: _OutputGuard | None,
        skip_existing: bool,
    ) -> _ReadCase:
        """A case's reading half (what the prefetch thread runs): resolve the input, check its
        outputs, read and check its files. An error is kept in the result, for
        :meth:`_finish_one` to raise in the case's turn."""
        source = item.source if isinstance(item, CaseInput) else str(item)
        case_id = item.case_id if isinstance(item, CaseInput) else Path(item).name
        read = _ReadCase(source, case_id, time.perf_counter())
        try:
            case_input = item if isinstance(item, CaseInput) else resolve_input(item, self.inputs, channel_order)
            read.case_id = case_input.case_id
            if used is not None:
                read.case_id = _unique(read.case_id, used)
                case_input.case_id = read.case_id
            read.seg_path, read.overlay_path = plan.paths(case_input)
            read.seg_dcm = plan.dicom_seg_path(case_input)
            _check_seg_path(read.seg_path, case_input.kind)
            if read.seg_dcm is not None:
                check_dicom_seg(read.seg_dcm, case_input)
            targets = output_files(
                read.seg_path, self.region_names, probabilities, report, read.overlay_path, read.seg_dcm
            )
            if (
                skip_existing
                and outputs_complete(targets)
                and same_grid(read.seg_path, case_input.kind, case_input.files, case_input.slices)
            ):
                read.result = self._skipped(case_input, targets, read.start)
                return read
            if guard is not None:  # before the case is read and segmented, not after
                guard.check(targets)
            read.case = load_case(self._with_dicom_options(case_input), self.inputs)
            read.case.scheme = case_input.scheme
        except Exception as exc:
            read.error = exc
        return read

    def _finish_one(
        self,
        read: _ReadCase,
        probabilities: bool,
        report: str | os.PathLike[str] | None,
        progress: bool,
        raise_errors: bool = False,
        guard: _OutputGuard | None = None,
    ) -> CaseResult:
        """A read case's segmenting half: the network over it, its files written; or its error."""
        if read.result is not None:
            return read.result
        source, case_id = read.source, read.case_id
        try:
            if read.error is not None:
                raise read.error
            case, read.case = read.case, None  # the run keeps no case once it is segmented
            assert case is not None and read.seg_path is not None
            self.progress = progress
            pred = self.predict_case(case, keep_image=False)
            overwrite = guard is None or guard.overwrite
            outputs = pred.save(
                read.seg_path, probabilities, report, read.overlay_path, overwrite=overwrite, dicom_seg=read.seg_dcm
            )
        except Exception as exc:
            if raise_errors:
                raise
            if isinstance(exc, BtsInputError):
                logger.warning("skipping %s: %s", source, exc)
                message = str(exc)
            else:  # not the input's fault: keep the traceback in the log, go on with the others
                logger.exception("skipping %s after an unexpected error", source)
                message = f"{source}: {type(exc).__name__}: {exc}"
            return CaseResult(case_id, source, False, seconds=time.perf_counter() - read.start, error=message)
        rep = pred.report()
        return CaseResult(
            case_id,
            source,
            True,
            outputs,
            {r["region"]: r["volume_ml"] for r in rep["regions"]},
            time.perf_counter() - read.start,
            report=rep,
        )

    def _case_key(self, item: Path | CaseInput, channel_order: Sequence[str] | None) -> str:
        """The case id an input will be written under (its path's name when it does not resolve)."""
        if isinstance(item, CaseInput):
            return item.case_id
        try:
            return resolve_input(item, self.inputs, channel_order).case_id
        except BtsInputError:
            return Path(item).name

    def _skipped(self, case_input: CaseInput, outputs: list[Path], start: float) -> CaseResult:
        """A case whose outputs are complete: its volumes counted from the segmentation written before."""
        labels, voxel_size = segmentation_labels(outputs[0])
        scheme = self.output_scheme_for(case_input)  # type: ignore[arg-type]
        rep = volume_report(labels, scheme, voxel_size, case_input.case_id, case_input.source, self.provenance())
        logger.info("%s: outputs complete, skipped", case_input.case_id)
        volumes = {r["region"]: r["volume_ml"] for r in rep["regions"]}
        seconds = time.perf_counter() - start
        return CaseResult(
            case_input.case_id, case_input.source, True, outputs, volumes, seconds, report=rep, skipped=True
        )


@dataclass
class _ReadCase:
    """One case of :meth:`Predictor.run` after its reading half (:meth:`Predictor._read_one`)."""

    source: str
    case_id: str
    start: float
    case: LoadedCase | None = None
    seg_path: Path | None = None
    overlay_path: Path | None = None
    seg_dcm: Path | None = None
    result: CaseResult | None = None
    """Set when the case needs no segmenting (its outputs are complete, ``skip_existing``)."""
    error: Exception | None = None


def _read_ahead(items: Sequence[Any], read: Callable[[Any], _ReadCase], ahead: bool = True) -> Iterator[_ReadCase]:
    """``read(item)`` of each item, in order. With ``ahead``, the next item is read in one
    background thread while the caller segments the current one (isal's gzip decoding releases
    the GIL, as the network's runtimes do, so the two overlap); never more than one ahead.

    Close the iterator (:func:`contextlib.closing`) when stopping early: its thread is then joined.
    """
    if not ahead or len(items) < 2:
        for item in items:
            yield read(item)
        return
    # A pool of one worker rather than a thread per case: futures carry each result (and any
    # BaseException) back in order, and leaving the block joins the worker.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bts-prefetch") as pool:
        pending = pool.submit(read, items[0])
        for i in range(len(items)):
            current = pending.result()
            if i + 1 < len(items):
                pending = pool.submit(read, items[i + 1])
            yield current
            del current  # the caller holds the case while it is segmented, this frame does not


@dataclass
class _OutputGuard:
    """The run's rules for outputs: never over an input of the run, over an existing file only
    with ``overwrite``, and only where writing works (probed before the inference)."""

    protect: ProtectedFiles
    overwrite: bool = False

    def check(self, targets: Sequence[Path]) -> None:
        for target in targets:
            refuse_overwrite(target, self.protect, self.overwrite)
            check_writable(target)


def _run_inputs(items: Sequence[Path | CaseInput]) -> ProtectedFiles:
    """Every file the run reads: the given files, and the files in the given case folders."""
    protect = ProtectedFiles()
    for item in items:
        if isinstance(item, CaseInput):
            for f in [*item.files.values(), *item.slices]:
                protect.add(f)
        elif Path(item).exists():
            protect.add(item)
    return protect


@dataclass
class _OutputPlan:
    """Where each case's files go: one named file, or a folder of default names."""

    folder: Path
    file: Path | None = None
    overlay_file: Path | None = None
    overlay_folder: Path | None = None
    dicom_seg_file: Path | None = None
    dicom_seg_folder: Path | None = None

    @classmethod
    def make(
        cls,
        output: str | os.PathLike[str] | None,
        overlay: str | os.PathLike[str] | None,
        many: bool,
        dicom_seg: str | os.PathLike[str] | None = None,
    ) -> _OutputPlan:
        plan = cls._make(output, overlay, many)
        if dicom_seg is not None:
            seg = Path(dicom_seg)
            if many and os.fspath(dicom_seg).lower().endswith(".dcm"):
                raise BtsInputError(seg, "with several inputs, --dicom-seg takes a folder for <case>_seg.dcm")
            if many or seg.is_dir():
                plan.dicom_seg_folder = seg
            else:
                plan.dicom_seg_file = seg
        return plan

    def dicom_seg_path(self, case: CaseInput) -> Path | None:
        """Where ``case``'s DICOM SEG goes (``None``: none asked for)."""
        if self.dicom_seg_folder is not None:
            return self.dicom_seg_folder / f"{case.case_id}_seg.dcm"
        return self.dicom_seg_file

    @classmethod
    def _make(
        cls, output: str | os.PathLike[str] | None, overlay: str | os.PathLike[str] | None, many: bool
    ) -> _OutputPlan:
        out = Path(output) if output is not None else None
        as_folder = out is None or out.is_dir() or os.fspath(output).endswith(os.sep) or many
        if many:
            if out is not None and out.exists() and not out.is_dir():
                raise BtsInputError(out, "with several inputs, -o/--output must be a folder")
            if out is not None and (is_nifti_path(out) or is_tiff_path(out)):
                raise BtsInputError(out, "with several inputs, -o/--output must be a folder, not a file name")
            if overlay is not None and os.fspath(overlay).lower().endswith(".png"):
                raise BtsInputError(overlay, "with several inputs, --overlay takes a folder for <case>_overlay.png")
            return cls(out or Path.cwd(), overlay_folder=None if overlay is None else Path(overlay))
        if overlay is not None:
            _check_png(overlay)
        ov = None if overlay is None else Path(overlay)
        if as_folder:
            return cls(out or Path.cwd(), overlay_file=ov)
        return cls(out.parent, file=out, overlay_file=ov)  # type: ignore[union-attr]

    def paths(self, case: CaseInput) -> tuple[Path, Path | None]:
        """(segmentation path, overlay path or ``None``) for ``case``."""
        ext = ".tif" if case.kind == "tiff" else ".nii.gz"
        seg = self.file if self.file is not None else self.folder / f"{case.case_id}_seg{ext}"
        if self.overlay_folder is not None:
            return seg, self.overlay_folder / f"{case.case_id}_overlay.png"
        return seg, self.overlay_file


def check_inference_config(net: nn.Module | None, config: dict[str, Any]) -> None:
    """A model's inference config agrees with itself and with its network: every key present,
    a positive window size of ``spatial_dims`` numbers, as many modalities as the network has
    input channels.

    Raises:
        ValueError: naming the disagreement.
    """
    missing = [k for k in CONFIG_KEYS if k not in config]
    if missing:
        raise ValueError(f"inference config lacks {', '.join(missing)}")
    dims = config["spatial_dims"]
    if dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, not {dims!r}")
    roi = config["roi_size"]
    if (
        not isinstance(roi, Sequence)
        or isinstance(roi, str)
        or len(roi) != int(dims)
        or not all(isinstance(r, (int, np.integer)) and not isinstance(r, bool) and r > 0 for r in roi)
    ):
        raise ValueError(f"roi_size must be {dims} positive whole numbers, not {roi!r}")
    modalities = config["modalities"]
    if isinstance(modalities, str) or not modalities:
        raise ValueError(f"modalities must be a non-empty list of names, not {modalities!r}")
    wanted = None if net is None else _input_channels(net)
    if wanted is not None and wanted != len(modalities):
        raise ValueError(
            f"the config names {len(modalities)} modalities ({', '.join(modalities)}) but the network "
            f"takes {wanted} input channels"
        )


def _input_channels(net: nn.Module) -> int | None:
    """Input channels of the network's first convolution (``None`` when it has none)."""
    from torch import nn

    for module in net.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            return int(module.in_channels)
    return None


def one_line(exc: BtsInputError) -> BtsInputError:
    """The same error with its problem cut to the first line (torch's messages run to paragraphs)."""
    lines = [ln.strip() for ln in exc.problem.splitlines() if ln.strip()]
    if len(lines) <= 1:
        return exc
    first = lines[0]
    first += ")" * max(0, first.count("(") - first.count(")"))
    return BtsInputError(exc.path, first)


def _unique(name: str, used: set[str]) -> str:
    out, i = name, 2
    while out in used:
        out, i = f"{name}_{i}", i + 1
    used.add(out)
    return out


def _counting_windows(
    network: Callable[[Any], Any], callback: Callable[[int, int], None], total: int
) -> Callable[[Any], Any]:
    """``network`` that reports ``callback(windows done, total)`` after each batch of windows
    (torch tensors or NumPy arrays)."""
    done = 0

    def counted(window: Any) -> Any:
        nonlocal done
        out = network(window)
        done += int(window.shape[0])
        callback(min(done, total), total)
        return out

    return counted


def _size_divisor(init_args: dict[str, Any], dims: int) -> list[int]:
    """Per spatial axis, the product of the network's strides (UNet, DynUNet ``strides``): input
    sizes it divides come out of the encoder and decoder at the same size. 32 when unknown."""
    strides = init_args.get("strides")
    if not isinstance(strides, (list, tuple)) or not strides:
        return [32] * dims
    out = [1] * dims
    for s in strides:
        per_axis = list(s) if isinstance(s, (list, tuple)) else [s] * dims
        out = [o * int(a) for o, a in zip(out, per_axis)]
    return out


def _tta_network(
    run: Callable[[Any], Any], flip: Callable[[Any, tuple[int, ...]], Any], p: Predictor
) -> Callable[[Any], Any]:
    """``run`` on windows ``(N, C, *roi3d)`` of ``p``'s model: 2D models get the slice axis taken
    off and put back; with ``p.tta``, the mean over the mirror flips of its axes (``flip(x, axes)``)."""
    dims = p.spatial_dims
    flips = _flip_sets(p.mirror_axes) if p.tta else [()]

    def forward(window: Any) -> Any:
        if dims == 2:
            window = window[..., 0]
        total = None
        for axes in flips:
            y = run(flip(window, axes) if axes else window)
            y = flip(y, axes) if axes else y
            total = y if total is None else total + y
        out = total / len(flips)  # type: ignore[operator]
        return out[..., None] if dims == 2 else out

    return forward


def _flip_sets(spatial_axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of the given spatial axes, as axes of an ``(N, C, *spatial)`` tensor (identity first)."""
    sets: list[tuple[int, ...]] = [()]
    for a in [2 + int(x) for x in spatial_axes]:
        sets += [(*s, a) for s in sets]
    return sets


def _gpu_possible() -> bool:
    """Whether this machine may have a GPU torch could use, decided without importing torch when
    it can be: on Linux, an NVIDIA or AMD (ROCm) driver's device files; on macOS, never (CUDA);
    elsewhere (Windows), or with torch already imported, torch is asked."""
    if "torch" in sys.modules or not sys.platform.startswith(("linux", "darwin")):
        return True
    if sys.platform == "darwin":
        return False
    return any(os.path.exists(p) for p in ("/proc/driver/nvidia/gpus", "/dev/nvidia0", "/dev/nvidiactl", "/dev/kfd"))


def _resolve_device(device: str | torch.device) -> str:
    """The device name (``"cpu"``, ``"cuda"``, ``"cuda:1"``...) for ``device``; ``"auto"`` is CUDA
    when torch sees a GPU. torch is imported only if a GPU may be there or is asked for."""
    name = str(device)
    if name == "auto":
        if not _gpu_possible():
            return "cpu"
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    import torch

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BtsInputError(None, f"--device {device}: no CUDA GPU is available here (use --device cpu)")
    return str(dev)
