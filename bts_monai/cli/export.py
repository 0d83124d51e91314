"""``bts-export-model``: package a checkpoint as a default model, or export a model as ONNX or a MONAI bundle.

``bts-export-model CKPT NAME`` writes ``<out>/<NAME>/model.safetensors`` (float16 state dict), its ONNX export and
``metadata.json``; the training cases come from the run's split file, the validation figures from
a ``bts-eval`` CSV.

``bts-export-model MODEL --onnx [OUT]`` writes the ONNX export of a checkpoint or packaged model
(checked against torch) to ``OUT``, or into the export cache keyed by the weights' SHA-256
(:func:`~bts_monai.inference.backends.cached_onnx`), ahead of ``bts-infer``'s first use.
``bts-export-model MODEL --bundle DIR`` writes it as a MONAI bundle (:mod:`bts_monai.model.bundle`).
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from typing import Any

from bts_monai.cli._common import exits_on_bad_input, setup_logging
from bts_monai.errors import BtsInputError
from bts_monai.inference.postprocess import POSTPROCESSING
from bts_monai.model.packaged import MODELS_DIR, export_model


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    p = argparse.ArgumentParser(prog="bts-export-model", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument(
        "ckpt",
        metavar="MODEL",
        help="training checkpoint (.ckpt); with --onnx/--bundle also a packaged model's folder or name",
    )
    p.add_argument("name", nargs="?", help="package the checkpoint as this model name (folder name)")
    p.add_argument(
        "--onnx",
        nargs="?",
        const="",
        metavar="OUT",
        help="write MODEL's ONNX export, checked against torch, to OUT (.onnx) or, without OUT, into the export "
        "cache keyed by the weights' SHA-256 (where bts-infer looks for a checkpoint's export)",
    )
    p.add_argument(
        "--bundle",
        metavar="DIR",
        help="write MODEL as a MONAI bundle in DIR (run it with python -m monai.bundle run, see DIR/docs/README.md)",
    )
    p.add_argument("--trusted", action="store_true", help="allow a network class outside the trusted packages")
    p.add_argument("--out", default=str(MODELS_DIR), help="folder of model folders (default: the package's)")
    p.add_argument("--description", default="")
    p.add_argument("--model-version", default="1.0.0", help="the packaged model's version (default %(default)s)")
    p.add_argument("--split", help="the run's split/datalist JSON: records which cases trained and validated")
    p.add_argument(
        "--eval-csv",
        help="bts-eval CSV of the validation cases: its summary means and each case's Dice and HD95 become metadata",
    )
    p.add_argument("--baseline-csv", help="bts-eval CSV of an untrained model on the same cases")
    p.add_argument("--command", default="", help="the exact training command")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-license", default="")
    p.add_argument(
        "--postprocess",
        choices=POSTPROCESSING,
        default="none",
        help="post-processing recorded for the model (choose it on the training cases: "
        "scripts/choose_postprocessing.py); default none",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _split_cases(path: str | None, ckpt: str) -> dict[str, Any]:
    """The training and validation cases of ``--split`` (the run's datalist JSON, ``splits/...``),
    re-split by the checkpoint's fixed ``val_cases`` when its DataModule had them: the datalist
    file holds the split before ``val_cases`` were applied, the checkpoint what trained."""
    if not path:
        return {}
    from bts_monai.data.discovery import fixed_split, read_datalist
    from bts_monai.model.checkpoint import read_val_cases

    data = read_datalist(path)
    val_cases = read_val_cases(ckpt)
    if val_cases:
        data = fixed_split(data, val_cases, path)
    train = [e["case_id"] for e in data.get("training", [])]
    val = [e["case_id"] for e in data.get("validation", [])]
    return {
        "datasets": data.get("datasets"),
        "train_cases": train,
        "val_cases": val,
        "n_train": len(train),
        "n_val": len(val),
        "split": data.get("split"),
    }


def _eval_rows(path: str | None) -> list[dict[str, str]]:
    """The rows of a bts-eval CSV (none without one)."""
    if not path:
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _means(rows: list[dict[str, str]]) -> dict[str, dict[str, float]]:
    """Per region: the mean of each metric (the summary rows of a bts-eval CSV)."""
    return {
        row["region"]: {
            k: round(float(v), 4)
            for k, v in row.items()
            if k not in ("case_id", "region", "statistic") and v not in ("", None) and _is_number(v)
        }
        for row in rows
        if row.get("case_id") == "summary" and row.get("statistic") == "mean"
    }


PER_CASE_METRICS = ("dice", "hd95")
"""What ``--eval-csv`` records of each validation case (the model card's per-case table)."""


def _per_case(rows: list[dict[str, str]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per region, per case: Dice and HD95 (the case rows of a bts-eval CSV); an empty HD95
    (an empty region) is left out."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for row in rows:
        if row.get("case_id") in (None, "", "summary"):
            continue
        out.setdefault(row["region"], {})[row["case_id"]] = {
            k: round(float(row[k]), 4) for k in PER_CASE_METRICS if _is_number(row.get(k) or "")
        }
    return out


def _is_number(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


@exits_on_bad_input
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``bts-export-model``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if args.onnx is not None or args.bundle is not None:
        if args.name:
            raise BtsInputError(
                None, "NAME packages a checkpoint; --onnx and --bundle export MODEL as it is (drop NAME)"
            )
        return _export(args.ckpt, args.onnx, args.bundle, args.trusted)
    if not args.name:
        parser.error("give NAME to package the checkpoint as, or --onnx / --bundle")
    rows = _eval_rows(args.eval_csv)
    validation: dict[str, Any] = {"mean_per_region": _means(rows), "per_case": _per_case(rows)}
    if args.baseline_csv:
        validation["untrained_mean_per_region"] = _means(_eval_rows(args.baseline_csv))
    folder = export_model(
        args.ckpt,
        args.name,
        args.out,
        description=args.description,
        version=args.model_version,
        training_data=_split_cases(args.split, args.ckpt),
        validation=validation,
        reproduce={"command": args.command, "seed": args.seed},
        data_license=args.data_license,
        trusted=args.trusted,
        postprocess=args.postprocess,
    )
    size = (folder / "model.safetensors").stat().st_size / 1e6
    print(f"packaged {args.name} in {folder} ({size:.1f} MB)")
    return 0


def _export(source: str, onnx: str | None, bundle: str | None, trusted: bool) -> int:
    """``--onnx`` and ``--bundle``: export a checkpoint or packaged model as it is."""
    from bts_monai.model.bundle import load_model

    net, config, meta = load_model(source, trusted=trusted)
    if onnx is not None:
        from bts_monai.inference.backends import cached_onnx, export_onnx

        if onnx:
            if not onnx.lower().endswith(".onnx"):
                raise BtsInputError(onnx, "--onnx OUT must end in .onnx")
            record = export_onnx(net, config, onnx)
            print(
                f"ONNX export: {onnx} ({record['bytes'] / 1e6:.1f} MB), checked with {record['checked_with']}: "
                f"max |difference| {record['max_abs_diff']:.1e} (tolerance {record['atol']:g} + "
                f"{record['rtol']:g} x max |torch|)"
            )
        else:
            print(f"ONNX export in the cache: {cached_onnx(net, config)}")
    if bundle is not None:
        from bts_monai.model.bundle import missing_bundle_packages, write_bundle

        folder = write_bundle(net, config, bundle, meta)
        print(f"MONAI bundle: {folder}")
        print(
            f"run it: cd {folder} && python -m monai.bundle run --config_file configs/inference.json "
            "--dataset_dir CASE_OR_CASES --output_dir OUT"
        )
        missing = missing_bundle_packages()
        if missing:
            print(f"running it needs {', '.join(missing)}: pip install 'bts_monai[bundle]'")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
