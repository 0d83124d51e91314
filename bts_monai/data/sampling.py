"""Training order and augmentation that a resumed run repeats exactly, on any number of processes.

MONAI's random transforms each keep their own ``numpy.random.RandomState``, seeded once by the
data loader (and again per worker), so after a resume the crops and flips come out different
from those of an uninterrupted run, and a stateful copy of every worker's transforms would be
needed to continue them. Here nothing carries random state from one sample to the next instead:

* :class:`EpochSampler` (a ``DistributedSampler``: Lightning keeps it under DDP) orders the cases
  of epoch ``e`` from ``seed + e`` alone and yields ``(epoch, index)`` keys;
* :class:`SeededDataset` seeds the transforms of each sample from ``(seed, epoch, index)`` just
  before drawing it, so a sample is the same in any worker, on any rank, before or after a resume;
* :class:`ResumableDataLoader` implements Lightning's ``state_dict``/``load_state_dict`` loader
  protocol: its state (epoch and batches already trained in it) goes into every checkpoint, and a
  run resumed mid-epoch skips exactly the batches the stopped run had trained.

The loader draws its base seed from its own ``torch.Generator``, so iterating it never moves
torch's global generator (whose state the module checkpoints for dropout and the like).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from monai.data import DataLoader
from monai.transforms import Randomizable
from torch.utils.data import Dataset, DistributedSampler

__all__ = ["EpochSampler", "ResumableDataLoader", "SeededDataset", "sample_seed"]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed for sample ``index`` of ``epoch`` (NumPy's ``SeedSequence``: well mixed, stable)."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(1)[0])


class SeededDataset(Dataset):
    """``dataset[index]`` with its transforms re-seeded from ``(seed, epoch, index)`` first.

    Args:
        dataset: a MONAI dataset (``Dataset``, ``CacheDataset``, ``PersistentDataset``,
            ``PreprocessedDataset``) whose ``transform`` is a ``Compose``.
        seed: the run's augmentation seed.
    """

    def __init__(self, dataset: Any, seed: int) -> None:
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int] | int) -> Any:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        transform = getattr(self.dataset, "transform", None)
        if isinstance(transform, Randomizable):
            transform.set_random_state(seed=sample_seed(self.seed, epoch, index))
        return self.dataset[index]


class EpochSampler(DistributedSampler):
    """Shuffled ``(epoch, index)`` keys, the order a function of ``seed + epoch`` only.

    Outside ``torch.distributed`` it is one replica holding every index; under DDP it is the
    rank's share, as ``DistributedSampler`` makes it (Lightning calls ``set_epoch``).

    Args:
        dataset: what is sampled (only its length is used).
        seed: the shuffling seed (the same on every rank).
        shuffle: shuffle each epoch (else index order).
    """

    def __init__(self, dataset: Any, seed: int = 0, shuffle: bool = True) -> None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        kwargs: dict[str, Any] = {} if distributed else {"num_replicas": 1, "rank": 0}
        super().__init__(dataset, shuffle=shuffle, seed=int(seed), **kwargs)
        self._resume: tuple[int, int] | None = None

    def resume(self, epoch: int, skip: int) -> None:
        """Leave out the first ``skip`` keys the next time epoch ``epoch`` is iterated."""
        self._resume = (int(epoch), int(skip)) if skip > 0 else None

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        indices = list(super().__iter__())
        skip = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            skip = self._resume[1]
        self._resume = None
        return iter([(self.epoch, i) for i in indices[skip:]])


class ResumableDataLoader(DataLoader):
    """MONAI's ``DataLoader`` over :class:`SeededDataset` and :class:`EpochSampler`, resumable mid-epoch.

    Args:
        dataset: the (seeded) dataset.
        sampler: its :class:`EpochSampler`.
        trained_batches: how many batches of the current epoch training has finished (asked when
            a checkpoint is saved; the loader itself runs ahead of training by its prefetching).
        generator_seed: seed of the loader's own generator (worker base seeds).
        **kwargs: the rest of ``DataLoader``'s arguments (``batch_size``, ``num_workers``...).
    """

    def __init__(
        self,
        dataset: Any,
        sampler: EpochSampler,
        trained_batches: Callable[[], int] | None = None,
        generator_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("generator", torch.Generator().manual_seed(int(generator_seed)))
        super().__init__(dataset, sampler=sampler, **kwargs)
        self.trained_batches = trained_batches
        self.generator_seed = generator_seed

    def state_dict(self) -> dict[str, Any]:
        """The epoch and the batches of it already trained."""
        sampler: EpochSampler = self.sampler  # type: ignore[assignment]
        done = int(self.trained_batches()) if self.trained_batches is not None else 0
        return {"epoch": int(sampler.epoch), "batches": done, "seed": int(sampler.seed)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where the state says: the rest of its epoch, or the next epoch after its end."""
        sampler: EpochSampler = self.sampler  # type: ignore[assignment]
        epoch, done = int(state["epoch"]), int(state.get("batches", 0))
        finished = done >= len(self)
        # Lightning creates the resumed epoch's iterator before it calls set_epoch, and worker
        # processes read the sampler as soon as the iterator exists: set the epoch here.
        sampler.set_epoch(epoch + 1 if finished else epoch)
        if not finished:
            sampler.resume(epoch, done * int(self.batch_size or 1))
