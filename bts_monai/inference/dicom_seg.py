"""DICOM out: a label map on a DICOM series' grid -> a DICOM Segmentation object (highdicom).

A DICOM SEG is what PACS viewers, OHIF and 3D Slicer open natively beside the scan. It is written
with **highdicom** (the maintained library for DICOM SEG/SR from the Imaging Data Commons team),
which fills in the multi-frame functional groups, references and per-frame positions from the
source images, so the result validates as the standard asks.

* One segment per tumour label of the model's scheme, with the codes of the DICOM standard's
  context group CID 7168 "Brain Lesion Segmentation Type With Necrosis" (pydicom's
  ``codes.cid7168``): necrosis (SNOMED CT 6574001) for BraTS' necrotic and non-enhancing core
  (NCR/NET, NETC: one label that leads with necrosis; its segment label names both), oedema
  (SNOMED CT 79654002) for ED and SNFH, enhancing lesion (NCIt C113842: the group has no SNOMED CT
  concept for it) for ET; all in the category morphologically abnormal structure (SNOMED CT
  49755003), anatomic region brain (SNOMED CT 12738006).
* Algorithm identification: the model's name and version, family "artificial intelligence".
* Frames lie on the reference series' grid, one per source slice (empty slices are omitted, as
  highdicom does by default), each referencing its source image.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bts_monai.errors import BtsInputError
from bts_monai.labels import LabelScheme

__all__ = ["SEGMENT_CODES", "segment_descriptions", "write_dicom_seg", "build_dicom_seg", "read_dicom_seg", "main"]

# Label name (labels.py) -> (segment label, CID 7168 type: (code value, scheme, meaning), CIELab colour).
SEGMENT_CODES: dict[str, tuple[str, tuple[str, str, str], tuple[float, float, float]]] = {
    "NCR/NET": ("Necrotic and non-enhancing tumour core", ("6574001", "SCT", "Necrosis"), (40.0, 60.0, 50.0)),
    "NETC": ("Non-enhancing tumour core", ("6574001", "SCT", "Necrosis"), (40.0, 60.0, 50.0)),
    "ED": ("Peritumoural oedema", ("79654002", "SCT", "Edema"), (87.0, -80.0, 80.0)),
    "SNFH": ("Surrounding FLAIR hyperintensity", ("79654002", "SCT", "Edema"), (87.0, -80.0, 80.0)),
    "ET": ("Enhancing tumour", ("C113842", "NCIt", "Enhancing Lesion"), (90.0, -5.0, 90.0)),
}
"""The segment of each tumour label, keyed by the scheme's label name (values stay in labels.py)."""

_CATEGORY = ("49755003", "SCT", "Morphologically Abnormal Structure")
_BRAIN = ("12738006", "SCT", "Brain")


def _hd() -> Any:
    try:
        import highdicom
    except ImportError as exc:
        raise BtsInputError(None, "--dicom-seg needs highdicom: pip install 'bts_monai[dicom]'") from exc
    # highdicom logs every attribute module it copies at INFO (a dozen lines per SEG), which would
    # bury bts-infer's own messages; its warnings still show.
    logging.getLogger("highdicom").setLevel(logging.WARNING)
    return highdicom


def segment_descriptions(scheme: LabelScheme, model_name: str, model_version: str) -> list[Any]:
    """highdicom segment descriptions, segment ``n`` for the scheme's ``n``-th foreground label.

    Raises:
        BtsInputError: the scheme has a label without a standard code here.
    """
    hd = _hd()
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    from bts_monai import __version__ as bts_version

    family = codes.cid7162.ArtificialIntelligence
    algorithm = hd.AlgorithmIdentificationSequence(
        name=model_name, family=family, version=model_version, source=f"bts_monai {bts_version}"
    )
    out = []
    for number, value in enumerate(scheme.foreground_labels, start=1):
        name = scheme.labels[value]
        if name not in SEGMENT_CODES:
            raise BtsInputError(None, f"--dicom-seg: label {name!r} of the {scheme.name} scheme has no DICOM code here")
        label, code, colour = SEGMENT_CODES[name]
        out.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=label,
                segmented_property_category=Code(*_CATEGORY),
                segmented_property_type=Code(*code),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                anatomic_regions=[Code(*_BRAIN)],
                display_color=hd.color.CIELabColor(*colour),
            )
        )
    return out


def build_dicom_seg(
    labels: np.ndarray,
    source_headers: Sequence[Any],
    scheme: LabelScheme,
    model_name: str = "bts_monai model",
    model_version: str = "unknown",
) -> Any:
    """The DICOM SEG dataset of a label map on a series' grid.

    Args:
        labels: ``(columns, rows, slices)`` label values of ``scheme`` (what
            :func:`bts_monai.inference.dicom.load_series` reads: slice ``k`` is ``source_headers[k]``).
        source_headers: the series' datasets in slice order (pixel data not needed).
        scheme: the label scheme (segments follow its foreground labels).
        model_name: algorithm name.
        model_version: algorithm version.
    """
    hd = _hd()
    from pydicom.uid import generate_uid

    from bts_monai import __version__ as bts_version

    labels = np.asarray(labels)
    if labels.ndim != 3 or labels.shape[2] != len(source_headers):
        raise ValueError(f"labels {labels.shape} do not match {len(source_headers)} source slices")
    index = np.zeros(labels.shape, dtype=np.uint8)
    for number, value in enumerate(scheme.foreground_labels, start=1):
        index[labels == value] = number
    frames = np.ascontiguousarray(index.transpose(2, 1, 0))  # (slices, rows, columns), as the sources
    ref = source_headers[0]
    return hd.seg.Segmentation(
        source_images=list(source_headers),
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(scheme, model_name, model_version),
        series_instance_uid=generate_uid(),
        series_number=int(ref.get("SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="bts_monai",
        manufacturer_model_name=model_name,
        software_versions=f"bts_monai {bts_version}; {model_name} {model_version}",
        device_serial_number="0",
        content_description="Brain tumour segmentation (research use only)",
        content_label="TUMOUR",
        series_description=f"SEG {model_name}",
    )


def write_dicom_seg(
    path: str | os.PathLike[str],
    labels: np.ndarray,
    source_headers: Sequence[Any],
    scheme: LabelScheme,
    model_name: str = "bts_monai model",
    model_version: str = "unknown",
) -> Path:
    """Write :func:`build_dicom_seg`'s dataset to ``path`` (the caller stages it atomically)."""
    seg = build_dicom_seg(labels, source_headers, scheme, model_name, model_version)
    seg.save_as(Path(path), enforce_file_format=True)
    return Path(path)


def read_dicom_seg(path: str | os.PathLike[str], source_headers: Sequence[Any], scheme: LabelScheme) -> np.ndarray:
    """A DICOM SEG read back with highdicom as a ``(columns, rows, slices)`` label map in the
    scheme's values, on the grid of ``source_headers`` (slice order)."""
    hd = _hd()
    seg = hd.seg.segread(Path(path))
    uids = [str(h.SOPInstanceUID) for h in source_headers]
    n_segments = len(scheme.foreground_labels)
    stacked = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids,
        segment_numbers=list(range(1, n_segments + 1)),
        assert_missing_frames_are_empty=True,
    )  # (slices, rows, columns, segments)
    out = np.zeros(stacked.shape[:3], dtype=np.uint8)
    for number, value in enumerate(scheme.foreground_labels, start=1):
        out[stacked[..., number - 1] > 0] = value
    return out.transpose(2, 1, 0)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bts_monai.inference.dicom_seg SEG.dcm STUDY_DIR [--compare SEG.nii.gz]``: what a
    DICOM SEG holds (read with pydicom), its labels on the source series' grid (read back with
    highdicom), and optionally whether they equal a NIfTI segmentation voxel for voxel (exit 1 if not)."""
    import argparse

    import nibabel as nib
    import pydicom

    from bts_monai.inference.dicom import find_series, slice_geometry
    from bts_monai.labels import get_scheme

    p = argparse.ArgumentParser(description=main.__doc__.splitlines()[0] if main.__doc__ else None)
    p.add_argument("seg", help="the DICOM SEG file")
    p.add_argument("study", help="the study folder holding the series it references")
    p.add_argument("--compare", metavar="NIFTI", help="a NIfTI segmentation on the same grid to compare with")
    p.add_argument("--scheme", default="brats2021", help="label values of the segments (default brats2021)")
    args = p.parse_args(argv)
    scheme = get_scheme(args.scheme)
    ds = pydicom.dcmread(args.seg)
    print(f"{args.seg}: {ds.SOPClassUID.name}, {ds.NumberOfFrames} frames of {ds.Rows}x{ds.Columns}")
    for s in ds.SegmentSequence:
        code = s.SegmentedPropertyTypeCodeSequence[0]
        alg = s.SegmentationAlgorithmIdentificationSequence[0]
        print(
            f"  segment {s.SegmentNumber} {s.SegmentLabel!r}: {code.CodeMeaning} ({code.CodingSchemeDesignator} "
            f"{code.CodeValue}); algorithm {alg.AlgorithmName} {alg.AlgorithmVersion}"
        )
    uid = str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID)
    hits = [s for s in find_series(args.study) if s.uid == uid]
    if not hits:
        print(f"{args.study}: holds no series {uid}, which the SEG references")
        return 2
    order, _ = slice_geometry(hits[0])
    labels = read_dicom_seg(args.seg, [hits[0].headers[i] for i in order], scheme)
    counts = {int(v): int((labels == v).sum()) for v in scheme.foreground_labels}
    print(f"  on {hits[0].name}, grid {labels.shape}: voxels per label {counts}")
    if args.compare is None:
        return 0
    other = np.asarray(nib.load(args.compare).dataobj)
    if other.shape != labels.shape:
        print(f"{args.compare}: shape {other.shape}, not the SEG's {labels.shape}")
        return 1
    differ = int((other != labels).sum())
    print(f"  {args.compare}: voxels per label {({int(v): int((other == v).sum()) for v in scheme.foreground_labels})}")
    print(f"  voxel for voxel equal: {'yes' if differ == 0 else f'no, {differ} voxels differ'}")
    return 0 if differ == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
