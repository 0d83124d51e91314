"""bts_monai: brain-tumour segmentation on MONAI and PyTorch Lightning."""

from __future__ import annotations

__version__ = "0.1.0"
