"""``bts-datalist DIR -o datalist.json``: discover a dataset folder, split it, write the datalist."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from bts_monai.cli._common import exits_on_bad_input, setup_logging
from bts_monai.data.discovery import DATASET_CHOICES, export_nnunet, make_datalist, write_datalist
from bts_monai.errors import BtsInputError


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    p = argparse.ArgumentParser(
        prog="bts-datalist",
        description="Find the cases under DIR (BraTS 2017-2021 and 2023-2025, MSD Task01, nnU-Net v2 raw, "
        "LGG kaggle_3m) and write a MONAI/Decathlon-style datalist JSON with a seeded split by case (patient).",
    )
    p.add_argument("root", metavar="DIR", help="extracted dataset folder (any level above the case folders)")
    p.add_argument("-o", "--output", default="datalist.json", help="datalist JSON to write (default: %(default)s)")
    p.add_argument(
        "--dataset",
        default="auto",
        type=str.lower,
        choices=DATASET_CHOICES,
        metavar="NAME",
        help="layout and label scheme: auto (default: detect every layout), brats (both BraTS name schemes), "
        "brats2017..brats2021, brats2023, brats2024 (2023 names, resection cavity 4), msd, nnunet, lgg",
    )
    split = p.add_mutually_exclusive_group()
    split.add_argument("--folds", type=int, default=None, help="k-fold split (e.g. 5) instead of a hold-out")
    split.add_argument("--val-fraction", type=float, default=0.1, help="hold-out validation share (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    p.add_argument(
        "--verify",
        action="store_true",
        help="also decode every file and check it as bts-infer does (truncated, NaN/Inf or all-zero volumes, "
        "RGB NIfTI, LGG slices that are not RGB or not the patient's size) and the label values (slower)",
    )
    nn = p.add_argument_group("nnU-Net export")
    nn.add_argument(
        "--export-nnunet",
        metavar="OUT",
        help="also write the cases as an nnU-Net v2 raw dataset OUT/DatasetNNN_<name> (dataset.json, "
        "splits_final.json of this split)",
    )
    nn.add_argument("--dataset-id", type=int, default=None, metavar="N", help="nnU-Net dataset number (1-999)")
    nn.add_argument("--nnunet-name", default="BraTS", metavar="NAME", help="dataset name (default %(default)s)")
    nn.add_argument("--copy", action="store_true", help="copy the images instead of linking them")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


@exits_on_bad_input
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``bts-datalist``."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    dl = make_datalist(
        args.root,
        dataset=args.dataset,
        val_fraction=args.val_fraction,
        folds=args.folds,
        seed=args.seed,
        full_check=args.verify,
    )
    if args.export_nnunet:
        if args.dataset_id is None:
            raise BtsInputError(None, "--export-nnunet needs --dataset-id N (nnU-Net's dataset number, 1-999)")
        folder = export_nnunet(dl, args.export_nnunet, args.dataset_id, args.nnunet_name, copy=args.copy)
        print(f"nnU-Net dataset written to {folder}")
    write_datalist(dl, args.output)
    for name, s in sorted(dl["datasets"].items()):
        slices = f", {s['slices']} slices" if s["slices"] else ""
        print(f"{name}: {s['cases']} cases, {s['labelled']} with labels{slices}")
    split = dl["split"]
    how = (
        f"{split['folds']} folds"
        if split["mode"] == "kfold"
        else f"{len(dl['training'])} train / {len(dl['validation'])} val"
    )
    print(f"split ({how}, seed {split['seed']}) written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
