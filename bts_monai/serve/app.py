"""The web app: a FastAPI factory serving the page, the upload/job API, slice images and downloads.

Routes (JSON errors are always ``{"error": message}``, never a traceback):

* ``GET /`` the page; ``GET /static/...`` its script and style (from the package: works offline).
* ``GET /api/info`` the model (name, modalities, regions) and the server's limits.
* ``POST /api/jobs`` multipart upload of one case -> ``202`` and the job; ``400`` malformed,
  ``413`` too large, ``422`` not a usable case, ``429`` queue full.
* ``GET /api/jobs/{id}`` state, progress, then the view geometry, report and downloads.
* ``GET /api/jobs/{id}/slice/{plane}.png`` one plane of a finished job with overlays.
* ``GET /api/jobs/{id}/files/{key}`` the outputs ``bts-infer`` writes (segmentation, report...).
* ``DELETE /api/jobs/{id}`` forget a job now and delete its files.

Unknown job ids are ``404``; nothing is written outside the server's work folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from bts_monai.errors import BtsInputError
from bts_monai.serve import pipeline, views
from bts_monai.serve.jobs import JOB_ID_PATTERN, Job, JobQueue, QueueFull, user_message
from bts_monai.serve.uploads import Upload, UploadedCase, UploadTooLarge, arrange_case, receive_multipart

__all__ = ["create_app", "STATIC_DIR", "DEFAULT_MAX_UPLOAD_MB", "DEFAULT_KEEP_MINUTES"]

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
"""The page's files, shipped as package data."""

DEFAULT_MAX_UPLOAD_MB = 1024
"""Default upload limit: a BraTS case is 4 x 9-35 MB compressed, up to ~140 MB as plain ``.nii``."""

DEFAULT_KEEP_MINUTES = 60.0
"""Default time a finished job's files are kept."""

_JOB_ID = re.compile(JOB_ID_PATTERN)
_SECURITY_HEADERS = {
    # Everything the page needs comes from this server; nothing else may load or frame it.
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class _PredictorHolder:
    """The predictor, given ready-made or built on first use by a loader."""

    def __init__(self, predictor_or_loader: Any) -> None:
        self._predictor: Any = None
        self._loader: Callable[[], Any] | None = None
        # A loader is a plain function (or partial); a predictor is an object, callable or not.
        if inspect.isroutine(predictor_or_loader) or isinstance(predictor_or_loader, functools.partial):
            self._loader = predictor_or_loader
        else:
            self._predictor = predictor_or_loader
        self._lock = threading.Lock()

    def get(self) -> Any:
        with self._lock:
            if self._predictor is None and self._loader is not None:
                self._predictor = self._loader()
            return self._predictor


def create_app(
    predictor_or_loader: Any,
    workdir: str | os.PathLike[str] | None = None,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    keep_minutes: float = DEFAULT_KEEP_MINUTES,
    *,
    model_name: str | None = None,
    max_queued: int = 16,
    max_files: int = 2000,
    allowed_hosts: Sequence[str] | None = None,
    save_probabilities: bool = True,
) -> FastAPI:
    """Build the web app around a predictor.

    Args:
        predictor_or_loader: a :class:`~bts_monai.inference.predictor.Predictor`, or a callable
            returning one (called once, on first use).
        workdir: the folder for jobs (created if needed); default a new temporary folder, removed
            when the app shuts down. Job folders are deleted ``keep_minutes`` after their job ends.
        max_upload_mb: largest upload accepted, in MiB.
        keep_minutes: how long results are kept after a job ends.
        model_name: the model's name on the page (default: the checkpoint's file name).
        max_queued: most jobs waiting at once (more get ``429``).
        max_files: most files in one upload.
        allowed_hosts: ``Host`` header values to accept (``None``: any). Checking them stops
            other web sites from reaching a loopback server through DNS rebinding.
        save_probabilities: whether users may ask for the probability maps.

    Returns:
        The FastAPI application (serve it with uvicorn).
    """
    own_workdir = workdir is None
    root = Path(tempfile.mkdtemp(prefix="bts-serve-")) if own_workdir else Path(workdir)  # type: ignore[arg-type]
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    holder = _PredictorHolder(predictor_or_loader)
    max_bytes = int(max_upload_mb * 2**20)

    def run(job: Job, progress: Callable[[float, str], None]) -> dict[str, Any]:
        return pipeline.run_case(holder.get(), job, progress)

    jobs = JobQueue(run, root, keep_seconds=keep_minutes * 60.0, max_queued=max_queued)
    # Checking an upload reads the whole case into memory: a few at a time, however many arrive.
    checks = asyncio.Semaphore(2)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        logger.info("job folder: %s (results kept %.0f min)", root, keep_minutes)
        yield
        await asyncio.to_thread(jobs.close)
        if own_workdir:
            shutil.rmtree(root, ignore_errors=True)

    app = FastAPI(title="bts-serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.jobs = jobs
    app.state.workdir = root
    hosts = {h.lower() for h in allowed_hosts} if allowed_hosts is not None else None

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Any]) -> Response:
        if hosts is not None:
            host = (request.headers.get("host") or "").lower()
            if _hostname(host) not in hosts:
                return _error(400, f"requests for host {host!r} are not served here")
            origin = request.headers.get("origin")
            if request.method not in ("GET", "HEAD") and origin and _hostname(urlsplit(origin).netloc) not in hosts:
                return _error(403, "cross-site requests are refused")
        response = await call_next(request)
        for key, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(x) for x in e.get('loc', ())[1:])}: {e.get('msg')}" for e in exc.errors()]
        return _error(422, "invalid request: " + "; ".join(parts))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error")
        return _error(500, f"internal error ({type(exc).__name__}); see the server's log")

    # ---- page -----------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # ---- API ------------------------------------------------------------------------------------
    @app.get("/api/info")
    async def info() -> dict[str, Any]:
        predictor = await asyncio.to_thread(holder.get)
        return {
            "model": pipeline.model_info(predictor, model_name),
            "limits": {
                "max_upload_mb": round(max_bytes / 2**20),
                "keep_minutes": keep_minutes,
                "max_files": max_files,
                "probabilities": save_probabilities,
            },
        }

    async def receive(request: Request, inbox: Path) -> Upload:
        inbox.mkdir()
        try:
            return await receive_multipart(
                request.headers.get("content-type", ""),
                request.headers.get("content-length"),
                request.stream(),
                inbox,
                max_bytes,
                max_files,
            )
        except UploadTooLarge as exc:
            raise _Refused(413, f"{exc}; ask whoever runs the server to raise --max-upload-mb") from None
        except BtsInputError as exc:
            raise _Refused(400, str(exc)) from None
        except ClientDisconnect:
            raise _Refused(400, "the upload was interrupted") from None

    async def arrange(upload: Upload, job_id: str, folder: Path) -> UploadedCase:
        case = None
        try:
            case = await asyncio.to_thread(arrange_case, upload.files, folder / "input")
            predictor = await asyncio.to_thread(holder.get)
            async with checks:
                await asyncio.to_thread(pipeline.check_case, predictor, case)
        except BtsInputError as exc:
            names = case.names if case is not None else {}
            raise _Refused(422, user_message(exc, Job(job_id, folder, "", {"names": names}))) from None
        return case

    @app.post("/api/jobs", status_code=202)
    async def submit(request: Request) -> JSONResponse:
        job_id, folder = jobs.new_folder()
        try:
            upload = await receive(request, folder / "upload")
            case = await arrange(upload, job_id, folder)
            shutil.rmtree(folder / "upload", ignore_errors=True)
            want_probs = save_probabilities and upload.fields.get("probabilities", "0").lower() in ("1", "true", "on")
            notes = [_ignored_note(case.ignored)] if case.ignored else []
            payload = {"case": case, "names": case.names, "probabilities": want_probs, "notes": notes}
            job = Job(job_id, folder, case.name, payload)
            try:
                jobs.submit(job)
            except QueueFull as exc:
                raise _Refused(429, str(exc)) from None
        except _Refused as refused:
            shutil.rmtree(folder, ignore_errors=True)
            return _error(refused.status, refused.message)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        logger.info("job %s queued: %s (%s, %d files)", job.id, case.name, case.kind, len(case.files))
        return JSONResponse(_job_json(jobs, job), status_code=202)

    def lookup(job_id: str) -> Job:
        job = jobs.get(job_id) if _JOB_ID.match(job_id) else None
        if job is None:
            raise StarletteHTTPException(404, "no such job (unknown id, or its results were deleted)")
        return job

    def finished(job_id: str) -> Job:
        job = lookup(job_id)
        if job.state != "done" or job.result is None:
            raise StarletteHTTPException(
                409, f"the job is {job.state}, not done" + (f": {job.error}" if job.error else "")
            )
        return job

    @app.get("/api/jobs/{job_id}")
    async def status(job_id: str) -> dict[str, Any]:
        return _job_json(jobs, lookup(job_id))

    @app.delete("/api/jobs/{job_id}", status_code=204)
    async def delete(job_id: str) -> Response:
        lookup(job_id)
        jobs.delete(job_id)
        return Response(status_code=204)

    @app.get("/api/jobs/{job_id}/slice/{plane}.png")
    async def slice_png(
        job_id: str,
        plane: str,
        index: int | None = None,
        modality: str | None = None,
        mode: str = "regions",
        layers: str | None = None,
        opacity: float = 0.45,
    ) -> Response:
        job = finished(job_id)
        chosen = None if layers is None else [x for x in layers.split(",") if x]
        try:
            png = await asyncio.to_thread(
                views.render_plane, job.folder / "view", plane, index, modality, mode, chosen, opacity
            )
        except ValueError as exc:
            return _error(422, str(exc))
        except FileNotFoundError:  # deleted or expired since the lookup
            return _error(404, "no such job (its results were deleted)")
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/jobs/{job_id}/files/{key}")
    async def download(job_id: str, key: str) -> FileResponse:
        job = finished(job_id)
        entry = (job.result or {}).get("files", {}).get(key)
        if entry is None:
            raise StarletteHTTPException(404, f"this job has no file {key!r}")
        path = job.folder / entry["path"]
        if not path.is_file():  # deleted or expired since the lookup
            raise StarletteHTTPException(404, "no such job (its results were deleted)")
        return FileResponse(path, filename=entry["filename"], media_type=entry.get("media_type"))

    return app


def _ignored_note(names: Sequence[str]) -> str:
    shown = ", ".join(names) if len(names) <= 3 else f"{len(names)} files ({names[0]}, …)"
    return f"Not used (labels and masks are not needed): {shown}."


class _Refused(Exception):
    """An upload answered with an HTTP error instead of a job."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


def _hostname(netloc: str) -> str:
    """``host:port`` (or ``[v6]:port``) -> host."""
    if netloc.startswith("["):
        return netloc[: netloc.find("]") + 1]
    return netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc


def _job_json(jobs: JobQueue, job: Job) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": job.id,
        "name": job.name,
        "kind": job.payload["case"].kind if "case" in job.payload else None,
        "state": job.state,
        "progress": round(job.progress, 4),
        "stage": job.stage,
        "queue_position": jobs.position(job),
        "error": job.error,
        "expires_in_s": jobs.expires_in(job),
        "notes": job.payload.get("notes", []),
    }
    if job.state == "done" and job.result is not None:
        out["view"] = job.result["view"]
        out["report"] = job.result["report"]
        out["downloads"] = [
            {"key": key, "label": f["label"], "filename": f["filename"], "size": f["size"]}
            for key, f in job.result["files"].items()
        ]
    return out
