"""Build the training folders of the two packaged default models (issue 17) from their sources.

The default models train on every labelled case this project may use:

* BraTS: the 10 cases of ``../shared/data/brats2018``, the 24 BraTS 2018 cases of
  ``../shared/data/EXTRA_TRAINING.tsv`` and the BraTS 2023 case of ``../shared/data/brats2023``
  (the same patient as BraTS2021_00000), relabelled to the 2017-2021 scheme through
  :mod:`bts_monai.labels` (regions of the 2023 scheme painted back in the 2021 one);
* LGG: the 8 patients of ``../shared/data/lgg/kaggle_3m`` and the 82 of ``EXTRA_TRAINING.tsv``.

Bring the TSV's repositories first (one destination per repository)::

    ../shared/tools/extract-cases GIT_DIR_OF_BioExp   EXTRA/BioExp
    ../shared/tools/extract-cases GIT_DIR_OF_Brainy   EXTRA/Brainy
    ../shared/tools/extract-cases GIT_DIR_OF_LGG_REPO EXTRA/lgg

then::

    python scripts/default_model_data.py --shared ../shared/data --extra EXTRA/BioExp EXTRA/Brainy EXTRA/lgg \\
        --out DATA
    lightning fit --config configs/default_brats.yaml --data.data_root DATA/brats_default
    lightning fit --config configs/default_lgg.yaml --data.data_root DATA/lgg_default

The folders hold symbolic links to the source files (one real folder per case),
plus the relabelled 2023 segmentation. Nothing is copied into
the repository.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from bts_monai.labels import get_scheme

# BraTS 2023 names -> the 2017-2021 modality they mean.
_2023_TO_LEGACY = {"t2f": "flair", "t1n": "t1", "t1c": "t1ce", "t2w": "t2"}


def _link_case(src: Path, dest_root: Path) -> None:
    dest = dest_root / src.name
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        link = dest / f.name
        if not link.exists():
            os.symlink(f.resolve(), link)


def _convert_2023_case(src: Path, dest_root: Path) -> None:
    """A BraTS 2023 case in 2017-2021 names, its labels mapped through the label schemes."""
    case = src.name
    new_id = f"Brats18_{case}"  # a Brats18_ prefix makes discovery read it as one 2018-style release
    dest = dest_root / new_id
    dest.mkdir(parents=True, exist_ok=True)
    for new, legacy in _2023_TO_LEGACY.items():
        link = dest / f"{new_id}_{legacy}.nii.gz"
        if not link.exists():
            os.symlink((src / f"{case}-{new}.nii.gz").resolve(), link)
    seg_img = nib.load(src / f"{case}-seg.nii.gz")
    seg = np.rint(np.asarray(seg_img.dataobj)).astype(np.int16)  # the 2023 seg is float32
    regions = get_scheme("brats2023").to_regions(seg, str(src))
    legacy = get_scheme("brats2021").from_regions(regions)
    out = nib.Nifti1Image(legacy, seg_img.affine, seg_img.header)
    out.set_data_dtype(np.uint8)
    nib.save(out, dest / f"{new_id}_seg.nii.gz")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, required=True, help="../shared/data")
    ap.add_argument("--extra", type=Path, nargs="+", default=[], help="extract-cases destinations")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    brats, lgg = args.out / "brats_default", args.out / "lgg_default"
    n_brats = n_lgg = 0
    for root in [args.shared / "brats2018", *args.extra]:
        for case in sorted(p for p in root.iterdir() if p.is_dir()):
            if case.name.startswith("Brats18_"):
                _link_case(case, brats)
                n_brats += 1
            elif case.name.startswith("TCGA_"):
                _link_case(case, lgg)
                n_lgg += 1
    for case in sorted((args.shared / "brats2023").glob("BraTS-GLI-*")):
        _convert_2023_case(case, brats)
        n_brats += 1
    for case in sorted((args.shared / "lgg" / "kaggle_3m").glob("TCGA_*")):
        _link_case(case, lgg)
        n_lgg += 1
    print(f"{n_brats} BraTS cases in {brats}, {n_lgg} LGG patients in {lgg}")


if __name__ == "__main__":
    main()
