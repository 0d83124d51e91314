"""bts_monai: brain-tumour segmentation on MONAI and PyTorch Lightning.

The public API is re-exported here and imported lazily, so ``import bts_monai`` stays quick::

    from bts_monai import BratsDataModule, BratsSegModule, Predictor
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "BratsDataModule": "bts_monai.data.datamodule",
    "BratsSegModule": "bts_monai.model.module",
    "load_checkpoint": "bts_monai.model.checkpoint",
    "build_network": "bts_monai.model.module",
    "Predictor": "bts_monai.inference.predictor",
    "BtsInputError": "bts_monai.errors",
    "LabelScheme": "bts_monai.labels",
    "get_scheme": "bts_monai.labels",
    "discover": "bts_monai.data.discovery",
    "make_datalist": "bts_monai.data.discovery",
    "read_datalist": "bts_monai.data.discovery",
    "write_datalist": "bts_monai.data.discovery",
    "evaluate": "bts_monai.evaluation",
    "download_dataset": "bts_monai.data.download",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'bts_monai' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
