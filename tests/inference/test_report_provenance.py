"""Issue 20 item 11: every report says how it was made (model, weights hash, runtime, settings, versions).

``bts-infer``'s JSON and CSV reports and ``bts-eval``'s CSV (when the model is named) carry the
model's name, version and weights sha256, the backend, precision, overlap, TTA and its mirror
axes, one-pass mode and the package versions, with the values of the run.
"""

from __future__ import annotations

import csv
import json
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch

from bts_monai.cli.eval import main as bts_eval
from bts_monai.cli.infer import main as bts_infer
from bts_monai.data.synthetic import make_brats_case
from bts_monai.inference.report import PROVENANCE_FIELDS
from bts_monai.model.spec import sha256_file

sys.path.insert(0, str(Path(__file__).parent))
from infer_helpers import brats_config, save_tiny_checkpoint  # noqa: E402

SHAPE = (20, 24, 18)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    path = save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "run.ckpt", brats_config())
    saved = torch.load(path, map_location="cpu", weights_only=True)
    torch.save({**saved, "epoch": 3, "global_step": 42}, path)  # as a trained run's checkpoint says
    return path


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cases")
    for i, cid in enumerate(("BraTS2021_00001", "BraTS2021_00002")):
        make_brats_case(root, cid, shape=SHAPE, seed=i)
    return root


def _expected(ckpt: Path) -> dict:
    """What the run below must record (the flags it passes, the checkpoint it names)."""
    return {
        "model_name": "run",
        "model_version": "epoch 3, step 42",
        "weights_sha256": sha256_file(ckpt),
        "model_source": str(ckpt),
        "backend": "torch",
        "device": "cpu",
        "precision": "32",
        "threshold": 0.4,
        "sw_roi_size": [16, 16, 16],
        "sw_overlap": 0.3,
        "sw_mode": "gaussian",
        "tta": True,
        "mirror_axes": [0, 1, 2],
        "one_pass": False,
    }


RUN_FLAGS = ["--backend", "torch", "--device", "cpu", "--overlap", "0.3", "--threshold", "0.4", "--tta", "-q"]


def _check_versions(versions: dict) -> None:
    assert versions["torch"] == metadata.version("torch")
    assert versions["monai"] == metadata.version("monai")
    assert versions["bts_monai"] == metadata.version("bts_monai")
    assert versions["python"] == ".".join(map(str, sys.version_info[:3]))


def test_json_report_of_one_case_records_the_run(tmp_path, ckpt, cases):
    report = tmp_path / "r.json"
    case = cases / "BraTS2021_00001"
    out = ["-o", str(tmp_path / "s.nii.gz"), "--report", str(report)]
    assert bts_infer([str(case), "--ckpt", str(ckpt), *out, *RUN_FLAGS]) == 0
    prov = json.loads(report.read_text())["provenance"]
    assert set(prov) == set(PROVENANCE_FIELDS)
    want = _expected(ckpt)
    assert {k: prov[k] for k in want} == want
    _check_versions(prov["package_versions"])


def test_csv_report_of_several_cases_repeats_it_on_every_row(tmp_path, ckpt, cases):
    report = tmp_path / "volumes.csv"
    out = ["-o", str(tmp_path / "out"), "--report", str(report)]
    assert bts_infer([str(cases), "--ckpt", str(ckpt), *out, *RUN_FLAGS]) == 0
    with open(report, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["case_id"] for r in rows} == {"BraTS2021_00001", "BraTS2021_00002"}
    assert list(rows[0])[-len(PROVENANCE_FIELDS) :] == list(PROVENANCE_FIELDS)
    want = _expected(ckpt)
    for row in rows:
        assert row["model_name"] == want["model_name"] and row["model_version"] == want["model_version"]
        assert row["weights_sha256"] == want["weights_sha256"] and row["backend"] == "torch"
        assert row["precision"] == "32" and float(row["sw_overlap"]) == 0.3 and float(row["threshold"]) == 0.4
        assert row["tta"] == "true" and json.loads(row["mirror_axes"]) == [0, 1, 2] and row["one_pass"] == "false"
        assert json.loads(row["sw_roi_size"]) == [16, 16, 16]
        _check_versions(json.loads(row["package_versions"]))


def test_packaged_model_names_itself_by_its_metadata():
    from bts_monai.inference.predictor import Predictor
    from bts_monai.model.packaged import model_dir, read_metadata

    folder = model_dir("brats_unet_2mm")
    meta = read_metadata(folder)
    prov = Predictor.from_checkpoint(folder, backend="torch", device="cpu", one_pass=True).provenance()
    assert (prov["model_name"], prov["model_version"]) == ("brats_unet_2mm", meta["version"])
    assert prov["weights_sha256"] == meta["weights"]["sha256"] == sha256_file(folder / meta["weights"]["file"])
    assert prov["one_pass"] is True and prov["tta"] is False
    assert prov["sw_overlap"] == meta["inference"]["sw_overlap"] and prov["threshold"] == meta["inference"]["threshold"]


def test_eval_csv_records_the_model_named(tmp_path, ckpt, cases):
    """From the run's report: everything; from the model itself: its identity and the versions."""
    preds = tmp_path / "preds"
    report = tmp_path / "r.json"
    case = cases / "BraTS2021_00001"
    out = ["-o", str(preds / "BraTS2021_00001.nii.gz"), "--report", str(report)]
    assert bts_infer([str(case), "--ckpt", str(ckpt), *out, *RUN_FLAGS]) == 0
    gt = case / "BraTS2021_00001_seg.nii.gz"

    out = tmp_path / "m.csv"
    assert bts_eval([str(preds), str(gt), "-o", str(out), "--model", str(report)]) == 0
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    want = _expected(ckpt)
    assert rows and all(r["weights_sha256"] == want["weights_sha256"] for r in rows)  # case and summary rows
    assert {(r["backend"], r["precision"], r["sw_overlap"], r["tta"]) for r in rows} == {("torch", "32", "0.3", "true")}

    out2 = tmp_path / "m2.csv"
    assert bts_eval([str(preds), str(gt), "-o", str(out2), "--model", str(ckpt)]) == 0
    with open(out2, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["model_name"], r["model_version"], r["weights_sha256"]) for r in rows} == {
        (want["model_name"], want["model_version"], want["weights_sha256"])
    }
    assert {r["backend"] for r in rows} == {""}  # how the predictions were run is not known from the model
    _check_versions(json.loads(rows[0]["package_versions"]))


def test_eval_refuses_an_unknown_model_before_scoring(tmp_path, cases, capsys):
    case = cases / "BraTS2021_00002"
    gt = case / "BraTS2021_00002_seg.nii.gz"
    out = tmp_path / "m.csv"
    assert bts_eval([str(gt), str(gt), "-o", str(out), "--model", "no_such_model"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no packaged model named 'no_such_model'" in err[0]
    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    assert bts_eval([str(gt), str(gt), "-o", str(out), "--model", str(plain)]) == 2
    assert "not a bts-infer report with a provenance" in capsys.readouterr().err
    assert not out.exists()
