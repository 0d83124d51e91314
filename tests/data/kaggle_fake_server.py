"""A local stand-in for the part of the Kaggle API that kagglehub uses to download a dataset,
and builders for tiny archives in the exact layouts (quirks included) of the Kaggle copies of
BraTS 2020, BraTS 2021 and the LGG MRI set.

kagglehub 1.x (through kagglesdk) makes these calls, all answered here:

* ``POST {api}/v1/datasets.DatasetApiService/GetDataset`` with JSON ``{"ownerSlug", "datasetSlug"}``
  -> JSON with ``currentVersionNumber`` (to pin the version);
* ``POST {api}/v1/datasets.DatasetApiService/DownloadDataset`` with JSON
  ``{"ownerSlug", "datasetSlug", "datasetVersionNumber"}`` -> ``302`` to the archive's URL;
* ``GET`` of that URL (``Accept-Ranges: bytes``, ``Content-Length``, ``x-goog-hash: md5=...`` like
  Google Cloud Storage), and again with ``Range: bytes=N-`` to resume a cut download.

kagglesdk has no setting for an arbitrary endpoint, only ``KAGGLE_API_ENVIRONMENT``: ``LOCALHOST``
makes it call ``http://localhost/api/v1/...``. :meth:`FakeKaggle.configure` sets that and points
the standard ``http_proxy`` variable (honoured by ``requests``) at this server, so every request
reaches it on its random port. Nothing ever leaves 127.0.0.1.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import tarfile
import threading
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import nibabel as nib
import numpy as np
import pytest
import tifffile

from bts_monai.labels import get_scheme

API_PREFIXES = ("/api/v1/", "/v1/")
FILES_PREFIX = "/_storage/"


@dataclass
class FakeDataset:
    """One dataset the fake server knows: its archive bytes and version number."""

    archive: bytes
    version: int = 1


@dataclass
class FakeKaggle:
    """A threaded HTTP server on 127.0.0.1 answering kagglehub's dataset-download calls.

    Attributes:
        datasets: ``"owner/slug"`` -> :class:`FakeDataset`.
        api_status: when set, every API call answers this HTTP status (e.g. 401).
        cut_downloads: this many archive downloads send half their bytes, then close the connection.
        send_md5: send GCS's ``x-goog-hash`` md5 header, which kagglehub verifies.
        requests: every request seen, as ``{"method", "path", "range", "auth", "body"}``.
    """

    datasets: dict[str, FakeDataset] = field(default_factory=dict)
    api_status: int | None = None
    cut_downloads: int = 0
    send_md5: bool = True
    requests: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> FakeKaggle:
        """Listen on a free port of 127.0.0.1 in a daemon thread."""
        fake = self

        class Handler(_Handler):
            server_fake = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def proxy_url(self) -> str:
        """``http://127.0.0.1:<port>``: the value for ``http_proxy``."""
        assert self._server is not None, "start() the server first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def configure(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Point kagglehub at this server through its environment variables (no port 80, no network)."""
        monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "LOCALHOST")
        for var in ("http_proxy", "HTTP_PROXY"):
            monkeypatch.setenv(var, self.proxy_url)
        for var in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY", "https_proxy", "HTTPS_PROXY"):
            monkeypatch.delenv(var, raising=False)

    # -- request log helpers --------------------------------------------------------------
    def calls(self, kind: str) -> list[dict[str, Any]]:
        """Requests seen for ``kind``: an API method name (``"GetDataset"``) or ``"file"``."""
        with self._lock:
            if kind == "file":
                return [r for r in self.requests if r["path"].startswith(FILES_PREFIX)]
            return [r for r in self.requests if r["path"].endswith("/" + kind)]

    def _log(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(entry)

    def _take_cut(self) -> bool:
        with self._lock:
            if self.cut_downloads > 0:
                self.cut_downloads -= 1
                return True
            return False


class _Handler(BaseHTTPRequestHandler):
    server_fake: FakeKaggle

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        pass  # keep test output clean; FakeKaggle.requests records everything

    def _path(self) -> str:
        # Through a proxy the request line holds an absolute URL: "POST http://localhost/api/v1/...".
        return urlsplit(self.path).path

    def _record(self, body: Any = None) -> str:
        path = self._path()
        self.server_fake._log(
            {
                "method": self.command,
                "path": path,
                "range": self.headers.get("Range"),
                "auth": self.headers.get("Authorization"),
                "body": body,
            }
        )
        return path

    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        path = self._record(body)
        prefix = next((p for p in API_PREFIXES if path.startswith(p)), None)
        if prefix is None:
            return self._send_json(404, {"code": 404, "message": f"no such endpoint {path}"})
        fake = self.server_fake
        if fake.api_status is not None:
            return self._send_json(fake.api_status, {"code": fake.api_status, "message": "Unauthenticated"})
        if not self.headers.get("Authorization"):
            return self._send_json(401, {"code": 401, "message": "Unauthenticated"})
        service_method = path[len(prefix) :]
        handle = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
        ds = fake.datasets.get(handle)
        if ds is None:
            return self._send_json(404, {"code": 404, "message": f"dataset {handle} not found"})
        if service_method == "datasets.DatasetApiService/GetDataset":
            return self._send_json(
                200, {"ref": handle, "currentVersionNumber": ds.version, "totalBytes": len(ds.archive)}
            )
        if service_method == "datasets.DatasetApiService/DownloadDataset":
            version = int(body.get("datasetVersionNumber") or ds.version)
            self.send_response(302)
            self.send_header("Location", f"http://localhost{FILES_PREFIX}{handle}/{version}/archive.zip")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        return self._send_json(404, {"code": 404, "message": f"unknown method {service_method}"})

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self._record()
        if not path.startswith(FILES_PREFIX):
            return self._send_json(404, {"code": 404, "message": "not found"})
        owner, slug, _version, _name = path[len(FILES_PREFIX) :].split("/")
        fake = self.server_fake
        ds = fake.datasets.get(f"{owner}/{slug}")
        if ds is None:
            return self._send_json(404, {"code": 404, "message": "not found"})
        data = ds.archive
        start = 0
        range_header = self.headers.get("Range")
        if range_header and range_header.startswith("bytes="):
            start = int(range_header[len("bytes=") :].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
        body = data[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(body)))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        if fake.send_md5:
            md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
            self.send_header("x-goog-hash", f"crc32c=AAAAAA==,md5={md5}")
        self.end_headers()
        if fake._take_cut():
            # Half the bytes, then hang up: the client sees a short body (Content-Length is the full size).
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return None
        self.wfile.write(body)
        return None


# -- archives in the Kaggle datasets' own layouts ------------------------------------------

BRATS_MODALITIES = ("flair", "t1", "t1ce", "t2")
_AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])


def nifti_bytes(seed: int, label: bool = False, gz: bool = False, shape: tuple[int, ...] = (8, 8, 8)) -> bytes:
    """A tiny NIfTI volume as file bytes (gzip-compressed for ``.nii.gz`` when ``gz``)."""
    rng = np.random.default_rng(seed)
    if label:
        values = np.array([get_scheme("brats2021").background, *get_scheme("brats2021").foreground_labels])
        arr = rng.choice(values, size=shape).astype(np.uint8)
    else:
        arr = rng.normal(100, 20, size=shape).astype(np.float32)
    data = nib.Nifti1Image(arr, _AFFINE).to_bytes()
    return gzip.compress(data, mtime=0) if gz else data


def tiff_bytes(seed: int, mask: bool = False) -> bytes:
    """A 16x16 TIFF: an RGB slice, or a binary mask with the LGG scheme's values."""
    rng = np.random.default_rng(seed)
    if mask:
        scheme = get_scheme("lgg")
        arr = rng.choice([scheme.background, *scheme.foreground_labels], size=(16, 16)).astype(np.uint8)
    else:
        arr = rng.integers(0, 255, size=(16, 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr)
    return buf.getvalue()


def zip_bytes(members: Iterable[tuple[str, bytes]]) -> bytes:
    """A zip archive of ``(name, data)`` members, deflated like Kaggle's bundles."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return buf.getvalue()


def tar_bytes(members: Iterable[tuple[str, bytes]]) -> bytes:
    """An uncompressed tar of ``(name, data)`` regular-file members."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def brats2020_members(
    train_ids: Iterable[int] = (1, 2, 355), val_ids: Iterable[int] = (1, 2)
) -> list[tuple[str, bytes]]:
    """Kaggle ``awsaf49/brats20-dataset-training-validation``: case 355's label is misnamed."""
    members: list[tuple[str, bytes]] = []
    train_dir = "BraTS2020_TrainingData/MICCAI_BraTS2020_TrainingData"
    for i in train_ids:
        case = f"BraTS20_Training_{i:03d}"
        for k, mod in enumerate(BRATS_MODALITIES):
            members.append((f"{train_dir}/{case}/{case}_{mod}.nii", nifti_bytes(i * 10 + k)))
        seg_name = "W39_1998.09.19_Segm.nii" if i == 355 else f"{case}_seg.nii"
        members.append((f"{train_dir}/{case}/{seg_name}", nifti_bytes(i, label=True)))
    members.append((f"{train_dir}/name_mapping.csv", b"BraTS_2020_subject_ID\n"))
    members.append((f"{train_dir}/survival_info.csv", b"Brats20ID,Age\n"))
    val_dir = "BraTS2020_ValidationData/MICCAI_BraTS2020_ValidationData"
    for i in val_ids:
        case = f"BraTS20_Validation_{i:03d}"
        for k, mod in enumerate(BRATS_MODALITIES):
            members.append((f"{val_dir}/{case}/{case}_{mod}.nii", nifti_bytes(1000 + i * 10 + k)))
    return members


def brats2021_case(case: str, seed: int, folder: bool = True) -> list[tuple[str, bytes]]:
    """One BraTS 2021 case's five ``.nii.gz`` files, in a case folder or loose."""
    prefix = f"{case}/" if folder else ""
    files = [(f"{prefix}{case}_{mod}.nii.gz", nifti_bytes(seed + k, gz=True)) for k, mod in enumerate(BRATS_MODALITIES)]
    return [*files, (f"{prefix}{case}_seg.nii.gz", nifti_bytes(seed, label=True, gz=True))]


def brats2021_members(case_ids: Iterable[int] = (0, 495, 621)) -> list[tuple[str, bytes]]:
    """Kaggle ``dschettler8845/brats-2021-task1``: the training tar plus two loose single-case tars
    (duplicates of cases in the big tar, packed without their case folder)."""
    inner: list[tuple[str, bytes]] = []
    for i in case_ids:
        inner += brats2021_case(f"BraTS2021_{i:05d}", seed=i * 10)
    return [
        ("BraTS2021_00495.tar", tar_bytes(brats2021_case("BraTS2021_00495", seed=4950, folder=False))),
        ("BraTS2021_00621.tar", tar_bytes(brats2021_case("BraTS2021_00621", seed=6210, folder=False))),
        ("BraTS2021_Training_Data.tar", tar_bytes(inner)),
    ]


def lgg_members(patients: Iterable[str] = ("TCGA_CS_4941_19960909", "TCGA_HT_A61A_20000127"), slices: int = 3):
    """Kaggle ``mateuszbuda/lgg-mri-segmentation``: ``kaggle_3m`` plus a nested duplicate copy."""
    copy: list[tuple[str, bytes]] = []
    for p, patient in enumerate(patients):
        for n in range(1, slices + 1):
            copy.append((f"kaggle_3m/{patient}/{patient}_{n}.tif", tiff_bytes(p * 100 + n)))
            copy.append((f"kaggle_3m/{patient}/{patient}_{n}_mask.tif", tiff_bytes(p * 100 + n, mask=True)))
    copy.append(("kaggle_3m/data.csv", b"Patient,RNASeqCluster\n"))
    copy.append(("kaggle_3m/README.md", b"# LGG segmentation dataset\n"))
    return copy + [(f"lgg-mri-segmentation/{name}", data) for name, data in copy]
