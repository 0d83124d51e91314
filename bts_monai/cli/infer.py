"""``bts-infer INPUT... --ckpt run.ckpt``: segment scans; thin wrapper over :meth:`Predictor.run`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from bts_monai.cli._common import (
    EXIT_BAD_INPUT,
    add_output_scheme_argument,
    add_speed_arguments,
    apply_output_scheme,
    exits_on_bad_input,
    setup_logging,
    speed_options,
)
from bts_monai.data.discovery import BRATS_MODALITIES
from bts_monai.data.layouts import BRATS2023_NAMES
from bts_monai.errors import BtsInputError
from bts_monai.inference.predictor import (
    NO_DEFAULT_MODEL,
    CaseResult,
    Predictor,
    default_model_path,
    one_line,
)
from bts_monai.inference.sharding import check_part, part_path

PROG = "bts-infer"

EPILOG = """\
inputs:
  a BraTS case folder          <case>/<case>_{flair,t1,t1ce,t2}.nii.gz, found by suffix, or BraTS
                               2023-2025's <case>-{t2f,t1n,t1c,t2w}.nii.gz (t2f=flair, t1n=t1, t1c=t1ce,
                               t2w=t2)
  an nnU-Net channel set       <case>_0000.nii.gz .. _0003 (a file of it, its folder, or imagesTs/),
                               channels named by the dataset.json beside it (else --channel-order)
  a 4D NIfTI                   modalities on the last axis, in the model's order (else --channel-order)
  explicit files               --flair F --t1 F --t1ce F --t2 F (those the model reads)
  LGG slices (2D LGG models)   a .tif slice, or a patient folder of <patient>_<n>.tif slices
  a DICOM study                a folder of DICOM series (one per sequence, at any depth), matched to
                               the modalities by SeriesDescription/ProtocolName (else --series);
                               skull stripping is not done: give skull-stripped series
  many                         several of the above, or a folder of them: one after another, a bad
                               case is reported and skipped; exit status 2 if any failed

outputs:
  the segmentation has the input's shape, affine and qform/sform codes, uint8, with the input
  dataset's own label values (BraTS 2017-2021: 0, 1, 2, 4; a BraTS 2023-named case: 0, 1, 2, 3;
  an nnU-Net or MSD case: its dataset.json's), else the model's; --output-scheme chooses.
  Default name <case>_seg.nii.gz in the current
  folder; -o names the file (one input) or the folder (several). LGG: <case>_seg.tif, one mask
  (a slice) or a multi-page stack with a page per slice (a patient); -o X.nii.gz gives an
  (H, W, slices) NIfTI stack instead.
  --probabilities  <case>_prob_<REGION>.nii.gz beside it: int16 with scl_slope 1/32767 (NIfTI has
                   no float16; every reader returns floats in [0, 1])
  --report         voxel counts and volumes (mL, from the header's voxel size) per label and region
  --overlay        the regions in colour on axial, coronal and sagittal slices through the tumour
  --dicom-seg      a DICOM SEG on the reference series' grid (PACS viewers, OHIF, 3D Slicer)

examples:
  bts-infer BraTS2021_00000/ --ckpt run.ckpt -o seg.nii.gz --report r.json --overlay o.png
  bts-infer cases/ --ckpt run.ckpt -o out/ --report volumes.csv
  bts-infer --flair f.nii.gz --t1 t1.nii.gz --t1ce t1ce.nii.gz --t2 t2.nii.gz --ckpt run.ckpt
  bts-infer cases/ -o out/ --num-parts 8 --part-id $SLURM_ARRAY_TASK_ID --skip-existing   # one of 8 array tasks
  bts-infer study/ --register --dicom-seg seg.dcm -o seg.nii.gz --report r.json
"""


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Segment brain tumours with a trained bts_monai model. The network, modalities, label "
        "scheme, patch size and normalisation come from the checkpoint; no other flag is needed.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="case folders, 4D NIfTI, TIFF slices, DICOM study folders, or folders of them",
    )
    p.add_argument("--ckpt", metavar="PATH", help="checkpoint from `bts-train fit` (default: the packaged model)")
    p.add_argument(
        "--model",
        metavar="NAME",
        help="a packaged model by name (default: brats_unet_2mm for NIfTI, lgg_unet2d for TIFF)",
    )
    p.add_argument("--list-models", action="store_true", help="list the packaged models and exit")
    p.add_argument("-o", "--output", metavar="PATH", help="output file (one input) or folder (several)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing output files (default: refuse them); an input of the run is never replaced",
    )
    files = p.add_argument_group("explicit modality files (one case)")
    for m in BRATS_MODALITIES:
        alias = BRATS2023_NAMES[m]
        files.add_argument(f"--{m}", f"--{alias}", dest=m, metavar="F", help=f"the {m} NIfTI ({alias} in BraTS 2023)")
    p.add_argument(
        "--channel-order",
        metavar="NAMES",
        help="comma-separated names of a 4D NIfTI's channels along its last axis (default: the model's order)",
    )
    add_output_scheme_argument(p)
    out = p.add_argument_group("extra outputs")
    out.add_argument("--probabilities", action="store_true", help="also write per-region probability maps")
    out.add_argument("--report", metavar="PATH", help="volumes as .json or .csv (one file for all cases)")
    out.add_argument("--overlay", metavar="PATH", help="three-plane overlay .png (several inputs: a folder)")
    dicom = p.add_argument_group("DICOM studies (pip install 'bts_monai[dicom]')")
    dicom.add_argument(
        "--series",
        action="append",
        default=[],
        metavar="MOD=SERIES",
        help="the series of a modality: its SeriesInstanceUID or exact SeriesDescription/ProtocolName "
        "(repeatable; e.g. flair=1.2.840.113619.2.55.3.1234 or 't1ce=AX T1 POST')",
    )
    dicom.add_argument(
        "--register",
        action="store_true",
        help="resample series on other voxel grids rigidly onto the reference series (SimpleITK; the "
        "report records each transform); without it such series are an error",
    )
    dicom.add_argument(
        "--register-to", metavar="MOD", help="the reference series' modality (default: t1ce); implies --register"
    )
    dicom.add_argument(
        "--dicom-seg",
        metavar="OUT.dcm",
        help="also write a DICOM Segmentation object on the reference series' grid (several inputs: a folder)",
    )
    cluster = p.add_argument_group("many cases over a cluster (bts_monai.inference.sharding)")
    cluster.add_argument(
        "--num-parts",
        type=int,
        default=1,
        metavar="N",
        help="split the cases into N parts: sorted by case id, dealt round-robin (default 1)",
    )
    cluster.add_argument(
        "--part-id",
        type=int,
        default=0,
        metavar="K",
        help="segment only part K (0 to N-1), e.g. $SLURM_ARRAY_TASK_ID; --report gets .partKofN in its name",
    )
    cluster.add_argument(
        "--skip-existing",
        action="store_true",
        help="skip cases whose outputs all exist and read back whole; redo the others (replacing a truncated file)",
    )
    add_speed_arguments(p)
    from bts_monai.inference.display import CONVENTIONS, DEFAULT_CONVENTION

    p.add_argument(
        "--convention",
        choices=CONVENTIONS,
        default=DEFAULT_CONVENTION,
        help="how --overlay draws left and right: radiological (patient's right on the image's left) or "
        "neurological (default: %(default)s)",
    )
    p.add_argument("--trusted", action="store_true", help="allow a network class from outside monai/bts_monai")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    p.add_argument("-v", "--verbose", action="store_true", help="debug messages")
    return p


def format_summary(results: Sequence[CaseResult]) -> str:
    """The table printed after several cases: status, volumes (mL) per region, time, output or error."""
    regions: list[str] = []
    for r in results:
        regions += [k for k in r.volumes_ml if k not in regions]
    head = ["case", "status", *[f"{k} mL" for k in regions], "s", "output / problem"]
    rows = []
    for r in results:
        vols = [("-" if r.volumes_ml.get(k) is None else f"{r.volumes_ml[k]:.2f}") for k in regions]
        where = str(r.outputs[0]) if r.ok and r.outputs else (r.error or "")
        status = "skipped" if r.skipped else "ok" if r.ok else "FAILED"
        rows.append([r.case_id, status, *vols, f"{r.seconds:.1f}", where])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    widths[-1] = 0
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in [head, *rows]]
    n_bad = sum(not r.ok for r in results)
    n_skipped = sum(r.skipped for r in results)
    lines.append(
        f"{len(results) - n_bad} of {len(results)} cases segmented"
        + (f" ({n_skipped} complete already: skipped)" if n_skipped else "")
        + (f", {n_bad} failed" if n_bad else "")
    )
    return "\n".join(lines)


@exits_on_bad_input
def main(argv: Sequence[str] | None = None) -> int:
    """Run ``bts-infer``; returns the exit status (2: bad input, or a case of several failed)."""
    try:
        return _main(argv)
    except BtsInputError as exc:
        raise one_line(exc) from exc


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    check_part(args.num_parts, args.part_id)  # before the model loads
    setup_logging(args.verbose)
    if args.quiet:
        logging.getLogger().setLevel(logging.WARNING)
    if args.list_models:
        _print_models()
        return 0
    files = {m: getattr(args, m) for m in BRATS_MODALITIES if getattr(args, m)}
    if not args.inputs and not files:
        raise BtsInputError(None, "no input: give a case folder, a 4D NIfTI, TIFF slices, or --flair/--t1/--t1ce/--t2")
    ckpt = args.ckpt
    if ckpt is None and args.model:
        from bts_monai.model.packaged import model_dir

        ckpt = model_dir(args.model)
    if ckpt is None:
        tiff = any(_is_tiff_input(i) for i in args.inputs)
        ckpt = default_model_path("lgg" if tiff else "brats")
        if ckpt is None:
            raise BtsInputError(None, NO_DEFAULT_MODEL)
    try:
        predictor = Predictor.from_checkpoint(
            ckpt,
            trusted=args.trusted,
            convention=args.convention,
            **speed_options(args),
        )
    except ValueError as exc:
        if isinstance(exc, BtsInputError):
            raise
        raise BtsInputError(None, str(exc)) from exc
    apply_output_scheme(predictor, args.output_scheme)
    if args.series or args.register or args.register_to:
        from bts_monai.inference.dicom import DicomOptions, parse_series_overrides

        predictor.dicom_options = DicomOptions(
            parse_series_overrides(args.series, predictor.modalities),
            register=args.register or args.register_to is not None,
            reference=args.register_to,
        )
    order = [c.strip() for c in args.channel_order.split(",")] if args.channel_order else None
    results = predictor.run(
        args.inputs,
        args.output,
        files=files or None,
        channel_order=order,
        probabilities=args.probabilities,
        report=args.report,
        overlay=args.overlay,
        progress=not args.quiet and sys.stderr.isatty(),
        overwrite=args.overwrite,
        num_parts=args.num_parts,
        part_id=args.part_id,
        skip_existing=args.skip_existing,
        dicom_seg=args.dicom_seg,
    )
    if len(results) == 1 and results[0].ok:
        r = results[0]
        vols = ", ".join(f"{k} {v:.2f} mL" for k, v in r.volumes_ml.items() if v is not None)
        done = " (complete already: skipped)" if r.skipped else ""
        print(f"{r.case_id}: {', '.join(str(o) for o in r.outputs)}" + (f" ({vols})" if vols else "") + done)
    else:
        print(format_summary(results))
    if args.report and len(results) > 1 and any(r.ok for r in results):
        print(f"report: {part_path(args.report, args.num_parts, args.part_id)}")
    return 0 if all(r.ok for r in results) else EXIT_BAD_INPUT


def _is_tiff_input(path: str) -> bool:
    """A TIFF slice, or a folder (LGG patient, or folder of patients) of TIFFs and no NIfTI."""
    from pathlib import Path

    p = Path(path)
    if p.is_dir():
        names = [f.name.lower() for f in p.rglob("*") if f.is_file()]
        return any(n.endswith((".tif", ".tiff")) for n in names) and not any(".nii" in n for n in names)
    return p.name.lower().endswith((".tif", ".tiff"))


def _print_models() -> None:
    """One paragraph per packaged model: name, inputs, outputs, training data and validation."""
    from bts_monai.model.packaged import DEFAULT_MODELS, list_models

    defaults = {v: k for k, v in DEFAULT_MODELS.items()}
    models = list_models()
    if not models:
        print("no packaged models installed")
    for m in models:
        inf, td = m["inference"], m["training_data"]
        role = f" (default for {defaults[m['name']]} input)" if m["name"] in defaults else ""
        print(f"{m['name']} {m['version']}{role}: {m['description']}")
        print(
            f"  inputs: {', '.join(inf['modalities'])}; {inf['spatial_dims']}D; regions {', '.join(m['regions'])}; "
            f"labels {m['output_label_values']}; roi {inf['roi_size']}; spacing {inf['spacing'] or 'native'}"
        )
        print(
            f"  trained on {td.get('n_train', '?')} cases, validated on {td.get('n_val', '?')}: "
            + "; ".join(
                f"{r} Dice {v.get('dice', float('nan')):.3f}"
                for r, v in m["validation"].get("mean_per_region", {}).items()
            )
        )
        print(f"  {m['intended_use']}")


if __name__ == "__main__":
    raise SystemExit(main())
