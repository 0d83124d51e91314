"""The web app: a FastAPI factory around a predictor, with the routes of :mod:`bts_monai.serve.routes`.

:func:`create_app` makes the server's state (the predictor, the job queue in its work folder, the
upload limits), the security middleware (``Host``/``Origin`` checks, security headers) and the
JSON error handlers, mounts the page's static files and includes the router. Unknown job ids are
``404``; nothing is written outside the server's work folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from bts_monai.serve import pipeline
from bts_monai.serve.jobs import Job, JobQueue
from bts_monai.serve.limits import Admission
from bts_monai.serve.routes import STATIC_DIR, PredictorHolder, ServerState, error_response, router

__all__ = [
    "create_app",
    "STATIC_DIR",
    "DEFAULT_MAX_UPLOAD_MB",
    "DEFAULT_KEEP_MINUTES",
    "DEFAULT_MAX_UPLOADS",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_MB = 1024
"""Default upload limit: a BraTS case is 4 x 9-35 MB compressed, up to ~140 MB as plain ``.nii``."""

DEFAULT_KEEP_MINUTES = 60.0
"""Default time a finished job's files are kept."""

DEFAULT_MAX_UPLOADS = 4
"""Default number of uploads received at once; more are refused (503) until one is queued."""

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


def create_app(
    predictor_or_loader: Any,
    workdir: str | os.PathLike[str] | None = None,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    keep_minutes: float = DEFAULT_KEEP_MINUTES,
    *,
    model_name: str | None = None,
    max_queued: int = 16,
    max_files: int = 2000,
    max_uploads: int = DEFAULT_MAX_UPLOADS,
    max_disk_mb: float | None = None,
    allowed_hosts: Sequence[str] | None = None,
    save_probabilities: bool = True,
) -> FastAPI:
    """Build the web app around a predictor.

    Args:
        predictor_or_loader: a :class:`~bts_monai.inference.predictor.Predictor`, or a callable
            returning one (called once, on first use). Its ``convention`` decides how the page
            and the overlay PNGs draw left and right.
        workdir: the folder for jobs (created if needed); default a new temporary folder, removed
            when the app shuts down. Job folders are deleted ``keep_minutes`` after their job ends.
        max_upload_mb: largest upload accepted, in MiB.
        keep_minutes: how long results are kept after a job ends.
        model_name: the model's name on the page (default: the checkpoint's file name).
        max_queued: most jobs waiting at once; further uploads get ``503`` before their body is read.
        max_files: most files in one upload.
        max_uploads: most uploads received at once (more get ``503``).
        max_disk_mb: quota of the work folder in MiB (``None``: none); an upload that would pass
            it gets ``503`` (see :mod:`bts_monai.serve.limits` for what is counted).
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
    holder = PredictorHolder(predictor_or_loader)

    def run(job: Job, progress: Callable[[float, str], None]) -> dict[str, Any]:
        return pipeline.run_case(holder.get(), job, progress)

    jobs = JobQueue(run, root, keep_seconds=keep_minutes * 60.0, max_queued=max_queued)
    quota = None if max_disk_mb is None else int(max_disk_mb * 2**20)
    server = ServerState(
        holder=holder,
        jobs=jobs,
        admission=Admission(root, jobs.free, max_uploads=max_uploads, max_disk_bytes=quota),
        max_bytes=int(max_upload_mb * 2**20),
        max_files=max_files,
        keep_minutes=keep_minutes,
        model_name=model_name,
        save_probabilities=save_probabilities,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        logger.info("job folder: %s (results kept %.0f min)", root, keep_minutes)
        yield
        await asyncio.to_thread(jobs.close)
        if own_workdir:
            shutil.rmtree(root, ignore_errors=True)

    app = FastAPI(title="bts-serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.server = server
    app.state.jobs = jobs
    app.state.workdir = root
    _add_guards(app, None if allowed_hosts is None else {h.lower() for h in allowed_hosts})
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _add_guards(app: FastAPI, hosts: set[str] | None) -> None:
    """Host/Origin checks, security headers, and errors as ``{"error": message}``."""

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Any]) -> Response:
        if hosts is not None:
            host = (request.headers.get("host") or "").lower()
            if _hostname(host) not in hosts:
                return error_response(400, f"requests for host {host!r} are not served here")
            origin = request.headers.get("origin")
            if request.method not in ("GET", "HEAD") and origin and _hostname(urlsplit(origin).netloc) not in hosts:
                return error_response(403, "cross-site requests are refused")
        response = await call_next(request)
        for key, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(x) for x in e.get('loc', ())[1:])}: {e.get('msg')}" for e in exc.errors()]
        return error_response(422, "invalid request: " + "; ".join(parts))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error")
        return error_response(500, f"internal error ({type(exc).__name__}); see the server's log")


def _hostname(netloc: str) -> str:
    """``host:port`` (or ``[v6]:port``) -> host."""
    if netloc.startswith("["):
        return netloc[: netloc.find("]") + 1]
    return netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc
