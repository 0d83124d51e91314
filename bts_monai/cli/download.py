"""``bts-download {brats2020,brats2021,lgg} --dest DIR``: fetch a Kaggle dataset, ready to train on.

Prints the dataset folder on success. Exit status 2 for problems the user can fix (credentials,
disk space, a folder in the way), 1 for network or server failures (run again to resume).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bts_monai.cli._common import exits_on_bad_input, setup_logging
from bts_monai.data.download import DATALIST_NAME, DATASETS, DownloadError, download_dataset

EXIT_DOWNLOAD_FAILED = 1


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    p = argparse.ArgumentParser(
        prog="bts-download",
        description="Download a dataset from Kaggle (needs a Kaggle API token), extract it safely, fix the "
        f"Kaggle copy's quirks, check it and write {DATALIST_NAME} beside it. Running it again on a "
        "complete copy does nothing; after an interruption it resumes.",
        epilog="datasets: " + "; ".join(f"{k}: {s.description} ({s.url})" for k, s in DATASETS.items()),
    )
    p.add_argument("dataset", choices=sorted(DATASETS), help="which dataset")
    p.add_argument("--dest", required=True, metavar="DIR", help="folder to put it in; the data lands in DIR/<dataset>")
    p.add_argument("--force", action="store_true", help="download and extract again, replacing DIR/<dataset>")
    p.add_argument("--no-datalist", action="store_true", help=f"do not write {DATALIST_NAME}")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


@exits_on_bad_input
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``bts-download``."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        root = download_dataset(args.dataset, args.dest, force=args.force, write_datalist=not args.no_datalist)
    except DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_DOWNLOAD_FAILED
    print(root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
