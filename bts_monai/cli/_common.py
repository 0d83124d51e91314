"""What every command shares: logging set-up and turning user errors into exit status 2."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable

from bts_monai.errors import BtsInputError

EXIT_BAD_INPUT = 2


def setup_logging(verbose: bool = False) -> None:
    """INFO (or DEBUG) messages on stderr, one line each."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True
    )


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
