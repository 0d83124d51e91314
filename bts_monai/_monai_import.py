"""Import MONAI without the plotting and logging stacks it loads but inference never uses.

``import monai`` (1.6) imports every MONAI submodule: ``monai.utils.jupyter_utils`` imports
``matplotlib.pyplot`` and ``monai.visualize.img2tensorboard`` imports tensorboard, both eagerly.
Inference uses neither, and they cost a noticeable part of ``bts-infer``'s start-up. While MONAI
loads, the names below are marked absent in ``sys.modules`` (Python's documented way to make an
import fail), so MONAI takes its own optional-import fallbacks for them; the marks are removed
afterwards, so importing matplotlib or tensorboard later works as usual. Only MONAI's Jupyter and
TensorBoard plotting helpers (``monai.utils.jupyter_utils``, ``monai.visualize``), which bts_monai
does not use, and MONAI's ignite-based engines and handlers, are then unavailable in this process
(``python -m monai.bundle run``, a process of its own, is unaffected). Nothing happens when MONAI is already imported
or when a name is already loaded.
"""

from __future__ import annotations

import logging
import sys
import warnings

__all__ = ["UNUSED_BY_INFERENCE", "import_monai", "silence_gpu_decoder_notices"]

UNUSED_BY_INFERENCE: tuple[str, ...] = ("matplotlib", "tensorboard", "tensorboardX", "ignite")
"""Top-level packages MONAI imports eagerly that inference does not need. ``ignite``
(pytorch-ignite, installed with the ``bundle`` extra for ``monai.bundle run``) backs MONAI's
``monai.engines``/``monai.handlers``, which bts_monai never uses: skipping it measured 6.5 -> 5.4 s
and -55 MB for one ``bts-infer`` case (benchmarks/README.md)."""


def import_monai() -> None:
    """Import ``monai`` (all of it, as MONAI does) without :data:`UNUSED_BY_INFERENCE`."""
    if "monai" in sys.modules:
        return
    blocked = [name for name in UNUSED_BY_INFERENCE if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        import monai  # noqa: F401
    finally:
        silence_gpu_decoder_notices()
        for name in blocked:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


def silence_gpu_decoder_notices() -> None:
    """Quiet MONAI's notices that its optional GPU DICOM decoder (nvImageCodec) is absent.

    Every ``LoadImage`` logs that the decoder is missing, and with pydicom installed (the dicom
    extra) it also builds MONAI's GPU DICOM reader, which warns once that its plugin did not
    register: nothing a user can act on on a CPU, and it would break the CLIs' one-line errors.
    Training's transforms (``bts-train``, ``bts-demo``) load files too, so they call this as well.
    """
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader: ", category=UserWarning)
