"""``bts-eval``: score predicted segmentations against ground truth.

Example::

    bts-eval predictions/ BraTS2021_Training_Data/ -o metrics.csv --plot metrics.png --lesion-wise
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from bts_monai.errors import BtsInputError

__all__ = ["build_parser", "main"]

_SCHEMES = ("auto", "brats2021", "brats2023", "brats2024", "lgg")


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``bts-eval`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="bts-eval",
        description=(
            "Per-case, per-region Dice, IoU, HD95, sensitivity, specificity and volumes of predicted "
            "segmentations against ground truth, paired by case id. Unmatched cases are listed."
        ),
    )
    parser.add_argument("pred", help="prediction NIfTI file, LGG mask folder, or a folder of them")
    parser.add_argument("gt", help="ground-truth file, case folder or dataset folder (BraTS or LGG)")
    parser.add_argument(
        "--scheme",
        choices=_SCHEMES,
        default="auto",
        help="label scheme; auto: lgg for TIFF, brats2023 if the labels use its ET value, else brats2021",
    )
    parser.add_argument("-o", "--output", metavar="CSV", help="write per-case rows and summary rows to this CSV")
    parser.add_argument("--plot", metavar="IMAGE", help="write box plots per region (png, pdf, svg)")
    parser.add_argument("--lesion-wise", action="store_true", help="add BraTS 2023 lesion-wise Dice and HD95")
    parser.add_argument("--dilation", type=_non_negative, default=3, help="lesion-wise dilation iterations (3)")
    parser.add_argument(
        "--min-volume", type=_non_negative, default=50, help="lesion-wise: ignore lesions of this many voxels or fewer"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log each case")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``bts-eval``; returns the exit status (2 for bad input)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help or a usage error; argparse already printed why
        return exc.code if isinstance(exc.code, int) else 2
    # Imported here so that --help and usage errors answer without loading torch and MONAI.
    from bts_monai.evaluation import evaluate, format_summary, plot, write_csv

    logging.basicConfig(format="%(levelname)s: %(message)s")
    logging.getLogger("bts_monai").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        result = evaluate(
            args.pred,
            args.gt,
            scheme=args.scheme,
            lesion_wise=args.lesion_wise,
            dilation=args.dilation,
            min_volume=args.min_volume,
        )
        if args.output:
            write_csv(result.rows, result.summary, args.output)
        if args.plot:
            plot(result.rows, args.plot)
    except BtsInputError as exc:
        message = " ".join(str(exc).split())
        print(f"bts-eval: error: {message}", file=sys.stderr)
        return 2
    print(format_summary(result))
    if args.output:
        print(f"wrote {args.output}")
    if args.plot:
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
