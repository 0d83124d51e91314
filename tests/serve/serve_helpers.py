"""Helpers shared by the web server's tests: the case name, multipart requests, waiting for a
job, and a volume whose only bright blob lies in the patient's right hemisphere.

Plain functions and constants; the fixtures are in ``conftest.py`` (pytest finds them there, so
test modules never import them).
"""

from __future__ import annotations

import io
import time
import uuid
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from bts_monai.data.discovery import BRATS_MODALITIES

CASE = "BraTS2021_00042"
"""The synthetic case uploaded by the tests (BraTS 2021 names)."""


# ---- requests ---------------------------------------------------------------------------------
def multipart(files: list[tuple[str, bytes]], fields: dict[str, str] | None = None) -> tuple[bytes, str]:
    """A multipart body with file names exactly as given (clients may rewrite odd names)."""
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for key, value in (fields or {}).items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
    for name, data in files:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
        out.write(head.encode() + b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def upload(client: TestClient, files: list[tuple[str, bytes]], **fields: str):
    """POST the files (and form fields) to ``/api/jobs``; returns the response."""
    body, ctype = multipart(files, fields)
    return client.post("/api/jobs", content=body, headers={"content-type": ctype})


def wait_done(client: TestClient, job_id: str, timeout: float = 60.0) -> dict:
    """Poll the job until it ends; also returns the progress values seen on the way."""
    seen = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        job = client.get(f"/api/jobs/{job_id}").json()
        seen.append(job["progress"])
        if job["state"] in ("done", "failed"):
            job["_seen"] = seen
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")


def case_files(case_dir: Path, modalities=BRATS_MODALITIES, with_seg: bool = False) -> list[tuple[str, bytes]]:
    """(name, bytes) of a BraTS 2021-named case folder's modality files (and its label)."""
    names = [f"{case_dir.name}_{m}.nii.gz" for m in modalities] + ([f"{case_dir.name}_seg.nii.gz"] if with_seg else [])
    return [(n, (case_dir / n).read_bytes()) for n in names]


# ---- a blob in the patient's right hemisphere -------------------------------------------------
RIGHT_BLOB_SHAPE = (40, 44, 36)
RIGHT_BLOB_CENTRE = (10, 22, 18)
"""Voxel of the blob's centre; with :data:`RIGHT_BLOB_AFFINE` (LPS: x grows to the patient's
left) a low x lies in the patient's right hemisphere."""
RIGHT_BLOB_AFFINE = np.array(
    [[-1.5, 0.0, 0.0, 30.0], [0.0, -1.5, 0.0, 33.0], [0.0, 0.0, 1.5, -27.0], [0.0, 0.0, 0.0, 1.0]]
)


def right_blob_volume(radius: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """A 4-channel ``(X, Y, Z, 4)`` "brain" whose only bright blob lies in the patient's right
    hemisphere, and the blob's mask ``(X, Y, Z)``."""
    rng = np.random.default_rng(7)
    grids = np.meshgrid(*[np.arange(s) for s in RIGHT_BLOB_SHAPE], indexing="ij")
    r = sum(((g - (s - 1) / 2) / (s * 0.45)) ** 2 for g, s in zip(grids, RIGHT_BLOB_SHAPE))
    blob = sum((g - c) ** 2 for g, c in zip(grids, RIGHT_BLOB_CENTRE)) <= radius**2
    assert RIGHT_BLOB_AFFINE[0, 0] < 0 and RIGHT_BLOB_CENTRE[0] < RIGHT_BLOB_SHAPE[0] / 2  # right hemisphere
    channels = []
    for _ in range(4):
        vol = np.where(r <= 1, rng.uniform(80, 120, RIGHT_BLOB_SHAPE), 0.0)
        vol[blob] = 400.0
        channels.append(vol)
    return np.stack(channels, axis=-1).astype(np.int16), blob


def write_right_blob_nifti(path: Path) -> tuple[Path, np.ndarray]:
    """:func:`right_blob_volume` saved as one 4D NIfTI (qform and sform set); returns it and the mask."""
    import nibabel as nib

    data, blob = right_blob_volume()
    img = nib.Nifti1Image(data, RIGHT_BLOB_AFFINE)
    img.set_qform(RIGHT_BLOB_AFFINE, code=1)
    img.set_sform(RIGHT_BLOB_AFFINE, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    return path, blob
