"""Batches: the next case is read in a background thread while the current one is segmented."""

from __future__ import annotations

import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from infer_helpers import marker_case, oblique_affine

from bts_monai.inference import predictor as predictor_module
from bts_monai.inference.predictor import Predictor

PREFETCH_THREAD = "bts-prefetch"


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(PREFETCH_THREAD)]


@pytest.fixture()
def cases(tmp_path: Path) -> Path:
    """A folder of four cases; the third lacks its t2 file (a reading error)."""
    root = tmp_path / "cases"
    for i, marker in enumerate([(9, 21, 7), (12, 15, 10), (10, 18, 9), (14, 20, 12)]):
        marker_case(root, oblique_affine(), marker=marker, case_id=f"BraTS2021_0001{i}")
    (root / "BraTS2021_00012" / "BraTS2021_00012_t2.nii.gz").unlink()
    return root


@pytest.fixture()
def predictor(tiny_ckpt: Path) -> Predictor:
    return Predictor.from_checkpoint(tiny_ckpt, backend="torch", device="cpu")


def _labels(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asanyarray(nib.load(p).dataobj) for p in sorted(folder.glob("*_seg.nii.gz"))}


def test_prefetched_run_equals_the_sequential_one(predictor: Predictor, cases: Path, tmp_path: Path) -> None:
    fast = predictor.run([cases], tmp_path / "fast", progress=False, prefetch=True)
    slow = predictor.run([cases], tmp_path / "slow", progress=False, prefetch=False)
    ids = ["BraTS2021_00010", "BraTS2021_00011", "BraTS2021_00012", "BraTS2021_00013"]
    assert [r.case_id for r in fast] == [r.case_id for r in slow] == ids  # in order
    assert [r.ok for r in fast] == [r.ok for r in slow] == [True, True, False, True]
    assert fast[2].error == slow[2].error and "t2" in str(fast[2].error)  # the error, for its case
    assert [r.volumes_ml for r in fast] == [r.volumes_ml for r in slow]
    got, want = _labels(tmp_path / "fast"), _labels(tmp_path / "slow")
    assert sorted(got) == sorted(want) == [f"{i}_seg.nii.gz" for i in ids if i != "BraTS2021_00012"]
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    assert prefetch_threads() == []


def test_next_case_is_read_while_this_one_is_segmented(
    predictor: Predictor, cases: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deterministic, not timed: segmenting the first case waits until the second has been read,
    which only a reader running beside it can do; and no third case is read meanwhile."""
    events: list[tuple[str, str, str]] = []
    second_read = threading.Event()
    real_load, real_predict = predictor_module.load_case, Predictor.predict_case

    def load(case_input, model):
        events.append(("read", case_input.case_id, threading.current_thread().name))
        out = real_load(case_input, model)
        if case_input.case_id == "BraTS2021_00011":
            second_read.set()
        return out

    def predict(self, case, *args, **kwargs):
        if case.case_id == "BraTS2021_00010":
            assert second_read.wait(timeout=120), "the second case was not read while the first was segmented"
            reads = [e[1] for e in events if e[0] == "read"]
            assert reads == ["BraTS2021_00010", "BraTS2021_00011"]  # one case ahead, no more
        events.append(("segmented", case.case_id, threading.current_thread().name))
        return real_predict(self, case, *args, **kwargs)

    monkeypatch.setattr(predictor_module, "load_case", load)
    monkeypatch.setattr(Predictor, "predict_case", predict)
    results = predictor.run([cases], tmp_path / "out", progress=False)
    assert [r.ok for r in results] == [True, True, False, True]
    assert all(name.startswith(PREFETCH_THREAD) for kind, _, name in events if kind == "read")
    assert all(name == threading.main_thread().name for kind, _, name in events if kind == "segmented")
    assert prefetch_threads() == []


def test_no_thread_left_when_a_run_is_interrupted(
    predictor: Predictor, cases: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(self, case, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Predictor, "predict_case", interrupted)
    with pytest.raises(KeyboardInterrupt):
        predictor.run([cases], tmp_path / "out", progress=False)
    assert prefetch_threads() == []
    assert not list((tmp_path / "out").glob("*.nii.gz"))


def test_an_unexpected_reading_error_is_reported_for_its_case(
    predictor: Predictor, cases: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_load = predictor_module.load_case

    def load(case_input, model):
        if case_input.case_id == "BraTS2021_00011":
            raise MemoryError("no room for this case")
        return real_load(case_input, model)

    monkeypatch.setattr(predictor_module, "load_case", load)
    results = predictor.run([cases], tmp_path / "out", progress=False)
    assert [r.ok for r in results] == [True, False, False, True]
    assert "MemoryError: no room for this case" in str(results[1].error)
    assert prefetch_threads() == []
