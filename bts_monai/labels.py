"""Label schemes and tumour regions: the single source of truth for label values.

BraTS 2017-2021 label the necrotic/non-enhancing core 1, oedema 2 and enhancing tumour 4;
BraTS 2023 moved enhancing tumour to 3 and BraTS 2024 added 4 for the resection cavity;
the Kaggle LGG masks are binary {0, 255}. No other module writes a label value as a literal:
they ask a :class:`LabelScheme`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from bts_monai.errors import BtsInputError

__all__ = ["LabelScheme", "SCHEMES", "get_scheme", "scheme_for_dataset"]


@dataclass(frozen=True)
class LabelScheme:
    """A dataset's label values and the (possibly overlapping) regions built from them.

    Args:
        name: short name (``"brats2021"``, ``"brats2023"``, ``"lgg"``...).
        labels: label value -> human name; 0 is background.
        regions: region name -> the label values it contains, in the network's channel order.
        description: one line for reports and ``--help``.
    """

    name: str
    labels: dict[int, str]
    regions: dict[str, tuple[int, ...]]
    description: str = ""
    background: int = field(default=0)

    @property
    def region_names(self) -> list[str]:
        """Region names in channel order (e.g. ``["TC", "WT", "ET"]``)."""
        return list(self.regions)

    @property
    def num_regions(self) -> int:
        """Number of region channels a sigmoid network predicts."""
        return len(self.regions)

    @property
    def foreground_labels(self) -> list[int]:
        """Label values other than background, ascending."""
        return sorted(v for v in self.labels if v != self.background)

    @property
    def all_values(self) -> list[int]:
        """Every allowed label value, background included, ascending."""
        return sorted(self.labels)

    def check_values(self, values: Iterable[int], path: str | None = None) -> None:
        """Raise :class:`BtsInputError` if any value is not a label of this scheme."""
        found = sorted({int(v) for v in values})
        bad = [v for v in found if v not in self.labels]
        if bad:
            raise BtsInputError(
                path,
                f"label values {found} found, but the {self.name} scheme allows only "
                f"{self.all_values} (unexpected: {bad})",
            )

    def to_regions(self, label: np.ndarray, path: str | None = None) -> np.ndarray:
        """Integer label map (spatial) -> stacked boolean region masks ``(R, *spatial)``.

        Raises:
            BtsInputError: when ``label`` holds values outside the scheme.
        """
        label = np.asarray(label)
        self.check_values(np.unique(label), path)
        return np.stack([np.isin(label, vals) for vals in self.regions.values()])

    def to_index_map(self, label: np.ndarray, path: str | None = None) -> np.ndarray:
        """Integer label map -> consecutive class indices 0..K-1 (for softmax training)."""
        label = np.asarray(label)
        self.check_values(np.unique(label), path)
        out = np.zeros(label.shape, dtype=np.uint8)
        for idx, value in enumerate(self.all_values):
            out[label == value] = idx
        return out

    def from_index_map(self, index: np.ndarray) -> np.ndarray:
        """Consecutive class indices (softmax output) -> the scheme's label values."""
        lut = np.asarray(self.all_values, dtype=np.uint8)
        return lut[np.asarray(index, dtype=np.int64)]

    def paint_order(self) -> list[tuple[str, int]]:
        """(region, label) pairs that rebuild a label map from nested region masks.

        Regions are painted from the largest (most labels) to the smallest; each paints
        the one label it holds that no smaller region nested inside it holds
        (BraTS 2021: WT->2, TC->1, ET->4).
        """
        order = sorted(self.regions.items(), key=lambda kv: -len(kv[1]))
        out = []
        for i, (name, vals) in enumerate(order):
            smaller: set[int] = set()
            for _, other in order[i + 1 :]:
                if set(other) <= set(vals):
                    smaller |= set(other)
            own = sorted(set(vals) - smaller)
            if len(own) != 1:
                raise ValueError(f"scheme {self.name}: region {name} does not own exactly one label ({own})")
            out.append((name, own[0]))
        return out

    def from_regions(self, masks: np.ndarray) -> np.ndarray:
        """Stacked boolean region masks ``(R, *spatial)`` -> uint8 label map in this scheme."""
        masks = np.asarray(masks).astype(bool)
        if masks.shape[0] != self.num_regions:
            raise ValueError(f"expected {self.num_regions} region channels, got {masks.shape[0]}")
        out = np.full(masks.shape[1:], self.background, dtype=np.uint8)
        names = self.region_names
        for name, value in self.paint_order():
            out[masks[names.index(name)]] = value
        return out


_BRATS_LEGACY = LabelScheme(
    name="brats2021",
    labels={0: "background", 1: "NCR/NET", 2: "ED", 4: "ET"},
    regions={"TC": (1, 4), "WT": (1, 2, 4), "ET": (4,)},
    description="BraTS 2017-2021: 1 necrotic/non-enhancing core, 2 oedema, 4 enhancing tumour",
)
_BRATS_2023 = LabelScheme(
    name="brats2023",
    labels={0: "background", 1: "NETC", 2: "SNFH", 3: "ET"},
    regions={"TC": (1, 3), "WT": (1, 2, 3), "ET": (3,)},
    description="BraTS 2023: 1 non-enhancing core, 2 surrounding FLAIR hyperintensity, 3 enhancing tumour",
)
_BRATS_2024 = LabelScheme(
    name="brats2024",
    labels={0: "background", 1: "NETC", 2: "SNFH", 3: "ET", 4: "RC"},
    regions={"TC": (1, 3), "WT": (1, 2, 3), "ET": (3,), "RC": (4,)},
    description="BraTS 2024 post-treatment: 2023 labels plus 4 resection cavity",
)
_LGG = LabelScheme(
    name="lgg",
    labels={0: "background", 255: "abnormality"},
    regions={"abnormality": (255,)},
    description="Kaggle LGG (kaggle_3m): binary FLAIR abnormality masks {0, 255}",
)

SCHEMES: dict[str, LabelScheme] = {
    "brats2021": _BRATS_LEGACY,
    "brats2023": _BRATS_2023,
    "brats2024": _BRATS_2024,
    "lgg": _LGG,
}
# Releases that share the 2017-2021 labels.
_ALIASES = {f"brats{y}": "brats2021" for y in range(2017, 2022)} | {"brats": "brats2021"}


def get_scheme(name: str | LabelScheme) -> LabelScheme:
    """Look a scheme up by name (``brats2017``..``brats2021`` share one scheme).

    Raises:
        ValueError: for an unknown name.
    """
    if isinstance(name, LabelScheme):
        return name
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in SCHEMES:
        raise ValueError(f"unknown label scheme {name!r}; choose from {sorted(SCHEMES) + sorted(_ALIASES)}")
    return SCHEMES[key]


def scheme_for_dataset(dataset: str) -> LabelScheme:
    """The label scheme of a dataset name as discovery reports it (``brats2018``, ``lgg``...)."""
    return get_scheme(dataset)
