"""Inference: Predictor, geometry round trip, report, overlay."""

from bts_monai._monai_import import import_monai

# Before any inference module imports MONAI: keeps matplotlib and tensorboard out (see the module).
import_monai()
