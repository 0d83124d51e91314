"""The one exception type users can cause: bad input, named file, clear problem."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


class BtsInputError(ValueError):
    """Bad input a user can fix: a missing, corrupt or inconsistent file or folder.

    The message always names the file (or folder) and the problem, so command-line
    entry points print it as one line and exit with status 2.

    Args:
        path: the file or folder at fault (``None`` when there is no single one).
        problem: what is wrong with it.
    """

    def __init__(self, path: str | os.PathLike[str] | None, problem: str) -> None:
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path is not None else problem)


@contextlib.contextmanager
def unwrap_input_errors() -> Iterator[None]:
    """Re-raise a :class:`BtsInputError` that MONAI wrapped in ``RuntimeError("applying transform")``.

    MONAI's ``apply_transform`` chains every exception raised inside a transform; users should see
    the input error itself (file and problem), not a traceback through the Compose stack.
    """
    try:
        yield
    except RuntimeError as exc:
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, BtsInputError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from None
