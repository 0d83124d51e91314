"""MONAI dictionary transform pipelines for BraTS volumes, BraTS slices and LGG slices.

Every step is a MONAI transform where MONAI has one. Two are ours, each an array class plus a
dictionary wrapper like MONAI's own:

* :class:`LabelsToTarget` — MONAI's ``ConvertToMultiChannelBasedOnBratsClasses`` hard-codes the
  2017-2021 values (4 = ET); ours follows a :class:`~bts_monai.labels.LabelScheme` and rejects
  values outside it, naming the file.
* :class:`LoadTiffSlices` — MONAI's readers stack a list of files along a new *first* axis and
  transpose PIL images; LGG needs RGB slices as channels and slices stacked along the last
  (through-plane) axis, so a patient becomes a ``(3, H, W, N)`` volume.

The pipelines split into a deterministic part (load, orient, crop to the brain, normalise,
convert labels: what caches compute once) and a random part (crops, flips, intensity).

The brain is one mask, nnU-Net's rule: voxels non-zero in *any* channel (:func:`brain_mask`). Cropping
(:func:`is_nonzero` as ``CropForegroundd``'s ``select_fn``) and z-scoring (:class:`NormalizeInBrain`)
both use it, so inputs whose brain is negative (already normalised scans) are neither cropped away
nor normalised over a different mask per channel.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import (
    CastToTyped,
    Compose,
    CropForegroundd,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    Orientationd,
    RandAdjustContrastd,
    RandAffined,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    ScaleIntensityd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
    SqueezeDimd,
    Transform,
)
from monai.utils import convert_to_dst_type

from bts_monai._monai_import import silence_gpu_decoder_notices
from bts_monai.data.brain import (  # re-exported: the rules are shared with the torch-free inference path
    BRAIN_MASK_RULE,
    INTENSITY_MODES,
    border_nonzero_fraction,
    brain_mask,
    is_nonzero,
)
from bts_monai.labels import LabelScheme, convert_labels, get_scheme

silence_gpu_decoder_notices()

__all__ = [
    "BRAIN_MASK_RULE",
    "NormalizeInBrain",
    "NormalizeInBraind",
    "brain_mask",
    "border_nonzero_fraction",
    "is_nonzero",
    "LabelsToTarget",
    "LabelsToTargetd",
    "SelectChannels",
    "SelectChannelsd",
    "LoadTiffSlices",
    "LoadTiffSlicesd",
    "intensity_transform",
    "deterministic_transforms",
    "random_transforms",
    "train_transforms",
    "val_transforms",
]

class NormalizeInBrain(Transform):
    """Z-score every channel over the one brain mask (:func:`brain_mask`), as nnU-Net normalises MRI;
    voxels outside the mask become 0.

    MONAI's ``NormalizeIntensity(nonzero=True)`` takes each channel's own non-zero voxels as its
    mask, so a voxel that is zero in one modality but inside the brain is left out of that
    channel's statistics and never normalised; one shared mask keeps the channels on one footing.
    """

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        x = torch.as_tensor(img, dtype=torch.float32).clone()
        mask = brain_mask(x)
        if bool(mask.any()):
            for c in range(x.shape[0]):
                values = x[c][mask]
                mean, std = values.mean(), values.std(unbiased=False)
                std = torch.where(std > 0, std, torch.ones_like(std))
                x[c] = torch.where(mask, (x[c] - mean) / std, torch.zeros_like(x[c]))
        out, *_ = convert_to_dst_type(x, img, dtype=torch.float32 if isinstance(img, torch.Tensor) else np.float32)
        return out


class NormalizeInBraind(MapTransform):
    """Dictionary wrapper of :class:`NormalizeInBrain`."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.normalizer = NormalizeInBrain()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.normalizer(d[key])
        return d


def _source_name(data: Any) -> str | None:
    meta = getattr(data, "meta", None) or {}
    name = meta.get("filename_or_obj")
    if isinstance(name, (list, tuple)):
        name = name[0] if name else None
    return None if name is None else str(name)


class LabelsToTarget(Transform):
    """Label map ``(1, *spatial)`` -> training target, following a label scheme.

    Args:
        scheme: the dataset's label scheme (or its name).
        mode: ``"regions"`` -> one float channel per (overlapping) region, for sigmoid outputs;
            ``"labels"`` -> one channel of consecutive class indices, for softmax outputs.

    Raises:
        BtsInputError: the label holds values outside the scheme (names the source file).
    """

    def __init__(self, scheme: LabelScheme | str, mode: str = "regions") -> None:
        if mode not in ("regions", "labels"):
            raise ValueError(f"label mode must be 'regions' or 'labels', not {mode!r}")
        self.scheme = get_scheme(scheme)
        self.mode = mode

    def __call__(self, label: torch.Tensor | np.ndarray, source_scheme: Any = None) -> torch.Tensor:
        """Convert; ``source_scheme`` is the label file's own scheme when it is not the target's
        (a 2018 case in a 2023-scheme run): its values are read by region name."""
        arr = label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
        arr = np.rint(arr[0]).astype(np.int64)
        source = _source_name(label)
        own = self.scheme if source_scheme is None else get_scheme(source_scheme)
        if self.mode == "regions":
            out = own.region_masks(arr, self.scheme.region_names, source).astype(np.float32)
        else:
            if own is not self.scheme:
                arr = convert_labels(arr, own, self.scheme, source)
            out = self.scheme.to_index_map(arr, source)[None].astype(np.float32)
        if isinstance(label, MetaTensor):
            return MetaTensor(torch.from_numpy(out), meta=label.meta, applied_operations=label.applied_operations)
        return torch.from_numpy(out)


class LabelsToTargetd(MapTransform):
    """Dictionary wrapper of :class:`LabelsToTarget`.

    Args:
        scheme_key: the item's key holding its label file's own scheme (name or spec; the
            datalist entry's ``"scheme"``), so cases of several datasets train together; the key
            is removed. Items without it are in ``scheme``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        scheme: LabelScheme | str,
        mode: str = "regions",
        allow_missing_keys: bool = False,
        scheme_key: str = "scheme_of_label",  # not "label_...": MONAI reads such keys as the label's meta dict
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = LabelsToTarget(scheme, mode)
        self.scheme_key = scheme_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        own = d.pop(self.scheme_key, None)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key], own)
        return d


class SelectChannels(Transform):
    """Pick and order channels ``(C, *spatial)`` -> ``(len(index), *spatial)``: a 4D file's
    modalities (MSD's FLAIR, T1w, T1gd, T2w) in the model's order."""

    def __call__(self, img: torch.Tensor, index: Sequence[int]) -> torch.Tensor:
        return img[list(index)]


class SelectChannelsd(MapTransform):
    """Dictionary wrapper of :class:`SelectChannels`; the indices come from the item's
    ``index_key`` (removed), items without it are left as they are."""

    def __init__(
        self, keys: KeysCollection, index_key: str = "channel_index", allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.index_key = index_key
        self.selector = SelectChannels()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        index = d.pop(self.index_key, None)
        if index is not None:
            for key in self.key_iterator(d):
                d[key] = self.selector(d[key], index)
        return d


class LoadTiffSlices(Transform):
    """Read TIFF slices and stack them along a new last axis, channels first.

    An RGB slice ``(H, W, 3)`` becomes ``(3, H, W)``; a mask ``(H, W)`` becomes ``(1, H, W)``;
    ``N`` files give ``(C, H, W, N)``. Slice order is the order given (discovery sorts numerically).

    Raises:
        BtsInputError: an unreadable file, or slices of different sizes (naming the odd one out).
    """

    def __call__(self, paths: str | Sequence[str]) -> MetaTensor:
        from bts_monai.data.checks import read_tiff_stack

        paths = [paths] if isinstance(paths, str) else list(paths)
        vol = read_tiff_stack(paths)
        return MetaTensor(torch.from_numpy(vol), meta={"filename_or_obj": paths[0], "slices": len(paths)})


class LoadTiffSlicesd(MapTransform):
    """Dictionary wrapper of :class:`LoadTiffSlices`."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadTiffSlices()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key])
        return d


def intensity_transform(mode: str, key: str = "image") -> MapTransform:
    """The intensity normalisation shared by training, caching and inference.

    ``zscore``: per channel, over the brain mask (non-zero in any channel, :class:`NormalizeInBrain`),
    as nnU-Net does for MRI; ``minmax``: per channel to [0, 1]; ``unit``: uint8 images (LGG) / 255.
    """
    if mode == "zscore":
        return NormalizeInBraind(keys=key)
    if mode == "minmax":
        return ScaleIntensityd(keys=key, minv=0.0, maxv=1.0, channel_wise=True)
    if mode == "unit":
        return ScaleIntensityRanged(keys=key, a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0, clip=True)
    raise ValueError(f"intensity must be one of {INTENSITY_MODES}, not {mode!r}")


def deterministic_transforms(
    scheme: LabelScheme | str,
    kind: str = "nifti",
    intensity: str = "zscore",
    label_mode: str = "regions",
    spacing: Sequence[float] | None = None,
    crop_foreground: bool = True,
    with_label: bool = True,
) -> Compose:
    """Load -> channels first -> RAS -> (resample) -> target -> crop to brain -> normalise.

    Args:
        kind: ``"nifti"`` (``image`` is a list of modality files, ``label`` a file) or
            ``"tiff"`` (``image``/``label`` are lists of slice files).
    """
    keys = ["image", "label"] if with_label else ["image"]
    if kind == "nifti":
        steps: list[Any] = [
            LoadImaged(keys=keys, image_only=True),
            EnsureChannelFirstd(keys=keys),
            SelectChannelsd(keys="image"),  # 4D inputs (MSD): the model's modalities, in its order
            Orientationd(keys=keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        ]
        if spacing:
            modes = ["bilinear", "nearest"] if with_label else ["bilinear"]
            steps.append(Spacingd(keys=keys, pixdim=tuple(spacing), mode=modes))
    elif kind == "tiff":
        steps = [LoadTiffSlicesd(keys=keys)]
    else:
        raise ValueError(f"unknown input kind {kind!r}")
    if with_label:
        steps.append(LabelsToTargetd(keys="label", scheme=scheme, mode=label_mode))
    if crop_foreground and kind == "nifti":
        # BraTS volumes are mostly zero background: train and infer inside the brain's box.
        steps.append(CropForegroundd(keys=keys, source_key="image", select_fn=is_nonzero, allow_smaller=True))
    steps += [intensity_transform(intensity), CastToTyped(keys=keys, dtype=np.float32)]
    return Compose(steps)


def random_transforms(
    roi_size: Sequence[int],
    spatial_dims: int = 3,
    num_samples: int = 1,
    pos: float = 1.0,
    neg: float = 1.0,
    augment: bool = True,
    spatial_augment: bool = False,
) -> Compose:
    """Random patches (positive/negative sampling inside the brain), flips and intensity jitter.

    ``spatial_augment`` adds what nnU-Net's default augmentation does, with MONAI's transforms:
    rotation (±15°) and scaling (±15%) with probability 0.2, Gaussian noise, Gaussian blur and
    gamma, each with probability 0.15 (the patch keeps its size; the label is resampled nearest).

    For 2D training from 3D stacks, ``roi_size`` is ``(H, W)``: patches of one slice are cut
    with depth 1 and squeezed; slices come from inside the brain's bounding box, so slices with
    no brain are skipped.
    """
    keys = ["image", "label"]
    roi = list(roi_size)
    crop_roi = roi + [1] if spatial_dims == 2 else roi
    # RandCropByPosNegLabeld treats channel 0 of a multi-channel label as background and takes
    # the union of the rest: for TC/WT/ET targets that union is WT, the whole tumour.
    # Negatives need no brain mask: the deterministic part already cropped to the brain's box,
    # so every slice (and nearly every voxel) it draws from holds brain.
    steps: list[Any] = [
        SpatialPadd(keys=keys, spatial_size=crop_roi),
        RandCropByPosNegLabeld(
            keys=keys,
            label_key="label",
            spatial_size=crop_roi,
            pos=pos,
            neg=neg,
            num_samples=num_samples,
            allow_smaller=False,
        ),
    ]
    if spatial_dims == 2:
        steps.append(SqueezeDimd(keys=keys, dim=-1))
    if augment:
        steps += [RandFlipd(keys=keys, prob=0.5, spatial_axis=a) for a in range(spatial_dims)]
        steps += [
            RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
            RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
        ]
    if spatial_augment:
        angle = np.deg2rad(15.0)
        steps += [
            RandAffined(
                keys=keys,
                prob=0.2,
                rotate_range=[angle] * (3 if spatial_dims == 3 else 1),
                scale_range=[0.15] * spatial_dims,
                mode=["bilinear", "nearest"],
                padding_mode="zeros",
            ),
            RandGaussianNoised(keys="image", prob=0.15, std=0.1),
            RandGaussianSmoothd(keys="image", prob=0.15, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0)),
            RandAdjustContrastd(keys="image", prob=0.15, gamma=(0.7, 1.5)),
        ]
    steps.append(EnsureTyped(keys=keys, dtype=torch.float32, track_meta=False))
    return Compose(steps)


def train_transforms(
    scheme: LabelScheme | str,
    roi_size: Sequence[int],
    kind: str = "nifti",
    spatial_dims: int = 3,
    intensity: str = "zscore",
    label_mode: str = "regions",
    spacing: Sequence[float] | None = None,
    num_samples: int = 1,
    augment: bool = True,
    spatial_augment: bool = False,
) -> Compose:
    """The whole training chain: :func:`deterministic_transforms` then :func:`random_transforms`."""
    return Compose(
        [
            deterministic_transforms(scheme, kind, intensity, label_mode, spacing),
            random_transforms(roi_size, spatial_dims, num_samples, augment=augment, spatial_augment=spatial_augment),
        ]
    )


def val_transforms(
    scheme: LabelScheme | str,
    kind: str = "nifti",
    intensity: str = "zscore",
    label_mode: str = "regions",
    spacing: Sequence[float] | None = None,
) -> Compose:
    """Validation: the deterministic part on the whole volume (or LGG patient stack)."""
    return Compose(
        [
            deterministic_transforms(scheme, kind, intensity, label_mode, spacing),
            EnsureTyped(keys=["image", "label"], dtype=torch.float32),
        ]
    )
