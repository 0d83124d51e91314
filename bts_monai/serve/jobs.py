"""The job queue: uploads wait their turn, one worker thread runs the model on one case at a time.

Each job has a random id and a folder of its own under the server's work folder; a job's folder
(inputs, outputs, views) is deleted ``keep_seconds`` after the job ends, or when the server stops.
"""

from __future__ import annotations

import logging
import queue
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bts_monai.errors import BtsInputError

__all__ = ["Job", "JobQueue", "JOB_ID_PATTERN", "QueueFull", "Progress", "user_message"]

logger = logging.getLogger(__name__)

JOB_ID_PATTERN = r"^[0-9a-f]{32}$"
"""Job ids are 128 random bits in hex; anything else is not a job."""

Progress = Callable[[float, str], None]
"""``progress(fraction, stage)``: how far the running job is (0..1) and what it is doing."""


class QueueFull(Exception):
    """Too many jobs are waiting already."""


@dataclass
class Job:
    """One uploaded case and what became of it.

    Args:
        id: random hex id (the only handle the browser gets).
        folder: the job's own folder; everything about the job lives under it.
        name: a display name for the case (sanitised, never a path).
        payload: what the runner needs (inputs found in the upload, options).
    """

    id: str
    folder: Path
    name: str
    payload: dict[str, Any] = field(default_factory=dict)
    state: str = "queued"  # queued -> running -> done | failed
    progress: float = 0.0
    stage: str = "waiting for the model"
    error: str | None = None
    result: dict[str, Any] | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None

    @property
    def ended(self) -> bool:
        """Done or failed."""
        return self.state in ("done", "failed")


class JobQueue:
    """A first-in first-out queue of jobs served by one worker thread, with timed clean-up.

    Args:
        runner: ``runner(job, progress) -> result`` runs the model on one job; a
            :class:`~bts_monai.errors.BtsInputError` it raises becomes the job's message.
        workdir: the folder under which job folders are made.
        keep_seconds: how long a finished job's results are kept.
        max_queued: most jobs waiting at once.
    """

    def __init__(
        self,
        runner: Callable[[Job, Progress], dict[str, Any]],
        workdir: Path,
        keep_seconds: float = 3600.0,
        max_queued: int = 16,
    ) -> None:
        self.runner = runner
        self.workdir = Path(workdir)
        self.keep_seconds = float(keep_seconds)
        self.max_queued = max_queued
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # ---- jobs ---------------------------------------------------------------------------------
    def new_id(self) -> str:
        """A fresh job id (128 random bits in hex)."""
        return secrets.token_hex(16)

    def folder_of(self, job_id: str) -> Path:
        """The folder of job ``job_id`` (not created)."""
        return self.workdir / job_id

    def new_folder(self) -> tuple[str, Path]:
        """A fresh job id and its (new, empty) folder."""
        job_id = self.new_id()
        folder = self.folder_of(job_id)
        folder.mkdir(parents=True)
        return job_id, folder

    def submit(self, job: Job) -> None:
        """Queue a job (its folder already holds the inputs) and make sure the worker runs.

        Raises:
            QueueFull: ``max_queued`` jobs are waiting already.
        """
        with self._lock:
            waiting = sum(1 for j in self._jobs.values() if j.state == "queued")
            if waiting >= self.max_queued:
                raise QueueFull(f"{waiting} cases are waiting already; try again when some are done")
            self._jobs[job.id] = job
        self._ensure_worker()
        self._queue.put(job)

    def free(self) -> int:
        """How many more jobs may wait now (``max_queued`` less those waiting)."""
        with self._lock:
            return self.max_queued - sum(1 for j in self._jobs.values() if j.state == "queued")

    def get(self, job_id: str) -> Job | None:
        """The job with this id, or ``None`` (unknown, expired or deleted)."""
        self.purge_expired()
        with self._lock:
            return self._jobs.get(job_id)

    def jobs(self) -> list[Job]:
        """All known jobs, oldest first."""
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.created)

    def position(self, job: Job) -> int:
        """How many jobs run or wait before this one (0 when it is running or ended)."""
        if job.state != "queued":
            return 0
        with self._lock:
            return sum(1 for j in self._jobs.values() if j.created < job.created and j.state in ("queued", "running"))

    def delete(self, job_id: str) -> bool:
        """Forget a job and delete its folder (a running job finishes first, then is dropped)."""
        with self._lock:
            job = self._jobs.pop(job_id, None)
        if job is None:
            return False
        if job.state != "running":
            self._remove_folder(job)
        return True

    def expires_in(self, job: Job) -> float | None:
        """Seconds until an ended job is deleted (``None`` while it waits or runs)."""
        if job.finished is None:
            return None
        return max(0.0, job.finished + self.keep_seconds - time.time())

    def purge_expired(self) -> None:
        """Delete the jobs that ended more than ``keep_seconds`` ago."""
        now = time.time()
        with self._lock:
            old = [j for j in self._jobs.values() if j.finished is not None and now - j.finished > self.keep_seconds]
            for job in old:
                del self._jobs[job.id]
        for job in old:
            logger.info("job %s expired; deleting its files", job.id)
            self._remove_folder(job)

    # ---- the worker ---------------------------------------------------------------------------
    def _ensure_worker(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stopping.clear()
                self._thread = threading.Thread(target=self._work, name="bts-serve-worker", daemon=True)
                self._thread.start()

    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                job = self._queue.get(timeout=min(30.0, max(self.keep_seconds / 4, 0.05)))
            except queue.Empty:
                self.purge_expired()
                continue
            if job is None:
                break
            with self._lock:
                dropped = job.id not in self._jobs
            if not dropped:
                self._run(job)
            self.purge_expired()

    def _run(self, job: Job) -> None:
        def progress(fraction: float, stage: str) -> None:
            job.progress = min(1.0, max(job.progress, float(fraction)))
            job.stage = stage

        job.state, job.started, job.stage = "running", time.time(), "starting"
        try:
            job.result = self.runner(job, progress)
            job.state, job.progress, job.stage = "done", 1.0, "done"
        except BtsInputError as exc:
            job.state, job.error, job.stage = "failed", user_message(exc, job), "failed"
            logger.info("job %s: bad input: %s", job.id, exc)
        except Exception as exc:  # the worker must survive anything one case does
            job.state, job.stage = "failed", "failed"
            job.error = f"the model could not process this case ({type(exc).__name__}: {exc})"
            logger.exception("job %s failed", job.id)
        finally:
            job.finished = time.time()
        with self._lock:
            dropped = job.id not in self._jobs
        if dropped:  # deleted while running
            self._remove_folder(job)

    def close(self, wait_seconds: float = 5.0) -> None:
        """Stop the worker and delete every job folder.

        A running case cannot be interrupted inside the network; after ``wait_seconds`` its folder
        is deleted anyway (the worker is a daemon thread and ends with the process).
        """
        self._stopping.set()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=wait_seconds)
        with self._lock:
            jobs = list(self._jobs.values())
            self._jobs.clear()
        for job in jobs:
            self._remove_folder(job)

    def _remove_folder(self, job: Job) -> None:
        # Only ever a folder this queue made: <workdir>/<hex id>.
        if job.folder.parent == self.workdir and job.folder.name == job.id:
            shutil.rmtree(job.folder, ignore_errors=True)


def user_message(exc: BtsInputError, job: Job) -> str:
    """An input error's message for the page: the browser's file name instead of the server's path.

    ``job.payload["names"]`` maps the server-side files of the upload to the names the browser gave.
    """
    names: dict[str, str] = job.payload.get("names", {})
    problem = exc.problem
    for server in sorted(names, key=len, reverse=True):  # files before the folder holding them
        problem = problem.replace(server, names[server])
    problem = problem.replace(str(job.folder) + "/", "").replace(str(job.folder), "the upload")
    if exc.path is None:
        return problem
    where = names.get(exc.path) or names.get(str(Path(exc.path).resolve()))
    if where is None:
        where = Path(exc.path).name if Path(exc.path).is_relative_to(job.folder) else exc.path
        where = "the upload" if Path(exc.path) == job.folder else where
    return f"{where}: {problem}"
