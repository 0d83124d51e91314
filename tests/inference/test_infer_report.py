"""Volume reports: voxel counts and millilitres against hand-counted voxels."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from bts_monai.errors import BtsInputError
from bts_monai.inference.report import volume_report, write_report
from bts_monai.labels import get_scheme

SCHEME = get_scheme("brats2021")


def _labels() -> np.ndarray:
    """10 voxels of core, 20 of oedema, 5 of enhancing tumour, written by hand."""
    (_, oedema), (_, core), (_, enhancing) = SCHEME.paint_order()
    lab = np.zeros((10, 10, 10), np.uint8)
    lab[0, 0, :10] = core
    lab[1, :10, 0] = oedema
    lab[2, :10, 0] = oedema
    lab[3, 0, :5] = enhancing
    return lab, core, oedema, enhancing


def test_counts_and_volumes_by_hand():
    lab, core, oedema, enhancing = _labels()
    rep = volume_report(lab, SCHEME, (1.5, 1.0, 2.0), "c1", "in/c1")
    voxel_ml = 1.5 * 1.0 * 2.0 / 1000
    labels = {r["label"]: (r["voxels"], r["volume_ml"]) for r in rep["labels"]}
    assert labels == {
        core: (10, pytest.approx(10 * voxel_ml)),
        oedema: (20, pytest.approx(20 * voxel_ml)),
        enhancing: (5, pytest.approx(5 * voxel_ml)),
    }
    regions = {r["region"]: (r["voxels"], r["volume_ml"]) for r in rep["regions"]}
    assert regions == {
        "ET": (5, pytest.approx(0.015)),
        "TC": (15, pytest.approx(0.045)),
        "WT": (35, pytest.approx(0.105)),
    }
    assert rep["voxel_volume_ml"] == pytest.approx(voxel_ml) and rep["case_id"] == "c1"


def test_unknown_voxel_size_and_bad_labels():
    lab, *_ = _labels()
    rep = volume_report(lab, SCHEME, None)
    assert all(r["volume_ml"] is None for r in rep["regions"]) and rep["regions"][1]["voxels"] == 35
    with pytest.raises(BtsInputError, match="unexpected: \\[3\\]"):
        volume_report(np.full((2, 2, 2), 3), SCHEME, (1, 1, 1))


def test_json_and_csv(tmp_path):
    lab, *_ = _labels()
    one = volume_report(lab, SCHEME, (1, 1, 1), "a")
    two = volume_report(lab[:2], SCHEME, (1, 1, 1), "b")
    write_report(one, tmp_path / "one.json")
    assert json.loads((tmp_path / "one.json").read_text())["regions"][2]["voxels"] == 5
    write_report([one, two], tmp_path / "many.json")
    assert [c["case_id"] for c in json.loads((tmp_path / "many.json").read_text())["cases"]] == ["a", "b"]
    write_report([one, two], tmp_path / "many.csv")
    rows = list(csv.DictReader((tmp_path / "many.csv").open()))
    assert len(rows) == 12
    wt_b = [r for r in rows if r["case_id"] == "b" and r["name"] == "WT"][0]
    assert wt_b["voxels"] == "20" and float(wt_b["volume_ml"]) == pytest.approx(0.02) and wt_b["labels"] == "1+2+4"
    with pytest.raises(BtsInputError, match=".json or .csv"):
        write_report(one, tmp_path / "r.xlsx")
