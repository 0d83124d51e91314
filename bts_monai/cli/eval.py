"""``bts-eval``: score predicted segmentations against ground truth.

Examples::

    bts-eval predictions/ BraTS2021_Training_Data/ -o metrics.csv --plot metrics.png --lesion-wise
    bts-eval nnunet_predictions/ nnUNet_raw/Dataset137_BraTS2021/labelsTr/ -o metrics.csv
    bts-eval TCGA_CS_4941_19960909_seg.tif kaggle_3m/TCGA_CS_4941_19960909/   # pixels
    bts-eval lgg_predictions/ kaggle_3m/ --spacing 1 1 2.5                    # mm, mL
    bts-eval preds/ BraTS2021_Training_Data/ -o m.csv --model preds/report.json  # provenance columns
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from bts_monai.errors import BtsInputError
from bts_monai.labels import SCHEMES

__all__ = ["build_parser", "main"]

_SCHEMES = ("auto", *SCHEMES)


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive size in mm, got {text}")
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
    parser.add_argument("pred", help="prediction NIfTI file, LGG <patient>_seg.tif or mask folder, or a folder of them")
    parser.add_argument(
        "gt",
        help="ground-truth file, case folder or dataset folder (BraTS, LGG, nnU-Net/MSD labelsTr, "
        "or a flat folder of <case>.nii.gz labels)",
    )
    parser.add_argument(
        "--scheme",
        choices=_SCHEMES,
        default="auto",
        help="label scheme; auto: the dataset.json beside labelsTr/, lgg for TIFF, brats2023 if the labels "
        "use its ET value, else brats2021 (one-empty HD95: 374 for brats2023/2024, else 373.13)",
    )
    parser.add_argument("-o", "--output", metavar="CSV", help="write per-case rows and summary rows to this CSV")
    parser.add_argument("--plot", metavar="IMAGE", help="write box plots per region (png, pdf, svg)")
    parser.add_argument(
        "--model",
        metavar="REPORT|MODEL",
        help="record what made the predictions in every CSV row: the bts-infer --report JSON of the run "
        "(model, weights sha256, backend, precision, overlap, TTA, package versions), or the model itself "
        "(a packaged model's name, a model folder or a checkpoint)",
    )
    parser.add_argument("--lesion-wise", action="store_true", help="add BraTS 2023 lesion-wise Dice and HD95")
    parser.add_argument("--dilation", type=_non_negative, default=3, help="lesion-wise dilation iterations (3)")
    parser.add_argument(
        "--min-volume",
        type=_non_negative_float,
        default=50.0,
        metavar="MM3",
        help="lesion-wise: ignore lesions of this volume (mm³, as the BraTS 2023 code) or less (50); "
        "pixels for TIFF without --spacing",
    )
    parser.add_argument(
        "--spacing",
        type=_positive_float,
        nargs=3,
        metavar=("ROW", "COL", "SLICE"),
        help="pixel size and slice step (mm) of TIFF slices, which carry none: HD95 in mm and volumes in mL "
        "instead of hd95_px and area_px; NIfTI headers must agree with it",
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
    from bts_monai.evaluation import check_plot_path, evaluate, format_summary, write_outputs
    from bts_monai.fileio import check_writable

    logging.basicConfig(format="%(levelname)s: %(message)s")
    logging.getLogger("bts_monai").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        # Outputs that cannot be written are refused before the (slow) scoring.
        if args.plot:
            check_plot_path(args.plot)
        for target in (args.output, args.plot):
            if target:
                check_writable(target)
        result = evaluate(
            args.pred,
            args.gt,
            scheme=args.scheme,
            lesion_wise=args.lesion_wise,
            dilation=args.dilation,
            min_volume=args.min_volume,
            spacing=args.spacing,
            model=args.model,
        )
        # The CSV and the plot appear together or not at all.
        write_outputs(result.rows, result.summary, args.output, args.plot, result.provenance)
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
