"""Label schemes and tumour regions: the single source of truth for label values.

BraTS 2017-2021 label the necrotic/non-enhancing core 1, oedema 2 and enhancing tumour 4;
BraTS 2023 moved enhancing tumour to 3 and BraTS 2024 added 4 for the resection cavity;
MSD Task01 (and nnU-Net's BraTS conversions) label oedema 1, non-enhancing tumour 2 and
enhancing tumour 3; the Kaggle LGG masks are binary {0, 255}. No other module writes a label
value as a literal: they ask a :class:`LabelScheme`.

Regions carry names (``TC``, ``WT``, ``ET``, ``RC``), so labels convert between schemes by meaning
(:func:`convert_labels`, :meth:`LabelScheme.region_masks`): a 2018 case and a 2023 case train
together, and a 2017-2021 model writes a 2023 case's labels in the 2023 values. A scheme read
from an nnU-Net ``dataset.json`` (:func:`scheme_from_nnunet`) is carried in datalists as its
:meth:`LabelScheme.spec`, which :func:`get_scheme` accepts like a name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bts_monai.errors import BtsInputError

__all__ = [
    "LabelScheme",
    "SCHEMES",
    "REGION_NAMES",
    "convert_labels",
    "get_scheme",
    "nnunet_labels",
    "scheme_for_dataset",
    "scheme_from_nnunet",
]


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
            fits = [name for name, s in SCHEMES.items() if s is not self and set(found) <= set(s.labels)]
            hint = f"; the {' or '.join(fits)} scheme allows them" if fits else ""
            raise BtsInputError(
                path,
                f"label values {found} found, but the {self.name} scheme allows only "
                f"{self.all_values} (unexpected: {bad}){hint}",
            )

    def region_masks(
        self, label: np.ndarray, names: Sequence[str] | None = None, path: str | None = None
    ) -> np.ndarray:
        """Boolean masks ``(len(names), *spatial)`` of the named regions, by this scheme's values.

        A region this scheme does not have (a 2021 case asked for ``RC``) is empty. With
        ``names`` the regions of another scheme, this turns one dataset's labels into another's
        training target by meaning.

        Raises:
            BtsInputError: when ``label`` holds values outside the scheme.
        """
        label = np.asarray(label)
        if not np.issubdtype(label.dtype, np.integer):
            label = np.rint(label).astype(np.int64)  # BraTS 2023 segs are float32
        self.check_values(_unique(label), path)
        names = self.region_names if names is None else list(names)
        out = np.zeros((len(names), *label.shape), dtype=bool)
        for i, name in enumerate(names):
            if name in self.regions:
                out[i] = np.isin(label, self.regions[name])
        return out

    def spec(self) -> dict[str, Any]:
        """A JSON-able description that :func:`get_scheme` turns back into this scheme."""
        return {
            "name": self.name,
            "labels": {str(k): v for k, v in self.labels.items()},
            "regions": {k: list(v) for k, v in self.regions.items()},
            "description": self.description,
        }

    def to_regions(self, label: np.ndarray, path: str | None = None) -> np.ndarray:
        """Integer label map (spatial) -> stacked boolean region masks ``(R, *spatial)``.

        Raises:
            BtsInputError: when ``label`` holds values outside the scheme.
        """
        return self.region_masks(label, None, path)

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
_MSD = LabelScheme(
    name="msd",
    labels={0: "background", 1: "oedema", 2: "non-enhancing tumour", 3: "enhancing tumour"},
    regions={"TC": (2, 3), "WT": (1, 2, 3), "ET": (3,)},
    description="MSD Task01_BrainTumour (and nnU-Net's BraTS): 1 oedema, 2 non-enhancing tumour, 3 enhancing",
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
    "msd": _MSD,
    "lgg": _LGG,
}
REGION_NAMES: dict[str, str] = {
    "TC": "tumour core",
    "WT": "whole tumour",
    "ET": "enhancing tumour",
    "RC": "resection cavity",
    "abnormality": "FLAIR abnormality",
}
"""Every region name a scheme uses, with its meaning: conversions between schemes go by these names."""
# Releases that share the 2017-2021 labels.
_ALIASES = {f"brats{y}": "brats2021" for y in range(2017, 2022)} | {"brats": "brats2021"}


def get_scheme(name: str | LabelScheme | Mapping[str, Any]) -> LabelScheme:
    """Look a scheme up by name (``brats2017``..``brats2021`` share one scheme), or rebuild one
    from its :meth:`LabelScheme.spec` (schemes read from an nnU-Net ``dataset.json``).

    Raises:
        ValueError: for an unknown name.
    """
    if isinstance(name, LabelScheme):
        return name
    if isinstance(name, Mapping):
        spec = dict(name)
        known = SCHEMES.get(str(spec.get("name", "")))
        built = LabelScheme(
            name=str(spec["name"]),
            labels={int(k): str(v) for k, v in spec["labels"].items()},
            regions={str(k): tuple(int(x) for x in v) for k, v in spec["regions"].items()},
            description=str(spec.get("description", "")),
        )
        return known if known is not None and _same(known, built) else built
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in SCHEMES:
        raise ValueError(f"unknown label scheme {name!r}; choose from {sorted(SCHEMES) + sorted(_ALIASES)}")
    return SCHEMES[key]


def scheme_for_dataset(dataset: str) -> LabelScheme:
    """The label scheme of a dataset name as discovery reports it (``brats2018``, ``lgg``...)."""
    return get_scheme(dataset)


def _same(a: LabelScheme, b: LabelScheme) -> bool:
    return set(a.labels) == set(b.labels) and {k: set(v) for k, v in a.regions.items()} == {
        k: set(v) for k, v in b.regions.items()
    }


def _unique(label: np.ndarray) -> np.ndarray:
    flat = label.ravel()
    if flat.size and flat.min() >= 0 and flat.max() < 1 << 16:
        return np.flatnonzero(np.bincount(flat))  # much faster than np.unique on volumes
    return np.unique(flat)


def convert_labels(
    label: np.ndarray, source: str | LabelScheme, target: str | LabelScheme, path: str | None = None
) -> np.ndarray:
    """A label map in ``source``'s values -> the same regions in ``target``'s values (uint8).

    Goes by region names: a BraTS 2021 map (4 = ET) becomes a 2023 map (3 = ET) and back; an MSD
    map (1 oedema, 2 non-enhancing, 3 enhancing) becomes either. Regions ``target`` lacks are
    dropped (BraTS 2024's resection cavity in a 2021 map is background).

    Raises:
        BtsInputError: ``label`` holds values outside ``source`` (naming ``path``).
    """
    src, dst = get_scheme(source), get_scheme(target)
    return dst.from_regions(src.region_masks(label, dst.region_names, path))


# nnU-Net dataset.json label names -> our region names (compared lower-case, without separators).
_NNUNET_REGION = {
    "wholetumor": "WT",
    "wholetumour": "WT",
    "wt": "WT",
    "whole": "WT",
    "tumorcore": "TC",
    "tumourcore": "TC",
    "tc": "TC",
    "core": "TC",
    "enhancingtumor": "ET",
    "enhancingtumour": "ET",
    "et": "ET",
    "enhancing": "ET",
    "resectioncavity": "RC",
    "rc": "RC",
}
# Plain (one value each) label names -> the regions that value belongs to.
_NNUNET_LABEL_REGIONS = {
    "edema": ("WT",),
    "oedema": ("WT",),
    "ed": ("WT",),
    "snfh": ("WT",),
    "peritumoraledema": ("WT",),
    "necrosis": ("WT", "TC"),
    "ncr": ("WT", "TC"),
    "net": ("WT", "TC"),
    "netc": ("WT", "TC"),
    "ncrnet": ("WT", "TC"),
    "nonenhancingtumor": ("WT", "TC"),
    "nonenhancingtumour": ("WT", "TC"),
    "necroticcore": ("WT", "TC"),
    "nonenhancingtumorcore": ("WT", "TC"),
    "necroticnonenhancingtumorcore": ("WT", "TC"),
    "necrotictumorcore": ("WT", "TC"),
    "enhancingtumor": ("WT", "TC", "ET"),
    "enhancingtumour": ("WT", "TC", "ET"),
    "et": ("WT", "TC", "ET"),
    "enhancing": ("WT", "TC", "ET"),
    "resectioncavity": ("RC",),
    "rc": ("RC",),
}
_REGION_ORDER = ("TC", "WT", "ET", "RC")


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def scheme_from_nnunet(labels: Mapping[str, Any], name: str = "nnunet", path: str | None = None) -> LabelScheme:
    """The label scheme of an nnU-Net v2 ``dataset.json`` ``labels`` entry.

    Plain entries (``{"background": 0, "edema": 1, ...}``) name one value each; region-based
    entries (``{"whole_tumor": [1, 2, 3], ...}``) name a region's values. BraTS names map to our
    regions (TC, WT, ET, RC); a dataset whose names are not BraTS's gets one region per label.
    A scheme equal to one of :data:`SCHEMES` (MSD's, BraTS 2023's) is returned as that one.

    Raises:
        BtsInputError: no background 0, a value that is not an integer, or a name given twice.
    """
    values: dict[int, str] = {}
    regions: dict[str, tuple[int, ...]] = {}
    plain: dict[str, int] = {}
    background = None
    for label_name, raw in labels.items():
        vals = raw if isinstance(raw, (list, tuple)) else [raw]
        try:
            ints = [int(v) for v in vals]
        except (TypeError, ValueError):
            raise BtsInputError(path, f"label {label_name!r} has value {raw!r}, not an integer") from None
        if ints == [0]:
            background = label_name
            values[0] = "background"
            continue
        if isinstance(raw, (list, tuple)):
            region = _NNUNET_REGION.get(_key(label_name), label_name)
            if region in regions:
                raise BtsInputError(path, f"region {region} is given twice in 'labels'")
            regions[region] = tuple(sorted(ints))
            for v in ints:
                values.setdefault(v, f"label {v}")
        else:
            plain[label_name] = ints[0]
            values[ints[0]] = label_name
    if background is None:
        raise BtsInputError(path, "'labels' has no background (0)")
    if plain and not regions:
        known = {n: _NNUNET_LABEL_REGIONS.get(_key(n)) for n in plain}
        if all(known.values()):
            built: dict[str, list[int]] = {}
            for label_name, v in plain.items():
                for region in known[label_name] or ():
                    built.setdefault(region, []).append(v)
            regions = {r: tuple(sorted(built[r])) for r in _REGION_ORDER if r in built}
        else:
            regions = {n: (v,) for n, v in plain.items()}
    else:
        for label_name, v in plain.items():
            regions.setdefault(_NNUNET_REGION.get(_key(label_name), label_name), (v,))
        regions = {r: regions[r] for r in (*[r for r in _REGION_ORDER if r in regions], *regions)}
    scheme = LabelScheme(
        name=name, labels=dict(sorted(values.items())), regions=regions, description=f"from {path or 'dataset.json'}"
    )
    for known_scheme in SCHEMES.values():
        if _same(known_scheme, scheme):
            return known_scheme
    return scheme


def nnunet_labels(scheme: str | LabelScheme) -> tuple[dict[str, Any], list[int] | None]:
    """An nnU-Net v2 ``dataset.json`` ``labels`` entry for ``scheme``, region-based as our
    networks train, and its ``regions_class_order`` (``None`` for non-BraTS schemes).

    nnU-Net needs consecutive label values (0, 1, 2, ...): schemes with a gap (BraTS 2021's 4)
    are written in :func:`nnunet_export_scheme`'s values first.
    """
    s = get_scheme(scheme)
    names = {"WT": "whole_tumor", "TC": "tumor_core", "ET": "enhancing_tumor", "RC": "resection_cavity"}
    if not set(s.regions) <= set(names):
        return {"background": 0, **{v: k for k, v in s.labels.items() if k != s.background}}, None
    order = sorted(s.regions, key=lambda r: -len(s.regions[r]))
    out: dict[str, Any] = {"background": 0}
    for region in order:
        out[names[region]] = list(s.regions[region])
    paint = dict(s.paint_order())
    return out, [paint[r] for r in order]


def nnunet_export_scheme(scheme: str | LabelScheme) -> LabelScheme:
    """The scheme an nnU-Net export writes ``scheme``'s labels in: itself when its values are
    consecutive (BraTS 2023, MSD, LGG's are not: 255), else BraTS 2023's for BraTS."""
    s = get_scheme(scheme)
    if s.all_values == list(range(len(s.all_values))):
        return s
    if set(s.regions) <= set(_BRATS_2024.regions):
        return _BRATS_2024 if "RC" in s.regions else _BRATS_2023
    return LabelScheme(
        name=f"{s.name}-consecutive",
        labels={i: s.labels[v] for i, v in enumerate(s.all_values)},
        regions={r: tuple(s.all_values.index(v) for v in vals) for r, vals in s.regions.items()},
        description=s.description,
    )
