"""``bts-preprocess DATA_ROOT -o CACHE_DIR``: run the deterministic part once per BraTS case, into a cache.

Train from it with ``data.cache: preprocessed`` and ``data.cache_dir: CACHE_DIR`` (the DataModule
would build the same cache itself; this command does it ahead of time, in parallel).
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bts_monai.cli._common import exits_on_bad_input, setup_logging
from bts_monai.data.cache import LOCK_STALE_AFTER, CacheSettings, PreprocessedCache
from bts_monai.data.discovery import BRATS_MODALITIES, check_case, discover, read_datalist
from bts_monai.errors import BtsInputError
from bts_monai.fileio import remove_tree
from bts_monai.labels import get_scheme

PROG = "bts-preprocess"


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Load, orient to RAS, crop to the brain, normalise and convert the labels of every BraTS "
        "case once, and store the result as compressed float16 arrays (blosc2) with the metadata to map "
        "back to the original grid. Cases already cached with the same settings are skipped; changing a "
        "setting makes a new cache folder (named by the settings' hash) under CACHE_DIR.",
    )
    p.add_argument("root", metavar="DATA_ROOT", nargs="?", help="extracted BraTS folder (any level above the cases)")
    p.add_argument("--datalist", help="a datalist JSON (bts-datalist) instead of DATA_ROOT; all its cases")
    p.add_argument("-o", "--output", required=True, metavar="CACHE_DIR", help="cache folder (data.cache_dir)")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="processes (default %(default)s)")
    p.add_argument(
        "--modalities",
        nargs="+",
        choices=BRATS_MODALITIES,
        default=list(BRATS_MODALITIES),
        help="modalities in channel order (default: all four)",
    )
    p.add_argument("--spacing", nargs=3, type=float, metavar=("X", "Y", "Z"), help="resample to this voxel size (mm)")
    p.add_argument("--dataset", default="auto", help="auto (default), brats, or brats2017..brats2021")
    p.add_argument("--label-mode", choices=("regions", "labels"), default="regions", help="default: regions")
    p.add_argument("--intensity", choices=("zscore", "minmax"), default="zscore", help="default: zscore")
    p.add_argument("--force", action="store_true", help="rebuild cases that are already cached")
    p.add_argument(
        "--lock-stale-after",
        type=float,
        default=LOCK_STALE_AFTER,
        metavar="S",
        help="seconds after which another builder's untouched case lock counts as abandoned (default "
        "%(default)g); builds on several hosts over one shared CACHE_DIR share the cases safely",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _entries(args: argparse.Namespace) -> tuple[list[dict[str, Any]], Path]:
    if args.datalist:
        dl = read_datalist(args.datalist)
        entries = list(dl["training"]) + list(dl.get("validation", [])) + list(dl.get("test", []))
        where = Path(args.datalist)
    else:
        entries = discover(args.root, args.dataset)
        for e in entries:
            check_case(e)
        where = Path(args.root)
    lgg = [e["case_id"] for e in entries if e.get("dataset") == "lgg" or "slices" in e]
    if lgg:
        raise BtsInputError(where, f"holds LGG patients ({lgg[0]}...): LGG slices need no preprocessing cache")
    if not entries:
        raise BtsInputError(where, "no BraTS cases")
    return entries, where


def _scheme(args: argparse.Namespace, entries: list[dict[str, Any]], where: Path) -> str:
    if args.dataset != "auto":
        return get_scheme(args.dataset).name
    names = {get_scheme(e.get("dataset", "brats")).name for e in entries}
    if len(names) > 1:
        raise BtsInputError(where, f"cases of several label schemes {sorted(names)}: give --dataset")
    return names.pop()


def _remove_if_only_ours(cache: PreprocessedCache, created: list[Path]) -> None:
    """After a failed first build, remove the folders it created if they hold nothing else (no lone
    settings.json) — never while another builder's cases, temporaries or locks are in them."""
    root = cache.root
    if cache.root in created and root.is_dir():
        locks = root / ".locks"
        names = {p.name for p in root.iterdir()}
        if names <= {"settings.json", ".locks"} and not (locks.is_dir() and any(locks.iterdir())):
            remove_tree(root)
    if cache.cache_dir in created:
        with contextlib.suppress(OSError):
            cache.cache_dir.rmdir()  # only when empty


@exits_on_bad_input
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``bts-preprocess``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.root is None) == (args.datalist is None):
        parser.error("give DATA_ROOT or --datalist (one of them)")
    setup_logging(args.verbose)
    entries, where = _entries(args)
    try:
        settings = CacheSettings(
            _scheme(args, entries, where), tuple(args.modalities), args.label_mode, args.intensity, args.spacing
        )
    except ValueError as exc:
        raise BtsInputError(where, str(exc)) from exc
    cache = PreprocessedCache(args.output, settings)
    created = [p for p in (cache.cache_dir, cache.root) if not p.exists()]
    try:
        summary = cache.build(
            entries,
            workers=args.workers,
            progress=not args.no_progress,
            force=args.force,
            stale_after=args.lock_stale_after,
        )
    except BaseException:
        _remove_if_only_ours(cache, created)
        raise
    keys = list(settings.modalities) + ["label"]
    source = sum(os.path.getsize(e[k]) for e in entries for k in keys if k in e)
    size = cache.disk_bytes()
    print(
        f"{len(entries)} cases in {cache.root} (built {len(summary.built)}, reused {len(summary.reused)}"
        + (f", built by other builders {len(summary.elsewhere)}" if summary.elsewhere else "")
        + "): "
        f"{size / 1e6:.1f} MB, {size / max(source, 1):.2f}x the {source / 1e6:.1f} MB of source files"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
