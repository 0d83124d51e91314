"""The one way bts_monai writes a file: a temporary name in the target's folder, fsync of the file,
``os.replace`` onto the target, fsync of the folder.

A reader never sees half a file, a crash (or Ctrl-C, or a full disk) leaves the previous file or
nothing, and the rename is durable once the call returns. Every writer in the package goes through
:func:`atomic_write` (or its shorthands :func:`write_bytes`, :func:`write_text`, :func:`atomic_path`,
:func:`atomic_open`); outputs that belong together go through :class:`StagedFiles`, whose
:meth:`~StagedFiles.commit` puts all of them in place or none.

Failures to write (read-only folder, full disk, a parent that is a file) become
:class:`~bts_monai.errors.BtsInputError` naming the target, so commands print one line and exit 2.
:func:`check_writable` asks the same question before a long computation rather than after it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from bts_monai.errors import BtsInputError

__all__ = [
    "walk_following_links",
    "TMP_PREFIX",
    "ProtectedFiles",
    "StagedFiles",
    "atomic_open",
    "atomic_path",
    "atomic_write",
    "check_writable",
    "fsync_dir",
    "refuse_overwrite",
    "remove_tree",
    "temp_path",
    "write_bytes",
    "write_text",
]

TMP_PREFIX = ".tmp-"
"""Temporary files (and the preprocessing cache's temporary folders) start with this and the pid."""


def temp_path(target: str | os.PathLike[str], kind: str = "tmp") -> Path:
    """A hidden, unique name beside ``target`` that keeps its extension (``nib.save`` and the image
    writers choose the format by it): ``.tmp-<pid>-<random>-<name>``."""
    target = Path(target)
    return target.with_name(f".{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}-{target.name}")


def _problem(exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        return f"cannot write: {reason} (the disk is full)"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write: {reason} (the folder is read-only or not yours)"
    return f"cannot write: {reason}"


def _make_parent(target: Path) -> None:
    """Create ``target``'s folder; a file in the way is named in the error."""
    for parent in [target.parent, *target.parent.parents]:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise BtsInputError(target, f"cannot write: {parent} is a file, not a folder")
            break
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BtsInputError(target, _problem(exc)) from exc


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make renames and creations inside ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open folders; its renames need no folder sync
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError, IsADirectoryError, NotADirectoryError):
        path.unlink()


def _write_temp(target: Path, write: Callable[[Path], Any]) -> Path:
    """``write(tmp)`` then fsync; on any failure the temporary is removed and an ``OSError`` becomes
    a :class:`BtsInputError` naming ``target``."""
    _make_parent(target)
    tmp = temp_path(target)
    try:
        write(tmp)
        _fsync_file(tmp)
    except OSError as exc:
        _unlink(tmp)
        raise BtsInputError(target, _problem(exc)) from exc
    except BaseException:
        _unlink(tmp)
        raise
    return tmp


def atomic_write(target: str | os.PathLike[str], write: Callable[[Path], Any]) -> Path:
    """Write one file atomically: ``write(tmp)`` fills a temporary path beside ``target`` (same
    extension), which is then fsynced and renamed onto ``target``.

    Args:
        target: the file to create or replace; its folder is created if needed.
        write: writes the whole file to the path it is given.

    Returns:
        ``target`` as a :class:`~pathlib.Path`.

    Raises:
        BtsInputError: the file cannot be written (read-only folder, full disk, a parent that is
            a file); nothing is left behind.
    """
    with atomic_path(target) as tmp:
        write(tmp)
    return Path(target)


def write_bytes(target: str | os.PathLike[str], data: bytes) -> Path:
    """:func:`atomic_write` of ``data``."""
    return atomic_write(target, lambda tmp: tmp.write_bytes(data))


def write_text(target: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """:func:`atomic_write` of ``text``."""
    return atomic_write(target, lambda tmp: tmp.write_text(text, encoding=encoding))


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path for one file, renamed onto ``target`` when the block ends without error.

    Example:
        >>> with atomic_path("out.png") as tmp:   # doctest: +SKIP
        ...     image.save(tmp)
    """
    target = Path(target)
    _make_parent(target)
    tmp = temp_path(target)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, target)
    except OSError as exc:
        _unlink(tmp)
        raise BtsInputError(target, _problem(exc)) from exc
    except BaseException:
        _unlink(tmp)
        raise
    fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_open(target: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """An open file (``"w"`` or ``"wb"``) that becomes ``target`` when the block ends without error.

    Example:
        >>> with atomic_open("metrics.csv", newline="") as fh:   # doctest: +SKIP
        ...     csv.writer(fh).writerows(rows)
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', not {mode!r}")
    if mode == "w":
        kwargs.setdefault("encoding", "utf-8")
    with atomic_path(target) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh


def check_writable(target: str | os.PathLike[str]) -> None:
    """Refuse, before any work is done, an output that cannot be written: a parent that is a file,
    a read-only folder. The nearest existing folder is probed with a real temporary file
    (``os.access`` says yes to root and on some network file systems when a write would fail).

    Raises:
        BtsInputError: naming ``target`` and the problem; nothing is left behind.
    """
    target = Path(target)
    if target.is_dir():
        raise BtsInputError(target, "is a folder, not a file name")
    folder = target.parent
    while not folder.exists() and not folder.is_symlink() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise BtsInputError(target, f"cannot write: {folder} is a file, not a folder")
    probe = temp_path(folder / "write-probe")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
    except OSError as exc:
        raise BtsInputError(target, _problem(exc)) from exc
    finally:
        _unlink(probe)


class StagedFiles:
    """Write several files as one: each to a temporary name beside its target (:meth:`add`), then
    all renamed into place by :meth:`commit`, or none: if a rename fails, the targets already
    replaced get their previous contents back. :meth:`discard` (or an exception inside ``with``)
    removes the temporaries, so an error or Ctrl-C leaves no half-written output.

    Args:
        protect: files that must never be replaced (the inputs of the run that writes the outputs).
        overwrite: allow replacing existing files (other than ``protect``).

    Example:
        >>> with StagedFiles() as staged:                       # doctest: +SKIP
        ...     staged.add("out.nii.gz", lambda tmp: nib.save(img, tmp))
    """

    def __init__(self, protect: ProtectedFiles | Iterable[str | os.PathLike[str]] = (), overwrite: bool = True) -> None:
        self._pending: list[tuple[Path, Path]] = []
        self.protect = protect if isinstance(protect, ProtectedFiles) else ProtectedFiles(protect)
        self.overwrite = bool(overwrite)

    def check(self, target: str | os.PathLike[str]) -> None:
        """Refuse ``target`` if it is protected, or exists and overwriting is off.

        Raises:
            BtsInputError: naming ``target``.
        """
        refuse_overwrite(target, self.protect, self.overwrite)

    def add(self, target: str | os.PathLike[str], write: Callable[[Path], Any]) -> Path:
        """Call ``write(tmp)`` now with a temporary path that keeps ``target``'s extension.

        Raises:
            BtsInputError: ``target`` is refused (see :meth:`check`) or cannot be written.
        """
        target = Path(target)
        self.check(target)
        if any(_real(t) == _real(target) for _, t in self._pending):
            raise BtsInputError(target, "is written twice by the same run")
        tmp = _write_temp(target, write)
        self._pending.append((tmp, target))
        return target

    @property
    def targets(self) -> list[Path]:
        """The files this stage will create."""
        return [t for _, t in self._pending]

    def commit(self) -> list[Path]:
        """Rename every temporary onto its target, all or nothing; returns the targets.

        Raises:
            BtsInputError: a rename failed; every target is as it was before and no temporary is left.
        """
        backups: list[tuple[Path, Path | None]] = []  # (target, its previous contents or None)
        current: Path | None = None
        try:
            for tmp, target in self._pending:
                current, backup = target, None
                if target.exists():
                    backup = temp_path(target, "bak")
                    try:
                        os.link(target, backup)  # a second name for the old contents, for the rollback
                    except OSError:  # file systems without hard links
                        shutil.copy2(target, backup)
                backups.append((target, backup))
                os.replace(tmp, target)
        except BaseException as exc:
            self._rollback(backups)
            self.discard()
            if isinstance(exc, OSError):
                raise BtsInputError(current, _problem(exc)) from exc
            raise
        for folder in {t.parent for _, t in self._pending}:
            fsync_dir(folder)
        for _, backup in backups:
            if backup is not None:
                _unlink(backup)
        done = self.targets
        self._pending = []
        return done

    def _rollback(self, backups: list[tuple[Path, Path | None]]) -> None:
        for target, backup in reversed(backups):
            with contextlib.suppress(OSError):
                if backup is not None:
                    os.replace(backup, target)
                else:  # the target was new: remove it (a no-op if its rename is the one that failed)
                    _unlink(target)

    def discard(self) -> None:
        """Remove the temporaries written so far."""
        for tmp, _ in self._pending:
            _unlink(tmp)
        self._pending = []

    def __enter__(self) -> StagedFiles:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


def _real(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.realpath(os.fspath(path)))


def _file_id(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class ProtectedFiles:
    """Files a run must never write over (its inputs): matched by resolved path and by inode, so a
    symbolic or hard link to an input is caught too.

    Args:
        paths: the files (or folders: every file inside them).
    """

    def __init__(self, paths: Iterable[str | os.PathLike[str]] = ()) -> None:
        self.paths: set[Path] = set()
        self.ids: set[tuple[int, int]] = set()
        for p in paths:
            self.add(p)

    def add(self, path: str | os.PathLike[str]) -> None:
        """Protect ``path`` (a folder: the files directly inside it)."""
        p = Path(path)
        files = [f for f in p.iterdir() if f.is_file()] if p.is_dir() else [p]
        for f in files:
            self.paths.add(_real(f))
            fid = _file_id(f)
            if fid is not None:
                self.ids.add(fid)

    def __contains__(self, path: object) -> bool:
        if not isinstance(path, (str, os.PathLike)):
            return False
        if _real(path) in self.paths:
            return True
        fid = _file_id(path)
        return fid is not None and fid in self.ids

    def __bool__(self) -> bool:
        return bool(self.paths)


def refuse_overwrite(
    target: str | os.PathLike[str], protect: ProtectedFiles | None = None, overwrite: bool = False
) -> None:
    """Refuse to write ``target`` over an input of the run (``protect``, always), or over an
    existing file unless ``overwrite``.

    Raises:
        BtsInputError: naming ``target``.
    """
    if protect is not None and target in protect:
        raise BtsInputError(target, "is an input of this run: refusing to write an output over it")
    path = Path(target)
    if path.is_dir():
        raise BtsInputError(target, "is a folder, not a file name")
    if not overwrite and (path.exists() or path.is_symlink()):
        raise BtsInputError(target, "exists and was not written by this run: choose another output or pass --overwrite")


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Remove a file or folder if it is there (clean-up after a failed run)."""
    p = Path(path)
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        _unlink(p)


def walk_following_links(root: str | os.PathLike[str]) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk(root)`` that follows linked folders (datasets are often assembled from folders of
    links), visiting each real folder once, so link loops and folders reached twice are walked
    once. Sorting or pruning ``dirnames`` in place works as with ``os.walk``."""
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        yield dirpath, dirnames, filenames
