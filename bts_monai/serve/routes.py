"""The web app's routes: the page, the upload/job API, slice images and downloads.

Routes (JSON errors are always ``{"error": message}``, never a traceback):

* ``GET /`` the page (its script and style are mounted at ``/static`` by the app).
* ``GET /api/info`` the model (name, modalities, regions) and the server's limits.
* ``POST /api/jobs`` multipart upload of one case -> ``202`` and the job; ``400`` malformed,
  ``413`` too large, ``422`` not a usable case, ``503`` (from the headers, before the body is
  read) the queue is full, too many uploads arrive at once, or the work folder's quota is reached.
* ``GET /api/jobs/{id}`` state, progress, then the view geometry, report and downloads.
* ``GET /api/jobs/{id}/slice/{plane}.png`` one plane of a finished job with overlays.
* ``GET /api/jobs/{id}/files/{key}`` the outputs ``bts-infer`` writes (segmentation, report...).
* ``DELETE /api/jobs/{id}`` forget a job now and delete its files.

Every route reads the server's state (:class:`ServerState`) from ``request.app.state.server``,
set by :func:`bts_monai.serve.app.create_app`.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import re
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from bts_monai.errors import BtsInputError
from bts_monai.serve import pipeline, views
from bts_monai.serve.jobs import JOB_ID_PATTERN, Job, JobQueue, QueueFull, user_message
from bts_monai.serve.limits import RETRY_AFTER_S, Admission, ServerBusy, Ticket
from bts_monai.serve.uploads import (
    Upload,
    UploadedCase,
    UploadTooLarge,
    arrange_case,
    content_length,
    receive_multipart,
)

__all__ = ["router", "ServerState", "PredictorHolder", "STATIC_DIR", "error_response"]

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
"""The page's files, shipped as package data."""

_JOB_ID = re.compile(JOB_ID_PATTERN)


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one shape of every error: ``{"error": message}``."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class PredictorHolder:
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
        """The predictor (built now if this is the first use)."""
        with self._lock:
            if self._predictor is None and self._loader is not None:
                self._predictor = self._loader()
            return self._predictor


@dataclass
class ServerState:
    """Everything the routes share: the predictor, the queue, the limits.

    Args:
        holder: the predictor.
        jobs: the job queue (its work folder is the server's).
        admission: who may upload now (:mod:`bts_monai.serve.limits`).
        max_bytes: largest upload.
        max_files: most files in one upload.
        keep_minutes: how long results are kept.
        model_name: the model's name on the page.
        save_probabilities: whether users may ask for probability maps.
        checks: uploads checked at once (checking reads the whole case into memory).
    """

    holder: PredictorHolder
    jobs: JobQueue
    admission: Admission
    max_bytes: int
    max_files: int
    keep_minutes: float
    model_name: str | None = None
    save_probabilities: bool = True
    checks: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(2))

    async def predictor(self) -> Any:
        """The predictor, built off the event loop on first use."""
        return await asyncio.to_thread(self.holder.get)


def _server(request: Request) -> ServerState:
    return request.app.state.server


Server = Annotated[ServerState, Depends(_server)]

router = APIRouter()


class _Refused(Exception):
    """An upload answered with an HTTP error instead of a job."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


# ---- page -----------------------------------------------------------------------------------------
@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    """The page."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


# ---- API ------------------------------------------------------------------------------------------
@router.get("/api/info")
async def info(server: Server) -> dict[str, Any]:
    """The model and the server's limits."""
    predictor = await server.predictor()
    return {
        "model": pipeline.model_info(predictor, server.model_name),
        "limits": {
            "max_upload_mb": round(server.max_bytes / 2**20),
            "keep_minutes": server.keep_minutes,
            "max_files": server.max_files,
            "probabilities": server.save_probabilities,
        },
    }


async def _receive(server: ServerState, request: Request, inbox: Path, ticket: Ticket) -> Upload:
    inbox.mkdir()
    try:
        return await receive_multipart(
            request.headers.get("content-type", ""),
            request.headers.get("content-length"),
            request.stream(),
            inbox,
            server.max_bytes,
            server.max_files,
            on_bytes=functools.partial(server.admission.received, ticket),
        )
    except UploadTooLarge as exc:
        raise _Refused(413, f"{exc}; ask whoever runs the server to raise --max-upload-mb") from None
    except BtsInputError as exc:
        raise _Refused(400, str(exc)) from None
    except ClientDisconnect:
        raise _Refused(400, "the upload was interrupted") from None


async def _arrange(server: ServerState, upload: Upload, job_id: str, folder: Path) -> UploadedCase:
    case = None
    try:
        case = await asyncio.to_thread(arrange_case, upload.files, folder / "input")
        predictor = await server.predictor()
        async with server.checks:
            await asyncio.to_thread(pipeline.check_case, predictor, case)
    except BtsInputError as exc:
        names = case.names if case is not None else {}
        raise _Refused(422, user_message(exc, Job(job_id, folder, "", {"names": names}))) from None
    return case


def _busy(message: str) -> JSONResponse:
    return error_response(503, message, {"Retry-After": str(RETRY_AFTER_S)})


@router.post("/api/jobs", status_code=202)
async def submit(request: Request, server: Server) -> JSONResponse:
    """Receive one case and queue it; refused from the headers alone when the server is busy."""
    try:
        announced = content_length(request.headers.get("content-length"))
    except BtsInputError as exc:
        return error_response(400, str(exc))
    jobs = server.jobs
    job_id = jobs.new_id()
    try:
        ticket = server.admission.admit(job_id, announced)
    except ServerBusy as exc:  # nothing of the body has been read
        logger.info("upload refused: %s", exc)
        return _busy(str(exc))
    folder = jobs.folder_of(job_id)
    queued = False
    try:
        folder.mkdir(parents=True)
        upload = await _receive(server, request, folder / "upload", ticket)
        case = await _arrange(server, upload, job_id, folder)
        shutil.rmtree(folder / "upload", ignore_errors=True)
        fields = upload.fields
        want_probs = server.save_probabilities and fields.get("probabilities", "0").lower() in ("1", "true", "on")
        notes = [_ignored_note(case.ignored)] if case.ignored else []
        payload = {"case": case, "names": case.names, "probabilities": want_probs, "notes": notes}
        job = Job(job_id, folder, case.name, payload)
        try:
            jobs.submit(job)
        except QueueFull as exc:  # admission counted this upload; only a direct submit can race it
            raise _Refused(503, str(exc)) from None
        queued = True
    except ServerBusy as exc:  # the quota, reached while a chunked body arrived
        shutil.rmtree(folder, ignore_errors=True)
        return _busy(str(exc))
    except _Refused as refused:
        shutil.rmtree(folder, ignore_errors=True)
        if refused.status == 503:
            return _busy(refused.message)
        return error_response(refused.status, refused.message)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        server.admission.release(ticket, kept=queued)
    logger.info("job %s queued: %s (%s, %d files)", job.id, case.name, case.kind, len(case.files))
    return JSONResponse(_job_json(jobs, job), status_code=202)


def _lookup(server: ServerState, job_id: str) -> Job:
    job = server.jobs.get(job_id) if _JOB_ID.match(job_id) else None
    if job is None:
        raise StarletteHTTPException(404, "no such job (unknown id, or its results were deleted)")
    return job


def _finished(server: ServerState, job_id: str) -> Job:
    job = _lookup(server, job_id)
    if job.state != "done" or job.result is None:
        raise StarletteHTTPException(409, f"the job is {job.state}, not done" + (f": {job.error}" if job.error else ""))
    return job


@router.get("/api/jobs/{job_id}")
async def status(job_id: str, server: Server) -> dict[str, Any]:
    """A job's state and, once done, its view, report and downloads."""
    return _job_json(server.jobs, _lookup(server, job_id))


@router.delete("/api/jobs/{job_id}", status_code=204)
async def delete(job_id: str, server: Server) -> Response:
    """Forget a job and delete its files."""
    _lookup(server, job_id)
    server.jobs.delete(job_id)
    return Response(status_code=204)


@router.get("/api/jobs/{job_id}/slice/{plane}.png")
async def slice_png(
    job_id: str,
    plane: str,
    server: Server,
    index: int | None = None,
    modality: str | None = None,
    mode: str = "regions",
    layers: str | None = None,
    opacity: float = 0.45,
) -> Response:
    """One plane of a finished job as PNG, with the chosen overlays."""
    job = _finished(server, job_id)
    chosen = None if layers is None else [x for x in layers.split(",") if x]
    try:
        png = await asyncio.to_thread(
            views.render_plane, job.folder / "view", plane, index, modality, mode, chosen, opacity
        )
    except ValueError as exc:
        return error_response(422, str(exc))
    except FileNotFoundError:  # deleted or expired since the lookup
        return error_response(404, "no such job (its results were deleted)")
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


@router.get("/api/jobs/{job_id}/files/{key}")
async def download(job_id: str, key: str, server: Server) -> FileResponse:
    """One of the files ``bts-infer`` writes, under the case's name."""
    job = _finished(server, job_id)
    entry = (job.result or {}).get("files", {}).get(key)
    if entry is None:
        raise StarletteHTTPException(404, f"this job has no file {key!r}")
    path = job.folder / entry["path"]
    if not path.is_file():  # deleted or expired since the lookup
        raise StarletteHTTPException(404, "no such job (its results were deleted)")
    return FileResponse(path, filename=entry["filename"], media_type=entry.get("media_type"))


def _ignored_note(names: Sequence[str]) -> str:
    shown = ", ".join(names) if len(names) <= 3 else f"{len(names)} files ({names[0]}, …)"
    return f"Not used (labels and masks are not needed): {shown}."


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
