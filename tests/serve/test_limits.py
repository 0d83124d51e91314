"""The server under load: uploads refused with 503 from their headers (queue full, too many at
once, the work folder's quota), the quota enforced on chunked bodies, and the routes as a router."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from serve_helpers import case_files, multipart, upload, wait_done

from bts_monai.inference.predictor import Predictor
from bts_monai.serve.app import create_app
from bts_monai.serve.limits import Admission, ServerBusy, folder_bytes


class Body:
    """An ASGI ``receive`` that hands over a request body in chunks and counts what was taken;
    while ``hold`` is set it stops after the first chunk until ``hold`` is cleared."""

    def __init__(self, data: bytes, chunk: int = 4096, hold: asyncio.Event | None = None) -> None:
        self.chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)] or [b""]
        self.taken = 0
        self.hold = hold

    async def __call__(self) -> dict:
        if self.taken >= len(self.chunks):
            await asyncio.Event().wait()  # the client stays connected; nothing more comes
        if self.hold is not None and self.taken == 1:
            await self.hold.wait()
        part = self.chunks[self.taken]
        self.taken += 1
        return {"type": "http.request", "body": part, "more_body": self.taken < len(self.chunks)}


async def asgi_post(app: FastAPI, body: Body, headers: dict[str, str]) -> tuple[int, dict]:
    """POST /api/jobs straight to the ASGI app; returns the status and the JSON answer."""
    import json

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/jobs",
        "raw_path": b"/api/jobs",
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    await app(scope, body, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(payload) if payload else {}


def _request(case_dir: Path) -> tuple[bytes, dict[str, str]]:
    body, ctype = multipart(case_files(case_dir))
    return body, {"content-type": ctype, "content-length": str(len(body)), "host": "127.0.0.1"}


def test_full_queue_refuses_before_reading_the_body(
    brats_predictor: Predictor, case_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    original = brats_predictor.predict_case

    def blocked(case, **kwargs):  # the model is busy with the first case until released
        release.wait(30)
        return original(case, **kwargs)

    monkeypatch.setattr(brats_predictor, "predict_case", blocked)
    app = create_app(brats_predictor, tmp_path / "jobs", max_queued=1)
    with TestClient(app) as client:
        running = upload(client, case_files(case_dir)).json()["id"]
        end = time.monotonic() + 30
        while client.get(f"/api/jobs/{running}").json()["state"] != "running" and time.monotonic() < end:
            time.sleep(0.02)
        waiting = upload(client, case_files(case_dir))
        assert waiting.status_code == 202  # one may wait
        data, headers = _request(case_dir)
        body = Body(data)
        status, answer = client.portal.call(asgi_post, app, body, headers)
        assert status == 503 and "queue" in answer["error"] and "\n" not in answer["error"]
        assert body.taken == 0, "the body was read before the upload was refused"
        r = upload(client, case_files(case_dir))
        assert r.status_code == 503 and r.headers["retry-after"]
        release.set()
        assert wait_done(client, running)["state"] == "done"
        assert wait_done(client, waiting.json()["id"])["state"] == "done"
        assert upload(client, case_files(case_dir)).status_code == 202  # room again
    assert sorted(p.name for p in (tmp_path / "jobs").iterdir()) == []


def test_concurrent_uploads_are_bounded(brats_predictor: Predictor, case_dir: Path, tmp_path: Path) -> None:
    app = create_app(brats_predictor, tmp_path / "jobs", max_uploads=1)
    data, headers = _request(case_dir)

    async def scenario() -> tuple[tuple[int, dict], tuple[int, dict], Body]:
        hold = asyncio.Event()
        first = asyncio.create_task(asgi_post(app, Body(data, hold=hold), headers))
        while app.state.server.admission.in_flight == 0:  # the first upload is arriving
            await asyncio.sleep(0.01)
        second_body = Body(data)
        second = await asgi_post(app, second_body, headers)
        hold.set()
        return await first, second, second_body

    with TestClient(app) as client:
        first, second, second_body = client.portal.call(scenario)
        assert second[0] == 503 and "being received" in second[1]["error"]
        assert second_body.taken == 0
        assert first[0] == 202, first
        assert wait_done(client, first[1]["id"])["state"] == "done"
        assert app.state.server.admission.in_flight == 0


def test_disk_quota_by_content_length_and_while_streaming(
    brats_predictor: Predictor, case_dir: Path, tmp_path: Path
) -> None:
    workdir = tmp_path / "jobs"
    data, headers = _request(case_dir)
    app = create_app(brats_predictor, workdir, max_disk_mb=(3 * len(data)) / 2**20)
    with TestClient(app) as client:
        job = wait_done(client, upload(client, case_files(case_dir)).json()["id"])  # fits: the folder was empty
        assert job["state"] == "done"
        used = folder_bytes(workdir)
        assert used > len(data)  # inputs, outputs and the viewer's copy are all counted
        app.state.server.admission.max_disk_bytes = used + len(data) // 2  # room for half an upload

        body = Body(data)
        status, answer = client.portal.call(asgi_post, app, body, headers)
        assert status == 503 and "work folder is full" in answer["error"] and body.taken == 0

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            for i in range(0, len(data), 8192):
                yield data[i : i + 8192]

        r = client.post("/api/jobs", content=chunks(), headers={"content-type": headers["content-type"]})
        assert r.status_code == 503 and "work folder is full" in r.json()["error"]
        assert [p.name for p in workdir.iterdir()] == [job["id"]], "a refused upload left files behind"
        assert folder_bytes(workdir) == used

        client.delete(f"/api/jobs/{job['id']}")
        assert upload(client, case_files(case_dir)).status_code == 202  # room again once deleted


def test_admission_counts_uploads_in_flight(tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "seg.nii.gz").write_bytes(b"x" * 300)
    adm = Admission(tmp_path, lambda: 10, max_uploads=3, max_disk_bytes=1000)
    a = adm.admit("a", 400)  # 300 kept + 400
    with pytest.raises(ServerBusy, match="full"):
        adm.admit("b", 400)  # 300 + 400 + 400 > 1000
    b = adm.admit("b", None)  # chunked: admitted, counted as it arrives
    adm.received(b, 200)
    with pytest.raises(ServerBusy, match="full"):
        adm.received(b, 301)  # 300 + 400 + 301
    adm.release(a, kept=True)
    adm.received(b, 250)
    assert adm.in_flight == 1
    with pytest.raises(ServerBusy, match="queue"):
        Admission(tmp_path, lambda: 0).admit("c", 1)


def _read_response(conn: socket.socket) -> str:
    """One HTTP response: its head and as much body as its Content-Length says (the server may
    send them in separate packets)."""
    data = b""
    while True:
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            if length is None or len(body) >= int(length.group(1)):
                return data.decode("latin-1")
        chunk = conn.recv(65536)
        if not chunk:
            return data.decode("latin-1")
        data += chunk


def test_refused_from_headers_over_a_real_socket(brats_predictor: Predictor, tmp_path: Path) -> None:
    """A client announcing 1 GiB gets 503 without sending a byte of it."""
    import uvicorn

    app = create_app(brats_predictor, tmp_path / "jobs", max_disk_mb=10)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(
                b"POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: multipart/form-data; boundary=x\r\n"
                b"Content-Length: 1073741824\r\nExpect: 100-continue\r\n\r\n"
            )
            answer = _read_response(conn)
        head, _, text = answer.partition("\r\n\r\n")
        assert head.startswith("HTTP/1.1 503"), answer
        assert "work folder is full" in text and "100 Continue" not in head
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def test_the_routes_are_a_router(brats_predictor: Predictor, tmp_path: Path) -> None:
    """The API is an APIRouter over the server's state: mounted on a bare FastAPI app, it serves."""
    from bts_monai.serve.routes import router

    state = create_app(brats_predictor, tmp_path / "jobs", model_name="tiny").state.server
    bare = FastAPI()
    bare.state.server = state
    bare.include_router(router)
    with TestClient(bare) as client:
        assert client.get("/api/info").json()["model"]["name"] == "tiny"
        assert client.get("/api/jobs/" + "0" * 32).status_code == 404
    state.jobs.close()
