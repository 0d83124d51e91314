"""The LightningDataModule: dataset folder or datalist -> seeded split -> MONAI datasets -> loaders."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from monai.data import CacheDataset, DataLoader, Dataset, PersistentDataset

from bts_monai.data.discovery import (
    BRATS_MODALITIES,
    LGG_CHANNELS,
    check_case,
    entry_item,
    entry_scheme,
    fixed_split,
    make_datalist,
    read_datalist,
    select_split,
    write_datalist,
)
from bts_monai.data.sampling import EpochSampler, ResumableDataLoader, SeededDataset
from bts_monai.data.transforms import deterministic_transforms, train_transforms, val_transforms
from bts_monai.errors import BtsInputError
from bts_monai.labels import LabelScheme, get_scheme

__all__ = ["BratsDataModule"]

logger = logging.getLogger(__name__)
# Empty LGG slices (most of them) have nothing to sample positives from; MONAI warns each time.
warnings.filterwarnings("ignore", message="Num foregrounds 0", category=UserWarning)


class BratsDataModule(pl.LightningDataModule):
    """BraTS 2017-2021 volumes (3D, or 2D axial slices) and Kaggle LGG slices, for LightningCLI.

    Args:
        data_root: the extracted dataset folder (any level above the case folders). With
            ``synthetic``, the embedded sample is generated there if it is not yet.
        datalist: a datalist JSON (``bts-datalist``) to use instead of discovering ``data_root``.
        dataset: ``auto`` or a layout of :data:`~bts_monai.data.discovery.DATASET_CHOICES`
            (``brats2017``..``brats2021``, ``brats2023``, ``brats2024``, ``msd``, ``nnunet``, ``lgg``);
            a folder holding both BraTS and LGG cases needs an explicit choice. BraTS releases of
            both label schemes (and MSD, nnU-Net BraTS sets) train together: each case's labels are
            turned into the regions by its own scheme.
        synthetic: generate the small synthetic BraTS-like/LGG-like sample into ``data_root``
            (default ``./bts_sample``); for demos and tests.
        modalities: BraTS modalities and their channel order (all four, or subsets such as
            ``[flair, t1ce, t2]``); ignored for LGG, whose slices are RGB.
        label_mode: ``regions`` (overlapping TC/WT/ET, sigmoid) or ``labels`` (softmax classes).
        spatial_dims: 3 for volumes, 2 for slices (BraTS axial slices or LGG).
        roi_size: training patch size (3 numbers for 3D, 2 for 2D).
        num_samples: random patches cut from each loaded case (amortises loading).
        batch_size: cases per training batch (each contributes ``num_samples`` patches).
        val_fraction: validation share of the labelled cases for a hold-out split.
        folds: k-fold cross-validation (e.g. 5, like nnU-Net) instead of a hold-out split.
        fold: which fold validates when ``folds`` is set.
        seed: seed of the split (and of nothing else).
        split_file: where the split is written and, when it exists, reused from; default
            ``splits/<dataset folder>_<split>.json`` in the working folder.
        spacing: resample to this voxel size in mm (BraTS is already 1 mm isotropic).
        intensity: ``zscore`` (inside the brain, per channel), ``minmax``, ``unit`` (uint8/255) or
            ``auto`` (``unit`` for LGG, ``zscore`` otherwise).
        cache: ``none``, ``memory`` (MONAI CacheDataset of the deterministic part), ``disk``
            (MONAI PersistentDataset under ``cache_dir``) or ``preprocessed`` (BraTS volumes: the
            deterministic part run once per case into compact float16 arrays under ``cache_dir``,
            as ``bts-preprocess`` does; training patches are read lazily from them).
        cache_dir: folder of the on-disk cache (default ``.bts_cache`` in the working folder).
        num_workers: data loader workers.
        download: fetch the dataset from Kaggle into ``data_root`` in ``prepare_data``.
        augment: random flips and intensity jitter in training.
        check: check every case's headers (shapes and affines agree) during ``setup``.
        val_cases: a fixed validation split by case id (patient): these cases validate and every
            other labelled case trains, whatever ``val_fraction`` and ``seed`` say. Used by the
            default-model configs so the reported split never moves.
        spatial_augment: add nnU-Net-style spatial and intensity augmentation (MONAI's
            ``RandAffined`` rotation/scaling, gamma, Gaussian noise and blur) to the flips.
        augment_seed: seed of the training order and of every random transform (default: the
            run's ``seed_everything`` seed, else 0). Each sample's augmentation is a function of
            (seed, epoch, index) alone (:mod:`bts_monai.data.sampling`), so ``--ckpt_path last``
            continues exactly where a stopped run was, even mid-epoch and with workers.
    """

    def __init__(
        self,
        data_root: str | None = None,
        datalist: str | None = None,
        dataset: str = "auto",
        synthetic: bool = False,
        modalities: list[str] | None = None,
        label_mode: Literal["regions", "labels"] = "regions",
        spatial_dims: int = 3,
        roi_size: list[int] | None = None,
        num_samples: int = 2,
        batch_size: int = 1,
        val_fraction: float = 0.1,
        folds: int | None = None,
        fold: int = 0,
        seed: int = 0,
        split_file: str | None = None,
        spacing: list[float] | None = None,
        intensity: str = "auto",
        cache: Literal["none", "memory", "disk", "preprocessed"] = "none",
        cache_dir: str | None = None,
        num_workers: int = 2,
        download: bool = False,
        augment: bool = True,
        check: bool = True,
        val_cases: list[str] | None = None,
        spatial_augment: bool = False,
        augment_seed: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if data_root is None and datalist is None and not synthetic:
            raise BtsInputError(None, "give data_root (a dataset folder) or datalist (a datalist JSON)")
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, not {spatial_dims}")
        self.data_root = data_root if data_root is not None else ("bts_sample" if synthetic else None)
        self.datalist_path = datalist
        self.dataset = dataset.lower()
        self.synthetic = synthetic
        self.modalities = list(modalities) if modalities else list(BRATS_MODALITIES)
        bad = [m for m in self.modalities if m not in BRATS_MODALITIES]
        if bad:
            raise ValueError(f"unknown modalities {bad}; choose from {list(BRATS_MODALITIES)}")
        self.label_mode = label_mode
        self.spatial_dims = spatial_dims
        default_roi = [128, 128, 128] if spatial_dims == 3 else [224, 224]
        self.roi_size = list(roi_size) if roi_size else default_roi
        if len(self.roi_size) != spatial_dims:
            raise ValueError(f"roi_size {self.roi_size} does not have {spatial_dims} numbers")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.folds = folds
        self.fold = fold
        self.seed = seed
        self.split_file = split_file
        self.spacing = spacing
        self._intensity = intensity
        self.cache = cache
        self.cache_dir = cache_dir or ".bts_cache"
        self.num_workers = num_workers
        self.download = download
        self.augment = augment
        self.check = check
        self.val_cases = list(val_cases) if val_cases else None
        self.spatial_augment = spatial_augment
        self.augment_seed = augment_seed
        self._scheme: LabelScheme | None = None
        self.train_entries: list[dict[str, Any]] = []
        self.val_entries: list[dict[str, Any]] = []
        self.test_entries: list[dict[str, Any]] = []
        self.train_ds: Any = None
        self.val_ds: Any = None

    # ---- what the model and the predictor need to know -------------------------------------
    @property
    def is_lgg(self) -> bool:
        """Whether the data are Kaggle LGG slices."""
        return self.dataset == "lgg"

    @property
    def scheme(self) -> LabelScheme:
        """The training target's label scheme: the dataset's (``brats2021`` for BraTS 2017-2021),
        the one scheme every case shares (BraTS 2023, MSD, an nnU-Net dataset.json), or
        ``brats2021`` for a mix. Each case's labels are read in its own scheme by region name."""
        if self._scheme is not None:
            return self._scheme
        if self.is_lgg:
            return get_scheme("lgg")
        return get_scheme(self.dataset if self.dataset.startswith("brats") or self.dataset == "msd" else "brats")

    @property
    def region_names(self) -> list[str]:
        """Names of the output channels in ``regions`` mode."""
        return self.scheme.region_names

    @property
    def in_channels(self) -> int:
        """Network input channels."""
        return len(LGG_CHANNELS) if self.is_lgg else len(self.modalities)

    @property
    def out_channels(self) -> int:
        """Network output channels: one per region, or one per label value."""
        return self.scheme.num_regions if self.label_mode == "regions" else len(self.scheme.all_values)

    @property
    def intensity(self) -> str:
        """The intensity normalisation in force."""
        if self._intensity != "auto":
            return self._intensity
        return "unit" if self.is_lgg else "zscore"

    def inference_config(self) -> dict[str, Any]:
        """Everything the Predictor needs besides the network, as plain Python."""
        return {
            "modalities": list(LGG_CHANNELS) if self.is_lgg else list(self.modalities),
            "dataset": self.dataset if self.dataset != "auto" else "brats",
            "scheme": self.scheme.name,
            "label_mode": self.label_mode,
            "spatial_dims": self.spatial_dims,
            "roi_size": list(self.roi_size),
            "intensity": self.intensity,
            "spacing": list(self.spacing) if self.spacing else None,
            # The axes training's random flips mirror: the only ones test-time mirroring may use.
            "mirror_axes": list(range(self.spatial_dims)) if self.augment else [],
        }

    # ---- Lightning hooks ------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Generate the synthetic sample or download the dataset (once, on one process)."""
        if self.synthetic:
            self._make_synthetic()
        elif self.download:
            from bts_monai.data.download import download_dataset

            if self.dataset == "auto" or self.data_root is None:
                raise BtsInputError(None, "download: true needs data_root and dataset: brats2020, brats2021 or lgg")
            download_dataset(self.dataset, self.data_root)
        if self.cache == "preprocessed":
            dl = self._resolve_datalist()
            self._preprocess(dl["training"] + dl.get("validation", []))

    def _make_synthetic(self) -> None:
        from bts_monai.data.synthetic import make_brats_dataset, make_lgg_dataset

        root = Path(self.data_root)
        if self.is_lgg:
            if not (root / "kaggle_3m").exists():
                make_lgg_dataset(root / "kaggle_3m", n_patients=6, n_slices=12, size=64)
        elif not (root / "brats2021").exists():
            make_brats_dataset(root / "brats2021", n_cases=8, layout="brats2021", shape=(64, 64, 48))

    def _resolve_datalist(self) -> dict[str, Any]:
        dl = self._find_datalist()
        return self._fixed_split(dl) if self.val_cases else dl

    def _fixed_split(self, dl: dict[str, Any]) -> dict[str, Any]:
        return fixed_split(dl, self.val_cases or [], self.datalist_path or self.data_root)

    def _find_datalist(self) -> dict[str, Any]:
        if self.datalist_path:
            return read_datalist(self.datalist_path)
        root = Path(self.data_root)
        if self.synthetic:
            root = root / ("kaggle_3m" if self.is_lgg else "brats2021")
        split_file = Path(self.split_file) if self.split_file else self._default_split_file(root)
        if split_file.exists():
            logger.info("reusing the split in %s", split_file)
            return read_datalist(split_file)
        dl = make_datalist(
            root,
            dataset="lgg" if self.is_lgg else ("auto" if self.dataset == "auto" else self.dataset),
            val_fraction=self.val_fraction,
            folds=self.folds,
            seed=self.seed,
            check=False,  # _item checks each training/validation case's headers; once is enough
        )
        write_datalist(dl, split_file)
        logger.info("wrote the split to %s", split_file)
        return dl

    def _default_split_file(self, root: Path) -> Path:
        mode = f"{self.folds}fold" if self.folds else f"val{self.val_fraction:g}"
        key = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:8]
        return Path("splits") / f"{root.name}_{self.dataset}_{mode}_seed{self.seed}_{key}.json"

    def setup(self, stage: str | None = None) -> None:
        """Read or make the split and build the datasets."""
        if self.train_ds is not None or self.val_ds is not None:
            return
        dl = self._resolve_datalist()
        datasets = {e["dataset"] for e in dl["training"] + dl.get("validation", [])}
        has_lgg = "lgg" in datasets
        if self.dataset == "auto":
            if has_lgg and len(datasets) > 1:
                raise BtsInputError(self.data_root, f"holds several datasets {sorted(datasets)}: set dataset")
            labelled = dl["training"] + dl.get("validation", [])
            schemes = {json.dumps(entry_scheme(e).spec(), sort_keys=True): entry_scheme(e) for e in labelled}
            if len(schemes) == 1:
                self._scheme = next(iter(schemes.values()))
            # One release found (e.g. brats2018): name it; mixed BraTS releases share one scheme.
            self.dataset = datasets.pop() if len(datasets) == 1 else "brats"
        if self.is_lgg and self.spatial_dims != 2:
            raise ValueError("LGG slices are 2D: set spatial_dims: 2")
        train, val = select_split(dl, self.fold)
        self.train_entries, self.val_entries = train, val
        self.test_entries = list(dl.get("test", []))
        if not train:
            raise BtsInputError(self.datalist_path or self.data_root, "no labelled training cases")
        logger.info("%s: %d training and %d validation cases", self.dataset, len(train), len(val))
        if self.cache == "preprocessed":
            self._setup_preprocessed(train, val)
            return
        kind = "tiff" if self.is_lgg else "nifti"
        t_train = train_transforms(
            self.scheme,
            self.roi_size,
            kind=kind,
            spatial_dims=self.spatial_dims,
            intensity=self.intensity,
            label_mode=self.label_mode,
            spacing=self.spacing,
            num_samples=self.num_samples,
            augment=self.augment,
            spatial_augment=self.spatial_augment,
        )
        t_val = val_transforms(self.scheme, kind, self.intensity, self.label_mode, self.spacing)
        self.train_ds = self._dataset(self._train_items(train), t_train)
        self.val_ds = self._dataset([self._item(e) for e in val], t_val)

    def _preprocess(self, entries: list[dict[str, Any]]) -> Any:
        """Build (or reuse: it is idempotent) the preprocessed cache of ``entries``."""
        from bts_monai.data.cache import CacheSettings, PreprocessedCache

        if self.is_lgg or any("slices" in e for e in entries):
            raise ValueError("cache: preprocessed is for BraTS volumes; LGG slices are small, use cache: memory")
        settings = CacheSettings(
            self.scheme.name, tuple(self.modalities), self.label_mode, self.intensity, self.spacing
        )
        cache = PreprocessedCache(self.cache_dir, settings)
        cache.build(entries, workers=self.num_workers)
        return cache

    def _setup_preprocessed(self, train: list[dict[str, Any]], val: list[dict[str, Any]]) -> None:
        from bts_monai.data.cache import PreprocessedDataset, preprocessed_train_transforms, preprocessed_val_transforms

        cache = self._preprocess(train + val)  # after prepare_data, every case is already there
        t_train = preprocessed_train_transforms(
            self.roi_size, self.spatial_dims, self.num_samples, augment=self.augment,
            spatial_augment=self.spatial_augment,
        )
        self.train_ds = PreprocessedDataset(cache, [e["case_id"] for e in train], t_train)
        self.val_ds = PreprocessedDataset(cache, [e["case_id"] for e in val], preprocessed_val_transforms())

    def _item(self, entry: dict[str, Any]) -> dict[str, Any]:
        """A datalist entry -> the transform input of one case (LGG: the patient's slice stack)."""
        if "slices" in entry:
            return {
                "image": [s["image"] for s in entry["slices"]],
                "label": [s["label"] for s in entry["slices"]],
                "case_id": entry["case_id"],
            }
        if self.check:
            check_case(entry)
        return entry_item(entry, self.modalities)

    def _train_items(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # LGG trains on single slices; the split stays by patient because it was made on entries.
        items = []
        for e in entries:
            if "slices" in e:
                items += [
                    {"image": [s["image"]], "label": [s["label"]], "case_id": f"{e['case_id']}_{i + 1}"}
                    for i, s in enumerate(e["slices"])
                ]
            else:
                items.append(self._item(e))
        return items

    def _dataset(self, items: list[dict[str, Any]], transform: Any) -> Dataset:
        if self.cache == "memory":
            return CacheDataset(items, transform, num_workers=max(self.num_workers, 1), progress=True)
        if self.cache == "disk":
            return PersistentDataset(items, transform, cache_dir=self.cache_dir)
        return Dataset(items, transform)

    @property
    def run_seed(self) -> int:
        """The training order's and the augmentation's seed (see ``augment_seed``)."""
        if self.augment_seed is None:
            # Lightning's seed_everything exports it, also to DDP processes; every rank must agree.
            self.augment_seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        return self.augment_seed

    def state_dict(self) -> dict[str, Any]:
        """Kept in checkpoints: the augmentation seed, so a resumed run draws the same samples."""
        return {"augment_seed": self.run_seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the augmentation seed of the checkpointed run."""
        if state_dict.get("augment_seed") is not None:
            self.augment_seed = int(state_dict["augment_seed"])

    def _trained_batches(self) -> int:
        trainer = self.trainer
        if trainer is None:
            return 0
        return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)

    def train_dataloader(self) -> DataLoader:
        """Shuffled patches; MONAI's DataLoader flattens the per-case patch lists into the batch.

        Resumable (:class:`~bts_monai.data.sampling.ResumableDataLoader`): order and augmentation
        depend on (seed, epoch, index) only, and a checkpoint records the batches already trained.
        """
        seed = self.run_seed
        dataset = SeededDataset(self.train_ds, seed)
        return ResumableDataLoader(
            dataset,
            EpochSampler(dataset, seed=seed, shuffle=True),
            trained_batches=self._trained_batches,
            generator_seed=seed,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def val_dataloader(self) -> DataLoader:
        """Whole volumes (or patient stacks), one at a time, always in the same order."""
        # Its own generator: validating never moves torch's global one, which a resume restores.
        return DataLoader(
            self.val_ds,
            batch_size=1,
            shuffle=False,
            num_workers=min(self.num_workers, 1),
            generator=torch.Generator().manual_seed(0),
        )

    def test_dataloader(self) -> DataLoader:
        """Same as validation."""
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        """Whole volumes of the unlabelled cases (``test`` in the datalist), else of the validation ones.

        Items carry only the image (and ``case_id``); ``lightning predict`` returns region masks on
        the preprocessed (RAS, brain-cropped) grid. For segmentations in a scan's own grid, with
        reports and overlays, use ``bts-infer`` or :class:`bts_monai.inference.predictor.Predictor`.
        """
        if self.train_ds is None and self.val_ds is None:
            self.setup("predict")
        entries = self.test_entries or self.val_entries
        kind = "tiff" if self.is_lgg else "nifti"
        items = []
        for e in entries:
            if "slices" in e:
                items.append({"image": [s["image"] for s in e["slices"]], "case_id": e["case_id"]})
            else:
                items.append(entry_item(e, self.modalities, with_label=False))
        transform = deterministic_transforms(
            self.scheme, kind, self.intensity, self.label_mode, self.spacing, with_label=False
        )
        return DataLoader(Dataset(items, transform), batch_size=1, shuffle=False, num_workers=0)
