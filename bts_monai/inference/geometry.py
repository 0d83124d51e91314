"""The geometry round trip: input grid -> model space (RAS, resampled, cropped to the brain) -> back.

The forward half is training's own deterministic transforms (:func:`~bts_monai.data.transforms.
deterministic_transforms`) without the loading steps (:mod:`bts_monai.inference.io` reads and
checks the files): the same orientation to RAS, resampling, crop to the brain's bounding box and
intensity normalisation, so the network sees at inference exactly what it saw in training. The
backward half is MONAI's inverse of those same transforms (pad the box back, undo resampling,
reorient to the file's axes); the result is written with the input's own header
(:func:`~bts_monai.inference.io.nifti_like`), so shape, affine and qform/sform codes are the input's.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from bts_monai._monai_import import import_monai

import_monai()  # before MONAI's first import: keeps matplotlib and tensorboard out (see the module)

from monai.data import MetaTensor  # noqa: E402
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged  # noqa: E402

from bts_monai.data.transforms import LoadTiffSlicesd, deterministic_transforms  # noqa: E402

__all__ = ["model_space_transforms", "to_model_space", "to_input_grid", "ras_oriented"]

_LOADERS = (LoadImaged, EnsureChannelFirstd, LoadTiffSlicesd)


def model_space_transforms(config: dict[str, Any], kind: str = "nifti") -> Compose:
    """Training's deterministic transforms for images, minus the loaders.

    Args:
        config: a checkpoint's inference config (``scheme``, ``intensity``, ``label_mode``, ``spacing``).
        kind: ``"nifti"`` (orientation, resampling, crop to the brain) or ``"tiff"`` (LGG slices:
            intensity only, as in training).
    """
    full = deterministic_transforms(
        config["scheme"],
        kind=kind,
        intensity=config["intensity"],
        label_mode=config["label_mode"],
        spacing=config.get("spacing"),
        with_label=False,
    )
    return Compose([t for t in full.transforms if not isinstance(t, _LOADERS)])


def to_model_space(image: np.ndarray, affine: np.ndarray, transforms: Compose, source: str = "") -> MetaTensor:
    """``(C, *spatial)`` image in the file's grid -> the network's input space (a MetaTensor that
    remembers every invertible step, for :func:`to_input_grid`)."""
    mt = MetaTensor(torch.from_numpy(np.ascontiguousarray(image)), affine=torch.as_tensor(affine, dtype=torch.float64))
    mt.meta["filename_or_obj"] = source
    return transforms({"image": mt})["image"]


def to_input_grid(values: torch.Tensor, model_space: MetaTensor, transforms: Compose) -> torch.Tensor:
    """Undo :func:`to_model_space` on a prediction ``(K, *model_space_spatial)`` (probabilities):
    pad the box back with zeros, undo resampling, reorient to the file's axes.

    Returns:
        ``(K, *input_spatial)`` float tensor in the input file's voxel grid.
    """
    pred = MetaTensor(values, meta=dict(model_space.meta), applied_operations=list(model_space.applied_operations))
    pred.affine = model_space.affine
    with warnings.catch_warnings():
        # MONAI warns about metadata keys it does not need for the inverse.
        warnings.simplefilter("ignore")
        out = transforms.inverse({"image": pred})["image"]
    return out.as_tensor() if isinstance(out, MetaTensor) else out


def ras_oriented(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder and flip the spatial axes of ``volume`` (``(*spatial)`` or ``(C, *spatial)``) to the
    closest RAS orientation of ``affine``, for display; returns ``(array, zooms)``."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    tr = nib.orientations.ornt_transform(ornt, nib.orientations.axcodes2ornt("RAS"))
    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))
    if volume.ndim == 4:
        out = np.stack([nib.orientations.apply_orientation(v, tr) for v in volume])
    else:
        out = nib.orientations.apply_orientation(volume, tr)
    perm = [int(a) for a in ornt[:, 0]]
    ras_zooms = np.empty(3)
    for src_axis, dst_axis in enumerate(perm):
        ras_zooms[dst_axis] = zooms[src_axis]
    return out, ras_zooms
