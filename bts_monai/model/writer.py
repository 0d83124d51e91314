"""``lightning predict`` to files: each case's segmentation in its scan's own grid, as ``bts-infer`` writes it.

:meth:`~bts_monai.model.module.BratsSegModule.predict_step` gives region masks on the datamodule's
preprocessed grid (RAS, cropped to the brain, maybe resampled). :class:`SegmentationWriter`, a
Lightning ``BasePredictionWriter``, takes each batch as it is predicted (on every DDP process, each
writing the cases its sampler gave it: Lightning's predict sampler hands out every case once) and
writes ``OUTPUT_DIR/<case>_seg.nii.gz``: MONAI's inverse of the very transforms that made the batch
(:func:`~bts_monai.inference.geometry.to_input_grid`), then the :class:`~bts_monai.inference.
predictor.Predictor`'s own rules for the label values (the input dataset's scheme by default) and
:meth:`~bts_monai.inference.predictor.Prediction.save` for the file (the input's header, written
atomically, never over an input).

```bash
lightning predict --config configs/brats21.yaml --ckpt_path run.ckpt --trainer.devices 4 \\
    --trainer.strategy ddp --trainer.callbacks+=bts_monai.model.writer.SegmentationWriter \\
    --trainer.callbacks.output_dir predictions/ --return_predictions false
```

The masks are thresholded before they are mapped back (``predict_step`` returns masks, not
probabilities): without resampling (``spacing`` unset, every shipped config) the files equal
``bts-infer``'s voxel for voxel; with resampling a voxel on a region's edge can differ.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from monai.data import MetaTensor, decollate_batch
from pytorch_lightning.callbacks import BasePredictionWriter

from bts_monai.data import layouts
from bts_monai.errors import BtsInputError

__all__ = ["SegmentationWriter"]

logger = logging.getLogger(__name__)


class SegmentationWriter(BasePredictionWriter):
    """Write every predicted case as ``<output_dir>/<case>_seg.nii.gz`` in its scan's grid.

    Args:
        output_dir: the folder for the segmentations (created if needed).
        output_scheme: label values to write, as ``bts-infer --output-scheme``: ``input`` (the
            input dataset's own, else the model's), ``model``, or a scheme name.
        overwrite: replace existing files (default: refuse them, as ``bts-infer`` does).
        transform: the transforms that made the batches (default: the predict dataloader's
            dataset's ``transform``, as :meth:`~bts_monai.data.datamodule.BratsDataModule.
            predict_dataloader` sets it); their inverse maps the masks back.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike[str],
        output_scheme: str = "input",
        overwrite: bool = False,
        transform: Any = None,
    ) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.output_scheme = output_scheme
        self.overwrite = bool(overwrite)
        self.transform = transform
        self.written: list[Path] = []
        """The files this process wrote, in order."""
        self._predictor: Any = None

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Set up the output rules from the module's inference config (as a Predictor of its network)."""
        from bts_monai.inference.predictor import Predictor
        from bts_monai.labels import get_scheme

        config = pl_module.inference_config()  # type: ignore[operator]
        if int(config["spatial_dims"]) != 3 or config.get("dataset") == "lgg":
            raise BtsInputError(None, "SegmentationWriter writes NIfTI volumes; segment LGG slices with bts-infer")
        # The network already ran in predict_step: the Predictor only lends its output rules.
        self._predictor = Predictor(pl_module.net, config, device=pl_module.device, backend="torch")
        if self.output_scheme == "model":
            self._predictor.output_scheme = self._predictor.scheme
        elif self.output_scheme != "input":
            self._predictor.output_scheme = get_scheme(self.output_scheme)
        self.written = []

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Write the batch's cases."""
        transform = self.transform if self.transform is not None else _dataloader_transform(trainer, dataloader_idx)
        regions = prediction["regions"] if isinstance(prediction, dict) else prediction
        for item, masks in zip(decollate_batch(batch, detach=True), regions):
            self.written += self.write_case(item, masks, transform)

    def write_case(self, item: dict[str, Any], masks: torch.Tensor, transform: Any) -> list[Path]:
        """One case: ``item`` as the dataloader gave it (its ``image`` remembers the transforms
        applied), ``masks`` ``(R, *preprocessed grid)`` from ``predict_step``. Returns the files written."""
        from bts_monai.inference.geometry import to_input_grid
        from bts_monai.inference.postprocess import postprocess_masks
        from bts_monai.inference.predictor import Prediction

        image = item["image"]
        if not isinstance(image, MetaTensor):
            raise TypeError("the batch's image carries no transform record (MetaTensor): cannot map it back")
        p = self._predictor
        case = _reference_case(image, p.inputs, item.get("case_id"))
        values = torch.as_tensor(masks).detach().cpu().to(torch.float32)
        grid = to_input_grid(values, image, transform).numpy()
        if tuple(grid.shape[1:]) != case.spatial_shape:  # a broken round trip must never be written
            raise RuntimeError(f"{case.case_id}: round trip gave shape {grid.shape[1:]}, expected {case.spatial_shape}")
        regions = postprocess_masks(grid > 0.5, p.postprocess)  # the model's rule, as bts-infer applies it
        labels = p.scheme.from_regions(regions)
        out_scheme = p.output_scheme_for(case)
        if out_scheme is not p.scheme:
            from bts_monai.labels import convert_labels

            labels = convert_labels(labels, p.scheme, out_scheme)
        pred = Prediction(
            case, labels, regions.astype(np.float32), out_scheme, convention=p.convention, provenance=p.provenance()
        )
        path = self.output_dir / layouts.seg_output_name(case.case_id)
        written = pred.save(path, overwrite=self.overwrite)
        logger.info("%s: %s", case.case_id, path)
        return written


def _dataloader_transform(trainer: pl.Trainer, dataloader_idx: int) -> Any:
    loaders = trainer.predict_dataloaders
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[dataloader_idx]
    elif isinstance(loaders, dict):
        loaders = list(loaders.values())[dataloader_idx]
    transform = getattr(getattr(loaders, "dataset", None), "transform", None)
    if transform is None:
        raise ValueError("the predict dataloader's dataset has no transform: give SegmentationWriter(transform=...)")
    return transform


def _reference_case(image: MetaTensor, inputs: Any, case_id: Any = None) -> Any:
    """The scan a batch item was read from, as a header-only :class:`~bts_monai.inference.io.LoadedCase`
    (its files resolved as ``bts-infer`` resolves them: case id, dataset scheme, reference header)."""
    import nibabel as nib

    from bts_monai.inference.io import LoadedCase, resolve_input

    source = image.meta.get("filename_or_obj")
    first = Path(str(source[0] if isinstance(source, (list, tuple)) else source))
    named = layouts.parse_modality_file(first.name, strict=False)
    case_input = resolve_input(first.parent if named is not None and named.kind != "seg" else first, inputs)
    files = [str(f) for f in case_input.files.values()]
    reference = nib.load(files[0])  # the header only: the voxels are never read here
    shape = tuple(int(s) for s in reference.shape[:3])
    return LoadedCase(
        str(case_id) if case_id is not None else case_input.case_id,
        case_input.source,
        "nifti",
        np.empty((0, *shape), dtype=np.float32),  # no image: the writer draws no overlay
        np.asarray(reference.affine),
        reference,
        scheme=case_input.scheme,
        files=tuple(files),
    )
