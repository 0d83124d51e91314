"""Post-processing of thresholded segmentations, chosen per model after training.

A packaged model's ``metadata.json`` may name one rule in ``inference.postprocess``; the
:class:`~bts_monai.inference.predictor.Predictor` applies it to the region masks after the
threshold and before they become labels (the probability maps it writes stay raw). The rule is
chosen the way nnU-Net chooses its ``postprocessing.pkl``: on the model's training cases, never on
its validation cases (README model card, ``scripts/choose_postprocessing.py``).

Rules:

* ``none``: the masks as thresholded.
* ``largest_component``: keep only the largest connected component of the tumour (the union of all
  regions, face connectivity over the whole volume; for 2D models over the stacked slices, so a
  tumour spanning several slices is one component), and clear every region outside it.

scipy's ``ndimage.label`` does the labelling: MONAI's ``KeepLargestConnectedComponent`` needs
scikit-image (or cuCIM), which this project does not otherwise depend on.
"""

from __future__ import annotations

import numpy as np

__all__ = ["POSTPROCESSING", "check_postprocess", "largest_component", "postprocess_masks"]

POSTPROCESSING: tuple[str, ...] = ("none", "largest_component")
"""The post-processing rules a model may name (``inference.postprocess`` in ``metadata.json``)."""


def check_postprocess(rule: str | None, where: object = None) -> str:
    """``rule`` checked against :data:`POSTPROCESSING` (``None`` means ``none``).

    Raises:
        ValueError: an unknown rule (naming ``where`` when given).
    """
    name = "none" if rule is None else str(rule)
    if name not in POSTPROCESSING:
        prefix = f"{where}: " if where is not None else ""
        raise ValueError(f"{prefix}post-processing {name!r} is not one of {list(POSTPROCESSING)}")
    return name


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest face-connected component of a boolean ``mask`` (an empty mask stays empty)."""
    from scipy import ndimage

    labelled, count = ndimage.label(mask)
    if count <= 1:
        return mask.astype(bool, copy=False)
    sizes = np.bincount(labelled.ravel(), minlength=count + 1)
    sizes[0] = 0  # background
    return labelled == int(np.argmax(sizes))


def postprocess_masks(masks: np.ndarray, rule: str) -> np.ndarray:
    """Apply ``rule`` to region masks of shape ``(regions, *spatial)``; returns boolean masks."""
    masks = np.asarray(masks, dtype=bool)
    if check_postprocess(rule) == "none" or masks.size == 0:
        return masks
    keep = largest_component(masks.any(axis=0))
    return masks & keep[None]
