"""The web server's API through FastAPI's test client: uploads in every form, the queue, outputs,
bad input, path traversal, limits and clean-up."""

from __future__ import annotations

import gzip
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from serve_helpers import CASE, case_files, multipart, upload, wait_done

from bts_monai.data.discovery import BRATS_MODALITIES
from bts_monai.data.synthetic import BRATS_LIKE_AFFINE, make_brats_case, make_lgg_patient, synthetic_brats_arrays
from bts_monai.inference.predictor import Predictor
from bts_monai.serve.app import create_app


# ---- helpers ----------------------------------------------------------------------------------
def nifti_bytes(data: np.ndarray, affine: np.ndarray = BRATS_LIKE_AFFINE, compressed: bool = True) -> bytes:
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    raw = img.to_bytes()
    return gzip.compress(raw) if compressed else raw


def load_nifti(data: bytes) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_bytes(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)


def assert_same_geometry(seg: nib.Nifti1Image, ref: nib.Nifti1Image) -> None:
    assert seg.shape == ref.shape[:3]
    np.testing.assert_allclose(seg.affine, ref.affine)
    np.testing.assert_allclose(seg.get_qform(), ref.get_qform())
    np.testing.assert_allclose(seg.get_sform(), ref.get_sform())
    assert int(seg.header["qform_code"]) == int(ref.header["qform_code"])
    assert int(seg.header["sform_code"]) == int(ref.header["sform_code"])


def job_folders(root: Path) -> list[Path]:
    return [p for p in root.iterdir() if p.is_dir()]


# ---- fixtures (the predictors and case_dir are in conftest.py) -----------------------------
@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    return tmp_path / "jobs"


@pytest.fixture()
def client(brats_predictor: Predictor, workdir: Path) -> Iterator[TestClient]:
    app = create_app(brats_predictor, workdir, max_upload_mb=64, keep_minutes=5, model_name="tiny")
    with TestClient(app) as c:
        yield c


# ---- the page ---------------------------------------------------------------------------------
def test_page_is_served_from_the_package_and_works_offline(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "static/app.js" in page.text and "static/style.css" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name in ("app.js", "style.css"):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200
        assert "http://" not in r.text and "https://" not in r.text, f"{name} loads something from the network"
    assert "https://" not in page.text and "http://" not in page.text


def test_info_describes_model_and_limits(client: TestClient) -> None:
    info = client.get("/api/info").json()
    assert info["model"]["name"] == "tiny"
    assert info["model"]["modalities"] == list(BRATS_MODALITIES)
    assert set(info["model"]["regions"]) == {"TC", "WT", "ET"}
    assert info["limits"]["max_upload_mb"] == 64 and info["limits"]["keep_minutes"] == 5


# ---- the three upload forms -------------------------------------------------------------------
def test_brats_files_round_trip(client: TestClient, case_dir: Path) -> None:
    r = upload(client, case_files(case_dir, with_seg=True), probabilities="1")
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["state"] in ("queued", "running") and len(job["id"]) == 32
    assert job["name"] == CASE and job["kind"] == "modalities"
    assert any("_seg.nii.gz" in n for n in job["notes"])  # the label file is not used
    job = wait_done(client, job["id"])
    assert job["state"] == "done", job["error"]
    assert job["progress"] == 1.0 and job["expires_in_s"] > 0

    downloads = {d["key"]: d for d in job["downloads"]}
    assert {"segmentation", "report_json", "report_csv", "overlay_png"} <= set(downloads)
    assert {"probability_TC", "probability_WT", "probability_ET"} <= set(downloads)
    assert downloads["segmentation"]["filename"] == f"{CASE}_seg.nii.gz"

    seg_r = client.get(f"/api/jobs/{job['id']}/files/segmentation")
    assert seg_r.status_code == 200
    assert f'filename="{CASE}_seg.nii.gz"' in seg_r.headers["content-disposition"]
    seg = load_nifti(seg_r.content)
    assert_same_geometry(seg, nib.load(case_dir / f"{CASE}_flair.nii.gz"))
    labels = np.asarray(seg.dataobj)
    truth = np.asarray(nib.load(case_dir / f"{CASE}_seg.nii.gz").dataobj)
    assert set(np.unique(labels)) <= {0, 1, 2, 4}
    wt, wt_truth = labels > 0, truth > 0
    assert 2 * (wt & wt_truth).sum() / (wt.sum() + wt_truth.sum()) > 0.8  # the tiny model finds the tumour

    prob = load_nifti(client.get(f"/api/jobs/{job['id']}/files/probability_WT").content)
    assert_same_geometry(prob, seg)
    report = client.get(f"/api/jobs/{job['id']}/files/report_json").json()
    wt_row = next(r for r in report["regions"] if r["region"] == "WT")
    assert wt_row["voxels"] == int(wt.sum()) and wt_row["volume_ml"] == pytest.approx(wt.sum() / 1000)
    csv_text = client.get(f"/api/jobs/{job['id']}/files/report_csv").text
    assert csv_text.splitlines()[0].startswith("case_id,kind,name,labels,voxels,volume_ml,model_name,")
    png = client.get(f"/api/jobs/{job['id']}/files/overlay_png")
    assert png.headers["content-type"] == "image/png" and png.content[:8] == b"\x89PNG\r\n\x1a\n"

    table = {row["name"]: row for row in job["report"]["rows"] if row["kind"] == "region"}
    assert table["WT"]["ml"] == pytest.approx(wt_row["volume_ml"])


def _labels_of(client: TestClient, job: dict) -> np.ndarray:
    assert job["state"] == "done", job["error"]
    return np.asarray(load_nifti(client.get(f"/api/jobs/{job['id']}/files/segmentation").content).dataobj)


def test_upload_is_written_in_its_datasets_scheme(
    client: TestClient, brats_predictor: Predictor, case_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A BraTS 2023-named upload gets 2023 labels (ET = 3) from a 2021 model, as bts-infer writes
    them, unless the predictor's output scheme (bts-infer's --output-scheme) says otherwise."""
    legacy = _labels_of(client, wait_done(client, upload(client, case_files(case_dir)).json()["id"]))
    assert set(np.unique(legacy)) <= {0, 1, 2, 4} and (legacy == 4).any()
    new_names = {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w"}
    files_2023 = [
        (f"BraTS-GLI-00042-000-{new_names[m]}.nii.gz", data)
        for m, (_, data) in zip(BRATS_MODALITIES, case_files(case_dir))
    ]
    job = wait_done(client, upload(client, files_2023).json()["id"])
    assert job["name"] == "BraTS-GLI-00042-000"
    labels = _labels_of(client, job)
    assert set(np.unique(labels)) <= {0, 1, 2, 3}
    np.testing.assert_array_equal(labels, np.where(legacy == 4, 3, legacy))  # 2023: ET is 3, the rest as 2021
    assert [layer["name"] for layer in job["view"]["layers"]["labels"]] == ["NETC", "SNFH", "ET"]
    report = client.get(f"/api/jobs/{job['id']}/files/report_json").json()
    assert next(r for r in report["regions"] if r["region"] == "ET")["labels"] == [3]

    monkeypatch.setattr(brats_predictor, "output_scheme", "brats2021")
    job = wait_done(client, upload(client, files_2023).json()["id"])
    np.testing.assert_array_equal(_labels_of(client, job), legacy)


def test_slices_are_overlays_that_follow_the_controls(client: TestClient, case_dir: Path) -> None:
    job = wait_done(client, upload(client, case_files(case_dir)).json()["id"])
    view = job["view"]
    assert view["shape"] == [32, 32, 32] and view["modalities"] == list(BRATS_MODALITIES)
    assert [layer["name"] for layer in view["layers"]["regions"]] == ["WT", "TC", "ET"]  # outer to inner
    assert [layer["name"] for layer in view["layers"]["labels"]] == ["NCR/NET", "ED", "ET"]
    base = f"/api/jobs/{job['id']}/slice"

    def rgb(plane: str, **params) -> np.ndarray:
        r = client.get(f"{base}/{plane}.png", params=params)
        assert r.status_code == 200, r.text
        return np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB")).astype(int)

    for plane, geom in view["planes"].items():
        img = rgb(plane)  # opens at the tumour's centre
        assert img.shape[:2] == (geom["rows"], geom["cols"])
        colour = np.abs(img[..., 0] - img[..., 1]) + np.abs(img[..., 1] - img[..., 2])
        assert (colour > 30).sum() > 10, f"no coloured tumour in the {plane} plane at the centre"
    plain = rgb("axial", layers="")
    assert (np.abs(plain[..., 0] - plain[..., 1]) < 2).all()  # no overlay: grey
    full = rgb("axial", opacity=1.0, layers="WT")
    wt_colour = np.array([int(view["layers"]["regions"][0]["color"][i : i + 2], 16) for i in (1, 3, 5)])
    assert (np.abs(full - wt_colour).sum(-1) == 0).any()
    labels = rgb("axial", mode="labels", layers="ED", opacity=1.0)
    assert not np.array_equal(labels, full)
    t1ce = rgb("axial", modality="t1ce", layers="")
    assert not np.array_equal(t1ce, plain)
    assert not np.array_equal(rgb("axial", index=0, layers=""), plain)

    for params in (
        {"index": 32},
        {"index": -1},
        {"modality": "pd"},
        {"mode": "blobs"},
        {"layers": "XX"},
        {"opacity": 1.5},
        {"index": "abc"},
    ):
        r = client.get(f"{base}/axial.png", params=params)
        assert r.status_code == 422 and "error" in r.json(), params
    assert client.get(f"{base}/oblique.png").status_code == 422


def test_4d_nifti_round_trip(client: TestClient, tmp_path: Path) -> None:
    images, _ = synthetic_brats_arrays((32, 32, 32), seed=6)
    vol = np.stack([images[m] for m in BRATS_MODALITIES], axis=-1)
    affine = np.diag([1.2, 1.0, 1.5, 1.0])
    data = nifti_bytes(vol, affine)
    job = wait_done(client, upload(client, [("patient 7 (4D).nii.gz", data)]).json()["id"])
    assert job["state"] == "done", job["error"]
    assert job["kind"] == "volume" and job["name"] == "patient_7_4D"
    assert job["view"]["spacing"] == pytest.approx([1.2, 1.0, 1.5])
    seg = load_nifti(client.get(f"/api/jobs/{job['id']}/files/segmentation").content)
    assert_same_geometry(seg, load_nifti(data))
    ml = {row["name"]: row["ml"] for row in job["report"]["rows"] if row["kind"] == "region"}
    voxels = {row["name"]: row["voxels"] for row in job["report"]["rows"] if row["kind"] == "region"}
    assert ml["WT"] == pytest.approx(voxels["WT"] * 1.2 * 1.5 / 1000)


def test_lgg_slices_round_trip(lgg_predictor: Predictor, tmp_path: Path) -> None:
    pdir = make_lgg_patient(tmp_path, "TCGA_CS_4941_19960909", n_slices=6, size=32, seed=2)
    files = [(p.name, p.read_bytes()) for p in sorted(pdir.iterdir())]  # masks too: they are ignored
    app = create_app(lgg_predictor, tmp_path / "jobs")
    with TestClient(app) as client:
        job = upload(client, files).json()
        assert job["kind"] == "slices" and job["name"] == "TCGA_CS_4941_19960909"
        job = wait_done(client, job["id"])
        assert job["state"] == "done", job["error"]
        assert job["view"]["shape"][2] == 6
        assert all(not g["labels"] for g in job["view"]["planes"].values())  # orientation unknown
        rows = job["report"]["rows"]
        assert [r["name"] for r in rows] == ["abnormality"] and rows[0]["ml"] is None
        d = {x["key"]: x for x in job["downloads"]}
        assert d["segmentation"]["filename"] == "TCGA_CS_4941_19960909_seg.tif"
        import tifffile

        mask = tifffile.imread(io.BytesIO(client.get(f"/api/jobs/{job['id']}/files/segmentation").content))
        assert mask.shape == (6, 32, 32)
        img = client.get(f"/api/jobs/{job['id']}/slice/axial.png")
        assert img.status_code == 200


# ---- the queue --------------------------------------------------------------------------------
def test_jobs_queue_and_run_one_at_a_time(client: TestClient, case_dir: Path) -> None:
    ids = [upload(client, case_files(case_dir)).json()["id"] for _ in range(3)]
    assert len(set(ids)) == 3
    jobs = [wait_done(client, i) for i in ids]
    assert all(j["state"] == "done" for j in jobs)
    runs = sorted((j.started, j.finished) for j in client.app.state.jobs.jobs())
    for (_, end), (start, _) in zip(runs, runs[1:]):
        assert start >= end  # never two at once


def test_progress_comes_from_the_predictor(
    client: TestClient, tmp_path: Path, brats_predictor: Predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    case_dir = make_brats_case(tmp_path, CASE, shape=(48, 48, 40), seed=4)  # several 32³ windows
    backend = brats_predictor.backend  # the runtime the network calls go through (inference/backends)
    inferer = brats_predictor._inferer  # MONAI's (GPU path); on a CPU the engine runs the windows
    swapped = []

    class SlowBackend:
        """The predictor's backend, each window slowed down so the polls see them."""

        def run(self, x: np.ndarray) -> np.ndarray:  # the CPU path's (NumPy) windows
            swapped.append(brats_predictor._inferer is not inferer)
            time.sleep(0.05)
            return backend.run(x)

        def __call__(self, x: torch.Tensor) -> torch.Tensor:  # MONAI's sliding window
            swapped.append(brats_predictor._inferer is not inferer)
            time.sleep(0.05)
            return backend(x)

        def __getattr__(self, name: str):  # its name and settings, for the report's provenance
            return getattr(backend, name)

    monkeypatch.setattr(brats_predictor, "backend", SlowBackend())
    job_id = upload(client, case_files(case_dir)).json()["id"]
    stages = []
    end = time.monotonic() + 60
    while time.monotonic() < end:
        job = client.get(f"/api/jobs/{job_id}").json()
        stages.append((job["stage"], job["progress"]))
        if job["state"] == "done":
            break
        time.sleep(0.02)
    windows = [s for s, _ in stages if s.startswith("segmenting: window")]
    assert len(set(windows)) >= 2, stages
    done, total = (int(v) for v in windows[-1].removeprefix("segmenting: window ").split(" of "))
    assert total > 1 and done <= total
    progress = [p for _, p in stages]
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert swapped and not any(swapped), "the server replaced the predictor's inferer"


def test_results_expire_and_are_deleted(brats_predictor: Predictor, case_dir: Path, workdir: Path) -> None:
    app = create_app(brats_predictor, workdir, keep_minutes=1 / 60)  # one second
    with TestClient(app) as client:
        job = wait_done(client, upload(client, case_files(case_dir)).json()["id"])
        assert job["state"] == "done"
        assert (workdir / job["id"]).is_dir()
        time.sleep(1.3)
        assert client.get(f"/api/jobs/{job['id']}").status_code == 404
        assert not (workdir / job["id"]).exists()


def test_delete_removes_a_job(client: TestClient, case_dir: Path, workdir: Path) -> None:
    job = wait_done(client, upload(client, case_files(case_dir)).json()["id"])
    assert client.delete(f"/api/jobs/{job['id']}").status_code == 204
    assert client.get(f"/api/jobs/{job['id']}").status_code == 404
    assert not (workdir / job["id"]).exists()


def test_own_temporary_folder_is_removed_at_shutdown(brats_predictor: Predictor, case_dir: Path) -> None:
    app = create_app(brats_predictor)
    with TestClient(app) as client:
        wait_done(client, upload(client, case_files(case_dir)).json()["id"])
        root = app.state.workdir
        assert job_folders(root)
    assert not root.exists()


# ---- bad input --------------------------------------------------------------------------------
def _bad_cases(case_dir: Path) -> dict[str, list[tuple[str, bytes]]]:
    good = dict(case_files(case_dir))
    flair = f"{CASE}_flair.nii.gz"
    images, _ = synthetic_brats_arrays((32, 32, 32), seed=4)

    def replace(name: str, data: bytes) -> list[tuple[str, bytes]]:
        return [(n, data if n == name else d) for n, d in good.items()]

    nan = images["flair"].astype(np.float32)
    nan[3, 3, 3] = np.nan
    return {
        "missing modality": [(n, d) for n, d in good.items() if not n.endswith("_t2.nii.gz")],
        "corrupt file": replace(flair, b"this is not a nifti file at all" * 20),
        "truncated gzip": replace(flair, good[flair][: len(good[flair]) // 2]),
        "one 3D volume": [(flair, good[flair])],
        "shapes differ": replace(flair, nifti_bytes(np.ones((32, 32, 30), np.int16))),
        "affines differ": replace(flair, nifti_bytes(images["flair"], np.diag([2.0, 2.0, 2.0, 1.0]))),
        "NaN voxels": replace(flair, nifti_bytes(nan)),
        "all zero": replace(flair, nifti_bytes(np.zeros((32, 32, 32), np.int16))),
        "wrong file type": [("scan.png", b"\x89PNG\r\n\x1a\n" + b"0" * 100)],
        "mixed types": [*good.items(), ("slice_1.tif", b"II*\x00" + b"0" * 100)],
        "tiff for a 3D model": [("TCGA_X_1.tif", b"II*\x00" + b"0" * 100)],
        "empty file": replace(flair, b""),
        "two flair files": [*good.items(), (f"Other_{CASE}_flair.nii.gz", good[flair])],
        "unknown suffix": [*good.items(), (f"{CASE}_dwi.nii.gz", good[flair])],
        "a 2D image": [("x.nii.gz", nifti_bytes(np.ones((32, 32, 4), np.int16)[..., 0]))],
        "two namings": [(n.replace("_t2.nii", "_t2w.nii"), d) for n, d in good.items()],  # 2021 and 2023
    }


def test_each_bad_input_is_a_clear_4xx_json_error(client: TestClient, case_dir: Path, workdir: Path) -> None:
    for what, files in _bad_cases(case_dir).items():
        r = upload(client, files)
        assert r.status_code == 422, f"{what}: {r.status_code} {r.text}"
        message = r.json()["error"]
        assert message and "Traceback" not in message and str(workdir) not in message, f"{what}: {message}"
    assert job_folders(workdir) == [], "a refused upload left files behind"


def test_bad_input_messages_name_the_browsers_file(client: TestClient, case_dir: Path) -> None:
    cases = _bad_cases(case_dir)
    msg = upload(client, cases["corrupt file"]).json()["error"]
    assert msg.startswith(f"{CASE}_flair.nii.gz: ")
    assert "t2" in upload(client, cases["missing modality"]).json()["error"]
    assert "4D" in upload(client, cases["one 3D volume"]).json()["error"]
    assert "NaN" in upload(client, cases["NaN voxels"]).json()["error"]
    assert "co-registered" in upload(client, cases["affines differ"]).json()["error"]
    msg = upload(client, cases["two namings"]).json()["error"]
    assert msg.startswith(f"{CASE}_t2w.nii.gz: the upload mixes BraTS 2017-2021 names") and "\n" not in msg


def test_malformed_requests_are_400(client: TestClient) -> None:
    assert client.post("/api/jobs", content=b"hello", headers={"content-type": "text/plain"}).status_code == 400
    body, ctype = multipart([], {"probabilities": "1"})
    r = client.post("/api/jobs", content=body, headers={"content-type": ctype})
    assert r.status_code == 400 and "no files" in r.json()["error"]
    r = client.post("/api/jobs", content=b"--x\r\ngarbage", headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 400 and "error" in r.json()


def test_oversized_upload_is_refused(brats_predictor: Predictor, case_dir: Path, workdir: Path) -> None:
    app = create_app(brats_predictor, workdir, max_upload_mb=0.05)
    with TestClient(app) as client:
        big = [(f"{CASE}_flair.nii.gz", b"\0" * 200_000)]
        r = upload(client, big)
        assert r.status_code == 413 and "limit" in r.json()["error"]
        body, ctype = multipart(big)

        def chunks() -> Iterator[bytes]:  # no Content-Length: the stream itself is counted
            for i in range(0, len(body), 8192):
                yield body[i : i + 8192]

        r = client.post("/api/jobs", content=chunks(), headers={"content-type": ctype})
        assert r.status_code == 413
    assert not workdir.exists() or job_folders(workdir) == []


# ---- safety -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "prefix",
    ["../../", "..\\..\\", "/tmp/", "C:\\Windows\\", "./.hidden/../", "%2e%2e%2f"],
)
def test_file_names_never_become_paths(client: TestClient, case_dir: Path, workdir: Path, prefix: str) -> None:
    files = [(prefix + name, data) for name, data in case_files(case_dir)]
    job = wait_done(client, upload(client, files).json()["id"])
    assert job["state"] == "done", job["error"]
    assert "/" not in job["name"] and "\\" not in job["name"] and not job["name"].startswith(".")
    outside = [p for p in workdir.parent.rglob("*") if CASE in p.name and workdir not in p.parents]
    assert outside == [], f"written outside the work folder: {outside}"
    names = {p.name for p in (workdir / job["id"]).rglob("*")}
    assert not any(".." in n or n.startswith(prefix) for n in names), names


def test_unknown_jobs_and_files_are_404(client: TestClient, case_dir: Path) -> None:
    for path in (
        "/api/jobs/" + "0" * 32,
        "/api/jobs/not-a-job",
        "/api/jobs/..%2F..%2Fetc%2Fpasswd",
        "/api/jobs/" + "0" * 32 + "/files/segmentation",
        "/api/jobs/" + "0" * 32 + "/slice/axial.png",
    ):
        r = client.get(path)
        assert r.status_code == 404 and "error" in r.json(), path
    assert client.delete("/api/jobs/" + "f" * 32).status_code == 404
    job = wait_done(client, upload(client, case_files(case_dir)).json()["id"])
    for key in ("nope", "..%2F..%2Fview%2Fview.json", "path"):
        assert client.get(f"/api/jobs/{job['id']}/files/{key}").status_code == 404
    assert client.get("/static/../app.py").status_code == 404


def test_a_failed_job_shows_its_message(
    client: TestClient, brats_predictor: Predictor, case_dir: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bts_monai.errors import BtsInputError

    def broken(case, **kwargs):
        server_file = case.reference.get_filename()  # the job folder's copy of the flair file
        raise BtsInputError(server_file, f"went wrong, unlike {server_file}")

    monkeypatch.setattr(brats_predictor, "predict_case", broken)
    job = wait_done(client, upload(client, case_files(case_dir)).json()["id"])
    assert job["state"] == "failed"
    flair = f"{CASE}_flair.nii.gz"
    assert job["error"] == f"{flair}: went wrong, unlike {flair}"
    r = client.get(f"/api/jobs/{job['id']}/files/segmentation")
    assert r.status_code == 409 and "went wrong" in r.json()["error"]
    monkeypatch.undo()
    job = wait_done(client, upload(client, case_files(case_dir)).json()["id"])
    assert job["state"] == "done"  # the worker survived


def test_host_and_origin_checks(brats_predictor: Predictor, workdir: Path) -> None:
    app = create_app(brats_predictor, workdir, allowed_hosts=["127.0.0.1", "localhost"])
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        assert client.get("/api/info").status_code == 200
        assert client.get("/api/info", headers={"host": "evil.example:8000"}).status_code == 400
        body, ctype = multipart([("x_flair.nii.gz", b"1")])
        r = client.post("/api/jobs", content=body, headers={"content-type": ctype, "origin": "http://evil.example"})
        assert r.status_code == 403
    assert json.loads(r.text)["error"]


# ---- the command ------------------------------------------------------------------------------
def test_cli_refuses_bad_arguments_with_status_2(brats_ckpt: Path, tmp_path: Path, capsys) -> None:
    import socket

    from bts_monai.cli.serve import main
    from bts_monai.inference.predictor import default_model_path

    assert main(["--ckpt", str(tmp_path / "missing.ckpt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    if default_model_path("brats") is None:
        assert main([]) == 2
        assert "--ckpt" in capsys.readouterr().err
    assert main(["--model", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["--ckpt", str(brats_ckpt), "--port", "70000"]) == 2
    assert main(["--ckpt", str(brats_ckpt), "--max-upload-mb", "0"]) == 2
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["--ckpt", str(brats_ckpt), "--port", str(port)]) == 2
        assert "cannot listen" in capsys.readouterr().err


def test_serve_output_scheme_flag_sets_the_predictor(
    brats_predictor: Predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bts-serve --output-scheme is bts-infer's: model, input or a scheme name; a bad name is one line."""
    from bts_monai.cli._common import apply_output_scheme
    from bts_monai.cli.serve import build_parser
    from bts_monai.errors import BtsInputError

    assert build_parser().parse_args([]).output_scheme == "input"
    args = build_parser().parse_args(["--output-scheme", "brats2023"])
    monkeypatch.setattr(brats_predictor, "output_scheme", None)
    apply_output_scheme(brats_predictor, args.output_scheme)
    assert brats_predictor.output_scheme.name == "brats2023"
    apply_output_scheme(brats_predictor, "model")
    assert brats_predictor.output_scheme is brats_predictor.scheme
    with pytest.raises(BtsInputError, match="--output-scheme"):
        apply_output_scheme(brats_predictor, "brats1999")
