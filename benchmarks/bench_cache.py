"""Training-sample throughput from the preprocessed cache vs the plain MONAI chain, and the cache's disk size.

Both pipelines run in this process on one core (torch and blosc2 limited to one thread), on the
same cases, with the same 128^3 patches and augmentation, in alternating rounds so that both see
the same load from whatever else runs on the machine. Figures are ratios from this one run.

    .venv/bin/python benchmarks/bench_cache.py                      # $BTS_REAL_DATA/brats2018
    .venv/bin/python benchmarks/bench_cache.py --data DIR --rounds 3 --num-samples 2

``--shared-build`` measures instead the build of the cache by 1 and by 2 builders at once over one
empty folder, as two hosts of a cluster would run it: separate processes, each with its own
``BTS_HOSTNAME`` and one preprocessing process, released together once both have imported; in
alternating rounds, the wall time until every builder has returned, and the ratio 1 / 2. Then the
cost of the checks a later build makes (stat only; and hashing every source, what a copied dataset
costs once) against the preprocessing time per case.

    .venv/bin/python benchmarks/bench_cache.py --shared-build --rounds 2
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import blosc2  # noqa: E402
import torch  # noqa: E402
from _env import describe, rss_mb  # noqa: E402

from bts_monai.data.cache import (  # noqa: E402
    CacheSettings,
    PreprocessedCache,
    PreprocessedDataset,
    preprocessed_train_transforms,
)
from bts_monai.data.discovery import BRATS_MODALITIES, discover  # noqa: E402
from bts_monai.data.transforms import train_transforms  # noqa: E402

warnings.filterwarnings("ignore", message="Num foregrounds 0")


def main() -> None:
    default_data = Path(os.environ.get("BTS_REAL_DATA", "/work/shared/data")) / "brats2018"
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=default_data, help="BraTS folder (default: %(default)s)")
    p.add_argument("--cache-dir", type=Path, help="keep the cache here (default: a temporary folder, removed)")
    p.add_argument("--roi", type=int, default=128)
    p.add_argument("--num-samples", type=int, default=1, help="patches per loaded case, both pipelines")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds over all cases")
    p.add_argument("--cached-per-case", type=int, default=5, help="cached samples drawn per plain case load")
    p.add_argument("--workers", type=int, default=2, help="preprocessing processes")
    p.add_argument("--shared-build", action="store_true", help="time 1 vs 2 concurrent builders instead")
    p.add_argument("--builder", nargs=4, metavar=("CACHE", "READY", "GO", "RESULT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.builder:
        return _builder(args.data, *args.builder)
    if args.shared_build:
        return shared_build(args)

    entries = discover(args.data)
    cache_dir = args.cache_dir or Path(tempfile.mkdtemp(prefix="bts_bench_cache_"))
    print(describe())
    print(f"data: {args.data} ({len(entries)} cases); roi {args.roi}^3, num_samples {args.num_samples}")

    # ---- preprocessing and disk size ----
    settings = CacheSettings(scheme="brats2021")
    cache = PreprocessedCache(cache_dir, settings)
    t0 = time.perf_counter()
    summary = cache.build(entries, workers=args.workers, progress=False)
    t_build = time.perf_counter() - t0
    source = sum(os.path.getsize(e[k]) for e in entries for k in (*BRATS_MODALITIES, "label"))
    size = cache.disk_bytes()
    print(
        f"preprocessing: {len(summary.built)} cases built, {len(summary.reused)} reused in {t_build:.1f} s "
        f"with {args.workers} processes"
    )
    print(f"disk: source .nii.gz {source / 1e6:.1f} MB, cache {size / 1e6:.1f} MB -> ratio {size / source:.2f}x")

    # ---- throughput, one core ----
    torch.set_num_threads(1)
    blosc2.set_nthreads(1)
    roi = (args.roi,) * 3
    plain_t = train_transforms("brats2021", roi, num_samples=args.num_samples)
    cached_t = preprocessed_train_transforms(roi, num_samples=args.num_samples)
    plain_t.set_random_state(seed=0)
    cached_t.set_random_state(seed=0)
    items = [{"image": [e[m] for m in BRATS_MODALITIES], "label": e["label"], "case_id": e["case_id"]} for e in entries]
    cached_ds = PreprocessedDataset(cache, [e["case_id"] for e in entries], cached_t)
    # Memory before the plain chain has run in this process: reading lazily, RSS must not grow
    # with the number of cases read.
    cached_ds[0]  # warm-up: imports, first file opens
    rss_one = rss_mb()
    rss_reads = []
    for _ in range(3):
        for i in range(len(cached_ds)):
            cached_ds[i]
            rss_reads.append(rss_mb())
    half = len(rss_reads) // 2
    plain_t(items[0])

    t_plain = t_cached = 0.0
    n_plain = n_cached = 0
    for _ in range(args.rounds):
        for i, item in enumerate(items):
            t = time.perf_counter()
            out = plain_t(item)
            t_plain += time.perf_counter() - t
            n_plain += len(out)
            del out
            t = time.perf_counter()
            for _ in range(args.cached_per_case):
                n_cached += len(cached_ds[i])
            t_cached += time.perf_counter() - t
    sps_plain, sps_cached = n_plain / t_plain, n_cached / t_cached
    print(f"plain MONAI chain : {sps_plain:7.2f} samples/s ({t_plain / n_plain * 1e3:7.1f} ms/sample, n={n_plain})")
    print(f"preprocessed cache: {sps_cached:7.2f} samples/s ({t_cached / n_cached * 1e3:7.1f} ms/sample, n={n_cached})")
    print(f"RATIO throughput cache/plain: {sps_cached / sps_plain:.1f}x (target >= 20x); disk {size / source:.2f}x")
    print(
        f"memory (cache only, before the plain chain ran): RSS {rss_one:.0f} MB after one case; over "
        f"{len(rss_reads)} reads of all {len(items)} cases: min {min(rss_reads):.0f}, max {max(rss_reads):.0f} MB; "
        f"mean of the first half {sum(rss_reads[:half]) / half:.0f} MB, of the second half "
        f"{sum(rss_reads[half:]) / (len(rss_reads) - half):.0f} MB"
    )
    if args.cache_dir is None:
        shutil.rmtree(cache_dir, ignore_errors=True)


def _builder(data: Path, cache_dir: str, ready: str, go: str, result: str) -> None:
    """One builder "host" (a subprocess of :func:`shared_build`): import, say so, wait, build."""
    entries = discover(data)
    Path(ready).touch()
    while not Path(go).exists():
        time.sleep(0.005)
    t0 = time.perf_counter()
    summary = PreprocessedCache(cache_dir, CacheSettings(scheme="brats2021")).build(entries, progress=False, poll=0.1)
    done = {"finished": time.time(), "seconds": time.perf_counter() - t0}
    done.update(built=len(summary.built), elsewhere=len(summary.elsewhere), reused=len(summary.reused))
    Path(result).write_text(json.dumps(done))


def _concurrent_build(data: Path, folder: Path, n: int) -> tuple[float, list[dict]]:
    """``n`` builder processes over one empty folder: wall seconds from their release until the last returns."""
    folder.mkdir(parents=True)
    procs, results = [], []
    for i in range(n):
        paths = [str(folder / "cache"), str(folder / f"ready{i}"), str(folder / "go"), str(folder / f"result{i}.json")]
        env = {**os.environ, "BTS_HOSTNAME": f"bench-host-{i}", "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, __file__, "--data", str(data), "--builder", *paths]
        procs.append(subprocess.Popen(cmd, env=env))
        results.append(Path(paths[3]))
    while not all((folder / f"ready{i}").exists() for i in range(n)):
        time.sleep(0.01)
    released = time.time()
    (folder / "go").touch()
    for proc in procs:
        if proc.wait() != 0:
            raise SystemExit(f"a builder failed (exit {proc.returncode})")
    done = [json.loads(r.read_text()) for r in results]
    return max(d["finished"] for d in done) - released, done


def shared_build(args: argparse.Namespace) -> None:
    """Build time of the cache with 1 and 2 concurrent builders, and the cost of a later build's checks."""
    from bts_monai.data import cache as cache_mod

    entries = discover(args.data)
    print(describe())
    print(f"data: {args.data} ({len(entries)} cases); builders: separate processes, one preprocessing process each")
    base = Path(tempfile.mkdtemp(prefix="bts_bench_shared_"))
    times: dict[int, list[float]] = {1: [], 2: []}
    try:
        for r in range(args.rounds):
            for n in (1, 2) if r % 2 == 0 else (2, 1):  # alternating, so both see the same machine load
                wall, done = _concurrent_build(args.data, base / f"r{r}n{n}", n)
                times[n].append(wall)
                built = [d["built"] for d in done]
                assert sum(built) == len(entries), f"cases built {built}: each case must be built exactly once"
                print(f"round {r + 1}, {n} builder(s): {wall:6.1f} s until all returned; cases built by each {built}")
        t1, t2 = (statistics.median(times[n]) for n in (1, 2))
        print(f"median: 1 builder {t1:.1f} s ({t1 / len(entries):.2f} s/case), 2 builders {t2:.1f} s")
        print(f"RATIO build time 1 builder / 2 concurrent builders: {t1 / t2:.2f}x")
        # What a later build costs: one stat per file when nothing moved; hashing when times moved.
        cache = PreprocessedCache(base / "r0n1" / "cache", CacheSettings(scheme="brats2021"))
        t = time.perf_counter()
        summary = cache.build(entries, progress=False)
        t_check = time.perf_counter() - t
        assert len(summary.reused) == len(entries)
        t = time.perf_counter()
        for e in entries:
            cache_mod._source_fingerprint(e, cache_mod._input_keys(e, cache.settings))
        t_hash = time.perf_counter() - t
        print(
            f"a later build, nothing changed: {t_check * 1e3:.0f} ms for {len(entries)} cases; hashing every "
            f"source (a copied dataset, once): {t_hash / len(entries) * 1e3:.0f} ms/case = "
            f"{t_hash / t1:.3f}x the preprocessing time"
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
