"""The LightningModule: any MONAI network, DiceCE loss, sliding-window validation, BraTS metrics.

Network, loss, optimizer and scheduler come from configuration (LightningCLI ``class_path`` /
``init_args``; optimizer and scheduler as callables), so ``configs/*.yaml`` choose UNet, DynUNet
(nnU-Net-like, deep supervision) or SegResNet in 2D or 3D without code changes.

What the data look like (modalities, label scheme, ``regions`` or ``labels`` mode, 2D or 3D, patch
size, intensity normalisation) is read from the datamodule's ``inference_config()`` when training
starts and saved in every checkpoint beside the network's ``class_path``/``init_args``, so
:func:`bts_monai.model.checkpoint.load_checkpoint` rebuilds the network and the predictor needs no
flags.
"""

from __future__ import annotations

import functools
import importlib
import logging
import random
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from monai.inferers import SliceInferer, SlidingWindowInferer
from monai.losses import DeepSupervisionLoss, DiceCELoss
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from bts_monai.data.discovery import BRATS_MODALITIES
from bts_monai.errors import BtsInputError
from bts_monai.labels import LabelScheme, get_scheme
from bts_monai.model import metrics
from bts_monai.model.spec import INFERENCE_KEY, build_network

__all__ = ["BratsSegModule", "build_network", "default_data_config", "VAL_METRICS"]

logger = logging.getLogger(__name__)

VAL_METRICS = ("dice", "iou", "hd95")
"""Per-region validation metrics logged each epoch as ``val/<metric>_<region>`` and ``val/<metric>_mean``."""

_RNG_KEY = "bts_rng_state"


def default_data_config(spatial_dims: int = 3) -> dict[str, Any]:
    """The data settings assumed when neither a datamodule nor ``data_config`` gives them."""
    return {
        "modalities": list(BRATS_MODALITIES),
        "dataset": "brats",
        "scheme": "brats2021",
        "label_mode": "regions",
        "spatial_dims": spatial_dims,
        "roi_size": [128] * spatial_dims,
        "intensity": "zscore",
        "spacing": None,
    }


def _qualname(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def _plain_spec(value: Any) -> Any:
    """A checkpoint-safe (plain Python) description of an injected object."""
    if value is None or isinstance(value, (dict, str, int, float, bool)):
        return value
    if isinstance(value, nn.Module):
        spec = getattr(value, "_bts_net_config", None)
        return dict(spec) if spec else {"class_path": _qualname(type(value)), "init_args": None}
    if isinstance(value, functools.partial):
        return {"class_path": _qualname(value.func), "init_args": {k: v for k, v in value.keywords.items()}}
    if isinstance(value, type) or callable(value):
        name = _qualname(value) if hasattr(value, "__qualname__") else repr(value)
        return {"class_path": name}
    return repr(value)


def _import(class_path: str) -> Any:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _from_spec(value: Any, kind: str) -> Any:
    """Rebuild an object from its plain description (as :meth:`load_from_checkpoint` passes it back)."""
    if not (isinstance(value, dict) and "class_path" in value):
        return value
    init_args = value.get("init_args")
    if kind == "net":
        if init_args is None:
            raise ValueError(f"cannot rebuild network {value['class_path']}: its init_args were not recorded")
        return build_network(value["class_path"], init_args)
    if kind == "loss":
        if init_args is None:
            logger.warning("loss %s was recorded without its arguments; using the default loss", value["class_path"])
            return None
        return build_network(value["class_path"], init_args)
    return functools.partial(_import(value["class_path"]), **(init_args or {}))


class _NormalisedDeepSupervisionLoss(DeepSupervisionLoss):
    """MONAI's deep-supervision loss with weights summing to 1 (nnU-Net), so the loss keeps the
    scale of the plain loss whatever the number of heads."""

    def get_weights(self, levels: int = 1) -> list[float]:
        weights = super().get_weights(levels)
        total = sum(weights)
        return [w / total for w in weights]


class BratsSegModule(pl.LightningModule):
    """Brain-tumour segmentation with any MONAI network.

    Args:
        net: the network (``class_path``/``init_args`` in YAML): e.g. ``monai.networks.nets.DynUNet``
            (with ``deep_supervision: true`` its heads are weighted into the loss), ``UNet``,
            ``SegResNet``; ``spatial_dims`` 2 or 3. Its ``in_channels``/``out_channels`` must match
            the data (checked when training starts).
        loss: the loss (default: MONAI ``DiceCELoss`` with sigmoid for ``regions`` mode — TC, WT, ET
            as overlapping channels, like nnU-Net's region training and the NVIDIA BraTS21 winner —
            or softmax with one-hot targets for ``labels`` mode). Binary tasks (LGG) are one region.
        optimizer: optimizer factory (``class_path`` + ``init_args`` in YAML; default AdamW, lr 1e-3).
        lr_scheduler: optional scheduler factory (e.g. ``torch.optim.lr_scheduler.PolynomialLR``).
        scheduler_interval: step the scheduler every ``epoch`` or every ``step``.
        deep_supervision_weights: weights of the output and each deep-supervision head (default:
            1, 1/2, 1/4... as in nnU-Net), normalised to sum to 1.
        sw_roi_size: sliding-window size for validation (default: the datamodule's training patch).
        sw_batch_size: windows per forward pass in validation.
        sw_overlap: window overlap (0.5; MONAI's default 0.25 is weaker than nnU-Net's).
        sw_mode: blending of overlapping windows (``gaussian``, as nnU-Net; MONAI's default is
            ``constant``).
        threshold: sigmoid probability above which a voxel belongs to a region.
        overlay_cases: validation cases per epoch whose middle tumour slice is handed to the
            overlay callback (0 for none).
        data_config: data settings (keys of ``BratsDataModule.inference_config()``); filled from the
            datamodule when training starts, needed only without one.
    """

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        deep_supervision_weights: list[float] | None = None,
        sw_roi_size: list[int] | None = None,
        sw_batch_size: int = 2,
        sw_overlap: float = 0.5,
        sw_mode: Literal["gaussian", "constant"] = "gaussian",
        threshold: float = 0.5,
        overlay_cases: int = 3,
        data_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        # Under LightningCLI these are the parsed config (net as class_path/init_args dicts); from
        # Python they are the objects themselves, replaced below by plain descriptions so that
        # checkpoints load with torch.load(weights_only=True).
        with warnings.catch_warnings():
            # From Python the objects themselves arrive here; they are replaced just below.
            warnings.filterwarnings("ignore", message=r"Attribute '\w+' is an instance of `nn.Module`")
            self.save_hyperparameters()
        for key in ("net", "loss", "optimizer", "lr_scheduler"):
            self._hparams[key] = _plain_spec(self._hparams.get(key))
            self._hparams_initial[key] = self._hparams[key]
        self.net = _from_spec(net, "net")
        self.net_config: dict[str, Any] | None = self._net_spec(self.hparams["net"])
        self._loss = _from_spec(loss, "loss")
        self._loss_fn: nn.Module | None = None
        self.optimizer_factory: Callable[..., torch.optim.Optimizer] = _from_spec(optimizer, "optimizer")
        self.lr_scheduler_factory = _from_spec(lr_scheduler, "lr_scheduler")
        self.scheduler_interval = scheduler_interval
        self.deep_supervision_weights = deep_supervision_weights
        self.sw_roi_size = list(sw_roi_size) if sw_roi_size else None
        self.sw_batch_size = sw_batch_size
        self.sw_overlap = sw_overlap
        self.sw_mode = sw_mode
        self.threshold = threshold
        self.overlay_cases = overlay_cases
        self.data_config: dict[str, Any] | None = dict(data_config) if data_config else None
        self._val_records: list[dict[str, Any]] = []
        self._pending_rng: dict[str, Any] | None = None

    # ---- configuration -----------------------------------------------------------------------
    @staticmethod
    def _net_spec(spec: Any) -> dict[str, Any] | None:
        if isinstance(spec, dict) and spec.get("class_path") and spec.get("init_args") is not None:
            return {"class_path": spec["class_path"], "init_args": dict(spec["init_args"])}
        return None

    @property
    def config(self) -> dict[str, Any]:
        """The data settings in force (datamodule's, given, or the BraTS 3D defaults)."""
        if self.data_config is None:
            dims = (self.net_config or {}).get("init_args", {}).get("spatial_dims", 3)
            self.data_config = default_data_config(int(dims))
        return self.data_config

    @property
    def scheme(self) -> LabelScheme:
        """The label scheme of the data."""
        return get_scheme(self.config["scheme"])

    @property
    def label_mode(self) -> str:
        """``regions`` (sigmoid, overlapping channels) or ``labels`` (softmax classes)."""
        return self.config["label_mode"]

    @property
    def spatial_dims(self) -> int:
        """2 for slice networks, 3 for volume networks."""
        return int(self.config["spatial_dims"])

    @property
    def region_names(self) -> list[str]:
        """Region names, in the channel order of the region masks metrics are computed on."""
        return self.scheme.region_names

    def inference_config(self) -> dict[str, Any]:
        """What a predictor needs besides the weights: network spec, data settings, and how
        validation runs the network (:data:`~bts_monai.model.spec.INFERENCE_SETTINGS`)."""
        config = {"net": self.net_config, **self.config}
        config.update(
            threshold=float(self.threshold),
            sw_roi_size=[int(r) for r in (self.sw_roi_size or self.config["roi_size"])],
            sw_overlap=float(self.sw_overlap),
            sw_mode=str(self.sw_mode),
        )
        # Unknown without a datamodule: the default augmentation flips every axis.
        config.setdefault("mirror_axes", list(range(self.spatial_dims)))
        return config

    @property
    def loss_fn(self) -> nn.Module:
        """The configured loss, or DiceCE matching the label mode, wrapped for deep supervision."""
        if self._loss_fn is None:
            base = self._loss
            if base is None:
                if self.label_mode == "regions":
                    base = DiceCELoss(sigmoid=True)
                else:
                    base = DiceCELoss(softmax=True, to_onehot_y=True)
            self._loss_fn = _NormalisedDeepSupervisionLoss(
                base, weight_mode="exp", weights=self.deep_supervision_weights
            )
        return self._loss_fn

    def setup(self, stage: str) -> None:
        """Take the data settings from the datamodule and check them against the network."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "inference_config"):
            cfg = dm.inference_config()
            if self.data_config is not None and self.data_config != cfg:
                logger.info("data settings from the datamodule replace the module's: %s", cfg)
            self.data_config = cfg
            self._check_channels(dm)
        self._loss_fn = None  # the default loss depends on the label mode

    def _check_channels(self, dm: Any) -> None:
        init = (self.net_config or {}).get("init_args") or {}
        for key, have in (("in_channels", getattr(dm, "in_channels", None)), ("out_channels", dm.out_channels)):
            want = init.get(key)
            if want is not None and have is not None and int(want) != int(have):
                what = (
                    f"modalities {self.config['modalities']}"
                    if key == "in_channels"
                    else f"{self.label_mode} mode of scheme {self.config['scheme']}"
                )
                raise BtsInputError(None, f"model.net.init_args.{key} is {want} but the data need {have} ({what})")
        dims = init.get("spatial_dims")
        if dims is not None and int(dims) != self.spatial_dims:
            raise BtsInputError(
                None, f"model.net.init_args.spatial_dims is {dims} but data.spatial_dims is {self.spatial_dims}"
            )

    def configure_optimizers(self) -> Any:
        """The configured optimizer and (optional) scheduler."""
        optimizer = self.optimizer_factory(self.parameters())
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        config: dict[str, Any] = {"scheduler": scheduler, "interval": self.scheduler_interval}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = "val/dice_mean"
        return {"optimizer": optimizer, "lr_scheduler": config}

    # ---- forward and inference ---------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the main output for a batch of patches (slices for 2D networks)."""
        return self._heads(self.net(x), x.ndim)[0]

    @staticmethod
    def _heads(out: Any, ndim: int) -> list[torch.Tensor]:
        """Network output -> [main output, deep-supervision heads...]."""
        if isinstance(out, (list, tuple)):
            return list(out)
        if out.ndim == ndim + 1:  # DynUNet stacks its heads on dim 1 in training mode
            return list(out.unbind(1))
        return [out]

    def inferer(self) -> SlidingWindowInferer:
        """The whole-volume inferer: sliding windows in 3D, slice by slice (along D) in 2D."""
        roi = list(self.sw_roi_size or self.config["roi_size"])
        kwargs = {"sw_batch_size": self.sw_batch_size, "overlap": self.sw_overlap, "mode": self.sw_mode}
        if self.spatial_dims == 2:
            return SliceInferer(spatial_dim=2, roi_size=roi[:2], **kwargs)
        return SlidingWindowInferer(roi_size=roi, **kwargs)

    def predict_volume(self, image: torch.Tensor) -> torch.Tensor:
        """Logits for whole volumes ``(B, C, H, W, D)`` (2D networks run slice by slice)."""
        return self.inferer()(image, self.forward)

    def to_regions(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K, *sp)`` -> boolean region masks ``(B, R, *sp)``."""
        if self.label_mode == "regions":
            return torch.sigmoid(logits.float()) > self.threshold
        return self._index_to_regions(logits.argmax(1, keepdim=True))

    def target_regions(self, label: torch.Tensor) -> torch.Tensor:
        """Targets (region channels, or class indices ``(B, 1, *sp)``) -> boolean region masks."""
        if self.label_mode == "regions":
            return label > 0.5
        return self._index_to_regions(label.round().long())

    def _index_to_regions(self, index: torch.Tensor) -> torch.Tensor:
        values = self.scheme.all_values
        masks = []
        for labels in self.scheme.regions.values():
            idx = torch.tensor([values.index(v) for v in labels], device=index.device)
            masks.append(torch.isin(index[:, 0], idx))
        return torch.stack(masks, 1)

    # ---- training ----------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """DiceCE (with deep-supervision heads) on a batch of patches; logs loss and patch Dice."""
        image, label = batch["image"], batch["label"]
        heads = self._heads(self.net(image), image.ndim)
        loss = self.loss_fn(heads, label)
        n = image.shape[0]
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        with torch.no_grad():
            pred = self.to_regions(heads[0]).cpu().numpy()
            ref = self.target_regions(label).cpu().numpy()
        patch_dice = float(np.mean([metrics.dice(p, r) for ps, rs in zip(pred, ref) for p, r in zip(ps, rs)]))
        self.log("train/dice_mean", patch_dice, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        return loss

    # ---- validation --------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        """Start collecting per-case metrics."""
        self._val_records = []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any] | None:
        """Whole-volume inference and per-case, per-region Dice/IoU/HD95 (BraTS empty rules)."""
        image, label = batch["image"], batch["label"]
        logits = self.predict_volume(image)
        loss = float(self.loss_fn(logits.float(), label))
        pred = self.to_regions(logits)
        ref = self.target_regions(label)
        case_ids = batch.get("case_id") or self._stand_in_case_ids(batch_idx, image.shape[0])
        spacing = _batch_spacing(batch, image.ndim - 2)
        overlay = None
        for i, case_id in enumerate(case_ids):
            scores = metrics.region_metrics(pred[i].cpu().numpy(), ref[i].cpu().numpy(), self.region_names, spacing[i])
            record = {"case_id": str(case_id), "loss": loss}
            for region, values in scores.items():
                record.update({f"{m}_{region}": float(values[m]) for m in VAL_METRICS})
            self._val_records.append(record)
            if overlay is None and batch_idx < self.overlay_cases and not self.trainer.sanity_checking:
                modalities = list(self.config["modalities"])
                channel = modalities.index("flair") if "flair" in modalities else 0
                overlay = _overlay_payload(str(case_id), image[i, channel], ref[i], pred[i], self.region_names)
        return {"overlay": overlay} if overlay is not None else None

    def _stand_in_case_ids(self, batch_idx: int, n: int) -> list[str]:
        """Names for cases a batch gives none for; unique across processes, as batch indices are not."""
        if self.trainer.world_size <= 1:
            return [f"case{batch_idx}_{i}" for i in range(n)]
        if not getattr(self, "_warned_case_ids", False):
            self._warned_case_ids = True
            logger.warning(
                "validation batches carry no case_id: under DDP a case the distributed sampler repeats "
                "to even out the processes is then counted twice"
            )
        return [f"rank{self.global_rank}_case{batch_idx}_{i}" for i in range(n)]

    def on_validation_epoch_end(self) -> None:
        """Reduce per-case metrics over all processes (each case once) and log their means."""
        self._log_case_metrics("val")

    def _log_case_metrics(self, prefix: str) -> None:
        records = self._val_records
        if self.trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[list[dict[str, Any]]] = [[] for _ in range(self.trainer.world_size)]
            torch.distributed.all_gather_object(gathered, records)
            records = [r for part in gathered for r in part]
        unique = {r["case_id"]: r for r in records}  # distributed samplers repeat cases to even out ranks
        self._val_records = []
        if not unique:
            return
        # Means in case-id order: the same floating-point sums whichever rank scored which case.
        rows = [unique[k] for k in sorted(unique)]
        out: dict[str, float] = {f"{prefix}/loss": float(np.mean([r["loss"] for r in rows]))}
        for m in VAL_METRICS:
            per_region = [float(np.mean([r[f"{m}_{region}"] for r in rows])) for region in self.region_names]
            out.update({f"{prefix}/{m}_{region}": v for region, v in zip(self.region_names, per_region)})
            out[f"{prefix}/{m}_mean"] = float(np.mean(per_region))
        out[f"{prefix}/cases"] = float(len(rows))
        # Every process holds the same numbers now; sync_dist only keeps Lightning's DDP check quiet.
        main = f"{prefix}/dice_mean"
        self.log(main, out.pop(main), prog_bar=True, sync_dist=True)
        self.log_dict(out, sync_dist=True)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any] | None:
        """Same as validation."""
        return self.validation_step(batch, batch_idx)

    def on_test_epoch_start(self) -> None:
        """Start collecting per-case metrics."""
        self._val_records = []

    def on_test_epoch_end(self) -> None:
        """Same as validation, logged under ``test/``."""
        self._log_case_metrics("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Region masks (and case ids) for whole volumes."""
        pred = self.to_regions(self.predict_volume(batch["image"]))
        return {"case_id": batch.get("case_id"), "regions": pred.cpu()}

    # ---- checkpoints -------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the inference config and the random number generators' states."""
        if self.net_config is None and not getattr(self, "_warned_net_config", False):
            self._warned_net_config = True
            logger.warning(
                "the network was given neither as class_path/init_args (LightningCLI) nor made with "
                "build_network(): checkpoints hold its weights but not how to rebuild it"
            )
        checkpoint[INFERENCE_KEY] = self.inference_config()
        checkpoint[_RNG_KEY] = _rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the data settings; the RNG states are applied before the next training batch."""
        saved = checkpoint.get(INFERENCE_KEY) or {}
        # The window settings are this module's own hyperparameters, restored with them.
        data = {k: v for k, v in saved.items() if k not in ("net", "threshold", "sw_roi_size", "sw_overlap", "sw_mode")}
        if data:
            self.data_config = data
        if self.net_config is None:
            self.net_config = self._net_spec(saved.get("net"))
        self._pending_rng = checkpoint.get(_RNG_KEY)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Resume the random streams where the checkpointed run left them, right before its next step.

        Not at the epoch's start: Lightning calls no epoch-start hook when it resumes mid-epoch.
        The data loaders draw from generators of their own (:mod:`bts_monai.data.sampling`), so
        between a checkpoint and the next step nothing else moves these streams.
        """
        if self._pending_rng is not None:
            _set_rng_state(self._pending_rng)
            self._pending_rng = None


def _batch_spacing(batch: dict[str, Any], ndim: int) -> list[list[float]]:
    """Voxel size of each case in a validation batch (MetaTensor pixdim, a ``spacing`` key, or 1 mm)."""
    image = batch["image"]
    n = image.shape[0]
    pixdim = getattr(image, "pixdim", None)
    try:
        if isinstance(pixdim, (list, tuple)) and len(pixdim) == n:
            return [[float(v) for v in torch.as_tensor(p).flatten()[:ndim]] for p in pixdim]
        if isinstance(pixdim, torch.Tensor) and pixdim.numel() >= ndim:
            return [[float(v) for v in pixdim.flatten()[:ndim]]] * n
    except (TypeError, ValueError):
        pass
    spacing = batch.get("spacing")
    if spacing is not None:
        s = torch.as_tensor(spacing, dtype=torch.float64).reshape(n, -1)
        return [[float(v) for v in row[:ndim]] for row in s]
    return [[1.0] * ndim] * n


def _overlay_payload(
    case_id: str, image: torch.Tensor, ref: torch.Tensor, pred: torch.Tensor, region_names: Sequence[str]
) -> dict[str, Any]:
    """One axial slice (the one with most reference tumour) of one image channel, reference and prediction."""
    ref_np, pred_np = ref.cpu().numpy(), pred.cpu().numpy()
    if ref_np.ndim == 4:  # (R, H, W, D): pick the axial slice along D
        area = ref_np.any(0).sum(axis=(0, 1))
        if area.max() == 0:
            area = pred_np.any(0).sum(axis=(0, 1))
        k = int(area.argmax()) if area.max() > 0 else ref_np.shape[-1] // 2
        img, r, p = image[..., k], ref_np[..., k], pred_np[..., k]
    else:
        img, r, p = image, ref_np, pred_np
    return {
        "case_id": case_id,
        "image": img.float().cpu().numpy(),
        "ref": r,
        "pred": p,
        "region_names": list(region_names),
    }


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        s = state["numpy"]
        keys = s["keys"].numpy().astype(np.uint32)
        np.random.set_state(("MT19937", keys, s["pos"], s["has_gauss"], s["cached_gaussian"]))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
