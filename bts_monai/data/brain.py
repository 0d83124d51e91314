"""The brain mask and the intensity modes shared by training, caching and inference (NumPy only).

Kept apart from :mod:`bts_monai.data.transforms` (MONAI and torch) so that the torch-free inference
path (:mod:`bts_monai.inference.engine`) and the input checks of :mod:`bts_monai.inference.io` use
the very same rules without importing either.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "BRAIN_MASK_RULE",
    "INTENSITY_MODES",
    "NOT_SKULL_STRIPPED",
    "border_nonzero_fraction",
    "brain_mask",
    "is_nonzero",
]

INTENSITY_MODES = ("zscore", "minmax", "unit")

BRAIN_MASK_RULE = "nonzero-any-channel"
"""The brain mask: voxels non-zero in any channel (nnU-Net's ``create_nonzero_mask``, without its
hole filling: a voxel zero in every channel inside the brain does not move the bounding box and
is background in every modality)."""

NOT_SKULL_STRIPPED = 0.5
"""Share of non-zero voxels on a volume's border above which it does not look skull-stripped."""


def is_nonzero(image: Any) -> Any:
    """Element-wise ``image != 0``: ``CropForegroundd``'s ``select_fn`` for :data:`BRAIN_MASK_RULE`
    (MONAI's default, ``> 0``, crops negative-valued brains away). MONAI reduces it over channels
    with ``any``, which makes the mask "non-zero in any channel"."""
    return image != 0


def brain_mask(image: Any) -> Any:
    """``(C, *spatial)`` -> boolean ``(*spatial)``: non-zero in any channel (:data:`BRAIN_MASK_RULE`)."""
    return (image != 0).any(0)


def border_nonzero_fraction(image: Any, width: int = 2) -> float:
    """Share of the voxels within ``width`` of the volume's faces that are non-zero in some channel.

    Skull-stripped MRI (BraTS) has a zero background, so this is about 0; a scan with skull, neck
    and noise, or one normalised over the whole volume, gives nearly 1.
    """
    array = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    mask = np.asarray(brain_mask(array))
    inner = mask[tuple(slice(width, -width) if s > 2 * width else slice(0, 0) for s in mask.shape)]
    border = mask.size - inner.size
    return float(mask.sum() - inner.sum()) / border if border else 0.0
