"""What the server takes on: uploads are admitted before their body is read, or refused with 503.

An upload is refused at once, from its headers, when the job queue is full (counting the uploads
already being received, which will join it), when as many uploads as allowed are being received,
or when the work folder's quota would be exceeded by the size the request announces
(``Content-Length``). A chunked upload announces nothing, so its bytes are counted as they
arrive and reading stops as soon as the quota is reached.

The quota covers what the work folder holds now (inputs, outputs and viewer files of every job
kept) plus the uploads in flight; the outputs a queued job will write are not known in advance
(about 2-3x its upload for a BraTS case), so leave headroom for them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ServerBusy", "Admission", "Ticket", "folder_bytes", "RETRY_AFTER_S"]

RETRY_AFTER_S = 30
"""What a refused client is told to wait (``Retry-After``) before trying again."""


class ServerBusy(Exception):
    """The server cannot take this upload now (HTTP 503); the message says why, in one line."""


def folder_bytes(root: Path, skip: set[str] | frozenset[str] = frozenset()) -> int:
    """Total size of the files under ``root`` (not following links), leaving out the top-level
    entries named in ``skip``."""
    total = 0
    stack = [Path(root)]
    top = True
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:  # deleted meanwhile (an expired job)
            continue
        for entry in entries:
            if top and entry.name in skip:
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
            except OSError:
                continue
        top = False
    return total


@dataclass
class Ticket:
    """One admitted upload: the job folder it writes to and the bytes it may still bring."""

    name: str
    announced: int | None
    base: int
    received: int = 0

    @property
    def reserved(self) -> int:
        """Bytes this upload is counted for: what it announced, or what it has sent so far."""
        return max(self.announced or 0, self.received)


class Admission:
    """Admits uploads against the queue, the number in flight and the work folder's quota.

    Args:
        root: the work folder.
        queue_free: returns how many more jobs the queue takes now.
        max_uploads: most uploads received (and checked) at once.
        max_disk_bytes: quota of the work folder, or ``None`` for none.
    """

    def __init__(
        self, root: Path, queue_free: Callable[[], int], max_uploads: int = 4, max_disk_bytes: int | None = None
    ) -> None:
        if max_uploads < 1:
            raise ValueError(f"max_uploads must be at least 1, not {max_uploads}")
        self.root = Path(root)
        self.queue_free = queue_free
        self.max_uploads = int(max_uploads)
        self.max_disk_bytes = max_disk_bytes
        self._lock = threading.Lock()
        self._tickets: dict[str, Ticket] = {}

    @property
    def in_flight(self) -> int:
        """Uploads admitted and not yet queued or refused."""
        with self._lock:
            return len(self._tickets)

    def admit(self, name: str, content_length: int | None) -> Ticket:
        """Take on an upload into job folder ``name``, or refuse it from its headers alone.

        Raises:
            ServerBusy: the queue is full, too many uploads are in flight, or the quota would be
                exceeded by ``content_length`` bytes.
        """
        with self._lock:
            if self.queue_free() - len(self._tickets) <= 0:
                raise ServerBusy("the queue of cases is full; try again when some are done")
            if len(self._tickets) >= self.max_uploads:
                raise ServerBusy(f"{len(self._tickets)} uploads are being received already; try again shortly")
            base = 0
            if self.max_disk_bytes is not None:
                # Job folders of uploads in flight are counted by their reservation instead.
                base = folder_bytes(self.root, skip=set(self._tickets))
                self._check_quota(base, self._reserved() + (content_length or 0))
            ticket = Ticket(name, content_length, base)
            self._tickets[name] = ticket
            return ticket

    def received(self, ticket: Ticket, total: int) -> None:
        """``total`` bytes of ``ticket``'s body have arrived.

        Raises:
            ServerBusy: the work folder's quota is reached (chunked uploads, or more than announced).
        """
        with self._lock:
            ticket.received = total
            if self.max_disk_bytes is not None and total > (ticket.announced or 0):
                self._check_quota(ticket.base, self._reserved())

    def release(self, ticket: Ticket, kept: bool = False) -> None:
        """The upload is queued (``kept``: its files stay in the work folder) or refused (deleted)."""
        with self._lock:
            if self._tickets.pop(ticket.name, None) is not None and kept:
                # Its files are now part of what the folder holds, for the uploads still arriving.
                for other in self._tickets.values():
                    other.base += ticket.reserved

    def _reserved(self) -> int:
        return sum(t.reserved for t in self._tickets.values())

    def _check_quota(self, used: int, more: int) -> None:
        assert self.max_disk_bytes is not None
        if used + more > self.max_disk_bytes:
            mb = 2**20
            raise ServerBusy(
                f"the server's work folder is full ({used / mb:.0f} MB kept and {more / mb:.0f} MB being uploaded, "
                f"of {self.max_disk_bytes / mb:.0f} MB); try again when older results are deleted"
            )
