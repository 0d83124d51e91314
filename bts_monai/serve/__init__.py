"""``bts-serve``: a local web page in front of the Predictor.

Upload a scan (one 4D NIfTI, the four files of a BraTS case, or LGG TIFF slices), follow the
model's progress, see the tumour in three planes with coloured regions, and download what
``bts-infer`` writes. :func:`~bts_monai.serve.app.create_app` builds the FastAPI app::

    from bts_monai.inference.predictor import Predictor
    from bts_monai.serve import create_app

    app = create_app(Predictor.from_checkpoint("run.ckpt"), keep_minutes=30)
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    # Lazy: importing the package must not pull in FastAPI, torch and MONAI.
    if name == "create_app":
        from bts_monai.serve.app import create_app

        return create_app
    raise AttributeError(f"module 'bts_monai.serve' has no attribute {name!r}")
