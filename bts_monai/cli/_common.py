"""What every command shares: logging set-up and turning user errors into exit status 2."""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from collections.abc import Callable
from typing import Any

from bts_monai.errors import BtsInputError

EXIT_BAD_INPUT = 2


def setup_logging(verbose: bool = False) -> None:
    """INFO (or DEBUG) messages on stderr, one line each."""
    handler = _CurrentStderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True)


class _CurrentStderrHandler(logging.StreamHandler):
    """A stderr handler that writes to whatever ``sys.stderr`` is when a record is emitted.

    ``logging.StreamHandler()`` keeps the stream it was built with; once that stream is swapped
    (pytest's capture, a host application redirecting stderr) and closed, every later message
    raises "I/O operation on closed file". The standard library's own ``_StderrHandler`` does
    this but is private.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:  # StreamHandler.__init__ assigns it; the property wins
        pass


def exits_on_bad_input(fn: Callable[..., int]) -> Callable[..., int]:
    """Run a CLI body; a :class:`BtsInputError` becomes one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs) -> int:
        try:
            return fn(*args, **kwargs)
        except BtsInputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper


def add_speed_arguments(parser: argparse.ArgumentParser, title: str = "speed") -> None:
    """The Predictor's speed options, shared by ``bts-infer`` and ``bts-serve``."""
    from bts_monai.inference.backends import BACKENDS
    from bts_monai.inference.postprocess import POSTPROCESSING
    from bts_monai.inference.predictor import PRECISIONS

    speed = parser.add_argument_group(title)
    speed.add_argument("--device", default="auto", help="auto (default: CUDA when available), cpu, cuda, cuda:N")
    speed.add_argument("--threads", type=int, metavar="N", help="CPU threads (default: torch's choice)")
    speed.add_argument(
        "--overlap", type=float, help="sliding-window overlap (default: the model's, as validated in training)"
    )
    speed.add_argument(
        "--tta", action="store_true", help="average over mirror flips of the axes training mirrored (8x slower in 3D)"
    )
    speed.add_argument(
        "--threshold",
        type=float,
        help="probability above which a voxel belongs to a region (default: the model's, as validated)",
    )
    speed.add_argument(
        "--postprocess",
        choices=("model", *POSTPROCESSING),
        default="model",
        help="post-processing of the thresholded masks: model (default: the model's, chosen on its "
        "training cases), none, largest_component (keep the largest connected tumour component)",
    )
    speed.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto (default: bf16 with OpenVINO on CPUs with native bf16, AVX512-BF16 or AMX, and on bf16 "
        "GPUs; else 32), 32 or bf16",
    )
    speed.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="what runs the network: auto (default: the fastest ONNX runtime installed on a CPU, "
        "else torch), torch, onnxruntime, openvino",
    )
    speed.add_argument(
        "--one-pass",
        action="store_true",
        help="run the network once over the whole brain box instead of overlapping windows, where it fits",
    )


def speed_options(args: argparse.Namespace) -> dict[str, object]:
    """The Predictor keyword arguments of :func:`add_speed_arguments`' options."""
    keys = ("device", "threads", "overlap", "tta", "precision", "backend", "one_pass", "threshold")
    options = {k: getattr(args, k) for k in keys}
    options["postprocess"] = None if args.postprocess == "model" else args.postprocess
    return options


def add_output_scheme_argument(parser: argparse.ArgumentParser) -> None:
    """``--output-scheme``, shared by ``bts-infer`` and ``bts-serve``."""
    from bts_monai.labels import SCHEMES

    parser.add_argument(
        "--output-scheme",
        metavar="NAME",
        default="input",
        help="label values to write: input (default: the input dataset's scheme, else the model's), model, "
        f"or a scheme: {', '.join(SCHEMES)}",
    )


def apply_output_scheme(predictor: Any, name: str) -> None:
    """Set ``predictor.output_scheme`` from an ``--output-scheme`` value.

    Raises:
        BtsInputError: an unknown scheme name.
    """
    from bts_monai.labels import get_scheme

    if name == "model":
        predictor.output_scheme = predictor.scheme
    elif name != "input":
        try:
            predictor.output_scheme = get_scheme(name)
        except ValueError as exc:
            raise BtsInputError(None, f"--output-scheme: {exc}") from None
