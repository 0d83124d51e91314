"""Inference: Predictor, geometry round trip, report, overlay.

Importing this package imports neither torch nor MONAI: on a CPU with an ONNX runtime, a packaged
model segments without them (:mod:`bts_monai.inference.engine`). Modules that use MONAI import it
through :func:`bts_monai._monai_import.import_monai`, which keeps matplotlib and tensorboard out.
"""
