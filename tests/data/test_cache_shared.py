"""The preprocessed cache on a folder several hosts share: concurrent builds, stale locks, replacement
without a gap, same-size edits, and one ``meta.json`` read per case."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from bts_monai.data import cache as cache_mod
from bts_monai.data.cache import (
    HOST_ENV,
    PreprocessedCache,
    PreprocessedCase,
    PreprocessedDataset,
    decode_target,
    host_name,
    preprocessed_train_transforms,
    preprocessed_val_transforms,
)
from bts_monai.data.discovery import discover
from bts_monai.data.synthetic import make_brats_dataset

warnings.filterwarnings("ignore", message="Num foregrounds 0", category=UserWarning)

SHAPE = (32, 32, 24)

# One builder "host": waits until the other is ready, then builds. Each case takes a little longer
# than it would (a sleep before preprocessing), so the two builds overlap on a busy machine too.
BUILDER = r"""
import json, sys, time
from pathlib import Path
from bts_monai.data import cache as cache_mod
from bts_monai.data.discovery import discover

data, cache_dir, me, other, out = sys.argv[1:6]
real = cache_mod.preprocess_case
def slow(entry, settings):
    time.sleep(0.3)
    return real(entry, settings)
cache_mod.preprocess_case = slow
entries = discover(data)
Path(me).touch()
deadline = time.time() + 120
while not Path(other).exists() and time.time() < deadline:
    time.sleep(0.01)
s = cache_mod.PreprocessedCache(cache_dir).build(entries, progress=False, poll=0.05)
Path(out).write_text(json.dumps({"built": s.built, "reused": s.reused, "elsewhere": s.elsewhere}))
"""


def _assert_valid_case(cache: PreprocessedCache, entry: dict) -> None:
    case = PreprocessedCase(cache.case_dir(entry["case_id"]))
    image = case.read_image()
    assert list(image.shape) == case.meta["image_shape"] and np.isfinite(image).all()
    target = decode_target(torch.from_numpy(case.read_target()), case.meta["target"])
    assert tuple(target.shape[1:]) == case.spatial_shape
    assert case.foreground_indices().size == case.meta["num_foreground"]
    assert cache.is_current(entry)


def _leftovers(cache: PreprocessedCache) -> list[str]:
    locks = cache.root / ".locks"
    return [p.name for p in cache.root.glob(".tmp-*")] + ([p.name for p in locks.iterdir()] if locks.is_dir() else [])


# ---- two hosts at once --------------------------------------------------------------------------
@pytest.mark.slow
def test_two_hosts_building_one_folder_at_once_share_the_work(tmp_path: Path):
    root = make_brats_dataset(tmp_path / "data", n_cases=6, shape=SHAPE)
    entries = discover(root)
    script = tmp_path / "builder.py"
    script.write_text(BUILDER)
    cache_dir = tmp_path / "shared_cache"
    procs = {}
    for me, other in (("node-a", "node-b"), ("node-b", "node-a")):
        env = {**os.environ, HOST_ENV: me, "OMP_NUM_THREADS": "1"}
        args = [str(root), str(cache_dir), str(tmp_path / f"{me}.ready"), str(tmp_path / f"{other}.ready")]
        procs[me] = subprocess.Popen(
            [sys.executable, str(script), *args, str(tmp_path / f"{me}.json")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    for proc in procs.values():
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
    summaries = {me: json.loads((tmp_path / f"{me}.json").read_text()) for me in procs}
    ids = sorted(e["case_id"] for e in entries)
    a, b = summaries["node-a"], summaries["node-b"]
    # Every case was built exactly once, by one host or the other, and each host saw all of them done.
    assert sorted(a["built"] + b["built"]) == ids, summaries
    for s in (a, b):
        assert sorted(s["built"] + s["reused"] + s["elsewhere"]) == ids
    assert a["built"] and b["built"], summaries  # the builds did overlap and split the cases
    cache = PreprocessedCache(cache_dir)
    assert cache.case_ids() == ids
    for e in entries:
        _assert_valid_case(cache, e)
    assert _leftovers(cache) == []


# ---- whose locks and temporaries may be removed -------------------------------------------------
def _write_lock(path: Path, host: str, pid: int, age: float = 0.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": host, "pid": pid, "created": time.time() - age, "token": "x"}))
    if age:
        os.utime(path, (time.time() - age, time.time() - age))


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_lock_stale_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(HOST_ENV, "node-a")
    lock_path = tmp_path / ".locks" / "X.lock"
    dead = 999_999_999
    live = _sleeper()
    try:
        cases = [
            ("node-b", dead, 0.0, False),  # a foreign pid says nothing about a process here
            ("node-b", live.pid, 0.0, False),
            ("node-a", live.pid, 0.0, False),  # this host, running
            ("node-a", dead, 0.0, True),  # this host, gone
            ("node-b", live.pid, 120.0, True),  # untouched past stale_after: abandoned, whatever host
        ]
        for host, pid, age, broken in cases:
            _write_lock(lock_path, host, pid, age)
            lock = cache_mod._CaseLock(lock_path, stale_after=60.0)
            assert lock.acquire() is broken, (host, pid, age)
            if broken:
                assert json.loads(lock_path.read_text())["host"] == "node-a"
                lock.release()
                assert not lock_path.exists()
            else:
                assert json.loads(lock_path.read_text())["pid"] == pid  # left alone
    finally:
        live.kill()
        live.wait()


def test_live_lock_is_kept_fresh_and_released(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(cache_mod, "_HEARTBEAT", 0.05)
    lock_path = tmp_path / ".locks" / "X.lock"
    lock = cache_mod._CaseLock(lock_path, stale_after=60.0)
    assert lock.acquire()
    os.utime(lock_path, (time.time() - 50, time.time() - 50))
    time.sleep(0.5)
    assert time.time() - lock_path.stat().st_mtime < 5  # the heartbeat touched it again
    other = cache_mod._CaseLock(lock_path, stale_after=60.0)
    assert not other.acquire()
    other.release()  # not its lock: nothing happens
    assert lock_path.exists()
    lock.release()
    assert not lock_path.exists()


def test_temporaries_of_other_hosts_are_kept_until_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(HOST_ENV, "nodeA")
    root = make_brats_dataset(tmp_path / "data", n_cases=1, shape=SHAPE)
    entries = discover(root)
    cache = PreprocessedCache(tmp_path / "cache")
    cache.root.mkdir(parents=True)
    dead = 999_999_999
    foreign = cache.root / f".tmp-{dead}@nodeB-deadbeef-X"
    own = cache.root / f".tmp-{dead}@nodeA-deadbeef-Y"
    legacy = cache.root / f".tmp-{dead}-deadbeef-Z"  # named by earlier, single-host versions
    for d in (foreign, own, legacy):
        d.mkdir()
        (d / "image.b2nd").write_bytes(b"in progress")
    # An atomic write's temporary (bts_monai.fileio) names a pid but no host: only its age counts.
    atomic = cache.root / f".tmp-{dead}-deadbeef-settings.json"
    atomic.write_text("{}")
    cache.build(entries, progress=False)
    assert foreign.exists() and atomic.exists() and not own.exists() and not legacy.exists()
    old = time.time() - 2 * cache_mod.LOCK_STALE_AFTER
    for p in (foreign, foreign / "image.b2nd", atomic):
        os.utime(p, (old, old))
    cache.build(entries, progress=False)
    assert not foreign.exists() and not atomic.exists()


def test_build_waits_for_a_foreign_lock_then_takes_it_over_when_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(HOST_ENV, "node-a")
    root = make_brats_dataset(tmp_path / "data", n_cases=2, shape=SHAPE)
    entries = discover(root)
    cache = PreprocessedCache(tmp_path / "cache")
    held = entries[0]["case_id"]
    _write_lock(cache.root / ".locks" / f"{held}.lock", "node-b", 999_999_999)
    summary = cache.build(entries, progress=False, stale_after=1.0, poll=0.1)
    assert summary.built == sorted(e["case_id"] for e in entries)
    for e in entries:
        _assert_valid_case(cache, e)
    assert _leftovers(cache) == []


def test_host_name_follows_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(HOST_ENV, "gpu-node-17")
    assert host_name() == "gpu-node-17"
    assert cache_mod._temporary_owner(cache_mod._temp_name("BraTS-X")) == ("gpu-node-17", os.getpid())
    monkeypatch.delenv(HOST_ENV)
    assert host_name() == socket.gethostname()


# ---- replacing a case ---------------------------------------------------------------------------
def _rewrite_same_size(path: Path, seed: int) -> None:
    """New voxel values in ``path`` (an uncompressed .nii), same shape and type: the same file size."""
    img = nib.load(path)
    data = np.asarray(img.dataobj)
    rng = np.random.default_rng(seed)
    changed = data.copy()
    changed[data > 0] = np.clip(data[data > 0] + rng.integers(5, 50, int((data > 0).sum())), 0, 30000)
    size, mtime = path.stat().st_size, path.stat().st_mtime_ns
    nib.save(nib.Nifti1Image(changed.astype(data.dtype), img.affine, img.header), path)
    assert path.stat().st_size == size
    if path.stat().st_mtime_ns == mtime:  # a coarse clock: make sure the time moves, as an edit's does
        os.utime(path, ns=(mtime + 10**9, mtime + 10**9))


def test_a_replaced_case_is_never_absent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = make_brats_dataset(tmp_path / "data", n_cases=1, shape=SHAPE, layout="brats2020")
    entry = discover(root)[0]
    cache = PreprocessedCache(tmp_path / "cache")
    cache.build([entry], progress=False)
    cid = entry["case_id"]
    before = PreprocessedCase(cache.case_dir(cid)).read_image()
    checks = {"n": 0}

    def readable() -> None:
        assert cache.case_ids() == [cid]
        case = PreprocessedCase(cache.case_dir(cid))
        assert list(case.read_image().shape) == case.meta["image_shape"]
        assert case.read_target().size and case.foreground_indices().size
        checks["n"] += 1

    def watched(fn):
        def call(*args, **kwargs):
            readable()
            out = fn(*args, **kwargs)
            readable()
            return out

        return call

    # Every rename, replace and removal the rebuild makes leaves the case whole, before and after.
    for mod, name in ((os, "rename"), (os, "replace"), (shutil, "rmtree")):
        monkeypatch.setattr(mod, name, watched(getattr(mod, name)))
    _rewrite_same_size(Path(entry["flair"]), seed=1)
    summary = cache.build([entry], progress=False)
    monkeypatch.undo()
    assert summary.built == [cid] and checks["n"] >= 4
    case = PreprocessedCase(cache.case_dir(cid))
    assert case.meta["data"].startswith("v-") and case.data_dir.parent == cache.case_dir(cid)
    assert not np.array_equal(case.read_image(), before)  # the new contents are what is read now
    _assert_valid_case(cache, entry)
    # The superseded arrays stay for readers of the old meta.json, then a later build removes them.
    assert (cache.case_dir(cid) / "image.b2nd").exists()
    monkeypatch.setattr(cache_mod, "SUPERSEDED_GRACE", -1.0)
    assert cache.build([entry], progress=False).reused == [cid]
    assert sorted(p.name for p in cache.case_dir(cid).iterdir()) == sorted(["meta.json", case.meta["data"]])
    _assert_valid_case(cache, entry)


# ---- what counts as a changed source ------------------------------------------------------------
def test_changed_contents_of_the_same_size_are_rebuilt_a_touch_is_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = make_brats_dataset(tmp_path / "data", n_cases=2, shape=SHAPE, layout="brats2020")
    entries = discover(root)
    cache = PreprocessedCache(tmp_path / "cache")
    assert len(cache.build(entries, progress=False).built) == 2
    flair = Path(entries[0]["flair"])
    _rewrite_same_size(flair, seed=2)
    assert not cache.is_current(entries[0]) and cache.is_current(entries[1])
    again = cache.build(entries, progress=False)
    assert again.built == [entries[0]["case_id"]] and again.reused == [entries[1]["case_id"]]
    # A new modification time with the same contents (a copy, a touch): hashed once, not rebuilt.
    t1 = Path(entries[1]["t1"])
    later = t1.stat().st_mtime_ns + 5 * 10**9
    os.utime(t1, ns=(later, later))
    hashes = {"n": 0}
    real_hash = cache_mod._file_sha256

    def counting(path):
        hashes["n"] += 1
        return real_hash(path)

    monkeypatch.setattr(cache_mod, "_file_sha256", counting)
    touched = cache.build(entries, progress=False)
    assert not touched.built and sorted(touched.reused) == sorted(e["case_id"] for e in entries)
    assert cache.meta(entries[1]["case_id"])["source"]["t1"]["mtime_ns"] == later  # recorded anew
    hashes["n"] = 0
    assert len(cache.build(entries, progress=False).reused) == 2 and hashes["n"] == 0  # stat only now
    # Records of earlier versions ([name, size]) cannot tell an edit: such cases are rebuilt.
    meta_path = cache.case_dir(entries[1]["case_id"]) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["source"] = {k: [v["name"], v["size"]] for k, v in meta["source"].items()}
    meta_path.write_text(json.dumps(meta))
    assert cache.build(entries, progress=False).built == [entries[1]["case_id"]]


# ---- reading ------------------------------------------------------------------------------------
def test_meta_json_is_read_once_per_case_not_per_patch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = make_brats_dataset(tmp_path / "data", n_cases=2, shape=SHAPE)
    entries = discover(root)
    cache = PreprocessedCache(tmp_path / "cache")
    cache.build(entries, progress=False)
    cache_mod._META_CACHE.clear()
    reads: list[str] = []
    real_load = cache_mod._load_meta

    def counting(path):
        reads.append(Path(path).parent.name)
        return real_load(path)

    monkeypatch.setattr(cache_mod, "_load_meta", counting)
    ids = [e["case_id"] for e in entries]
    train = PreprocessedDataset(cache, ids, preprocessed_train_transforms((16, 16, 16), num_samples=4))
    val = PreprocessedDataset(cache, ids, preprocessed_val_transforms())
    patches = 0
    for _ in range(3):
        for i in range(len(train)):
            patches += len(train[i])
            val[i]
    assert patches == 3 * 2 * 4
    assert sorted(reads) == sorted(ids)
    # A replaced case has a new meta.json: read again, once (by whichever reader comes first).
    reads.clear()
    cache.build(entries[:1], progress=False, force=True)
    for _ in range(2):
        train[0]
        train[1]
    assert reads == [ids[0]]
