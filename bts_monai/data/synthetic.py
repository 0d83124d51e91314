"""The embedded default sample: small synthetic BraTS-like cases and LGG-like patients.

Demos and tests need no download: the cases are real files on disk (``.nii.gz`` with a
BraTS-like LPS affine, TIFF slices) in the datasets' own layouts, with nested tumour regions
(enhancing rim around a necrotic core inside oedema) whose intensities differ per modality,
so a network can actually learn them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bts_monai.labels import get_scheme

__all__ = [
    "BRATS_LIKE_AFFINE",
    "synthetic_brats_arrays",
    "make_brats_case",
    "make_brats_dataset",
    "make_lgg_patient",
    "make_lgg_dataset",
    "make_sample",
]

# BraTS stores volumes with a diagonal (-1, -1, 1) affine: LPS-like, so orientation matters.
BRATS_LIKE_AFFINE = np.array(
    [[-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 239.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)

# Mean intensity of (background brain, oedema, core, enhancing) per modality.
_CONTRAST = {
    "flair": (100.0, 260.0, 180.0, 200.0),
    "t1": (300.0, 250.0, 150.0, 280.0),
    "t1ce": (250.0, 240.0, 120.0, 600.0),
    "t2": (200.0, 420.0, 350.0, 300.0),
}


def _ellipsoid(shape: Sequence[int], center: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    r = sum(((g - c) / max(rad, 1e-3)) ** 2 for g, c, rad in zip(grids, center, radii))
    return r <= 1.0


def synthetic_brats_arrays(
    shape: Sequence[int] = (64, 64, 48), seed: int = 0, scheme: str = "brats2021", tumour: bool = True
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Arrays of one synthetic case: ``({modality: int16 volume}, label volume)``.

    The brain is an ellipsoid filling most of the grid (zero outside, like BraTS); the tumour
    is three nested ellipsoids at a seeded random place inside it.
    """
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    sch = get_scheme(scheme)
    # Core label, oedema label, enhancing label, looked up rather than written as numbers.
    (_, wt_only), (_, core), (_, et) = sch.paint_order()[:3]
    brain = _ellipsoid(shape, [s / 2 for s in shape], [s * 0.42 for s in shape])
    label = np.zeros(shape, dtype=np.uint8)
    if tumour:
        center = [s / 2 + rng.uniform(-0.12, 0.12) * s for s in shape]
        r_wt = [s * rng.uniform(0.16, 0.22) for s in shape]
        label[_ellipsoid(shape, center, r_wt) & brain] = wt_only
        label[_ellipsoid(shape, center, [r * 0.6 for r in r_wt]) & brain] = et
        label[_ellipsoid(shape, center, [r * 0.35 for r in r_wt]) & brain] = core
    images = {}
    for m, (bg, ed, nc, en) in _CONTRAST.items():
        vol = np.where(brain, bg, 0.0).astype(np.float32)
        vol[label == wt_only] = ed
        vol[label == core] = nc
        vol[label == et] = en
        vol = vol * rng.uniform(0.8, 1.5)  # institutions scale intensities differently
        vol += rng.normal(0, 12, shape).astype(np.float32) * brain
        images[m] = np.clip(vol, 0, None).astype(np.int16)
    return images, label


def make_brats_case(
    root: str | os.PathLike[str],
    case_id: str,
    shape: Sequence[int] = (64, 64, 48),
    seed: int = 0,
    affine: np.ndarray | None = None,
    compressed: bool = True,
    with_label: bool = True,
    scheme: str = "brats2021",
    label_name: str | None = None,
) -> Path:
    """Write one synthetic case as ``root/<case_id>/<case_id>_{flair,t1,t1ce,t2,seg}.nii[.gz]``.

    Args:
        label_name: file name of the label (default ``<case_id>_seg``), for layout quirks such as
            BraTS 2020's case 355.

    Returns:
        The case folder.
    """
    import nibabel as nib

    images, label = synthetic_brats_arrays(shape, seed, scheme)
    affine = BRATS_LIKE_AFFINE if affine is None else np.asarray(affine, dtype=float)
    ext = ".nii.gz" if compressed else ".nii"
    case_dir = Path(root) / case_id
    case_dir.mkdir(parents=True, exist_ok=True)
    for m, vol in images.items():
        img = nib.Nifti1Image(vol, affine)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        nib.save(img, case_dir / f"{case_id}_{m}{ext}")
    if with_label:
        img = nib.Nifti1Image(label, affine)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        nib.save(img, case_dir / f"{label_name or case_id + '_seg'}{ext}")
    return case_dir


def make_brats_dataset(
    root: str | os.PathLike[str],
    n_cases: int = 6,
    layout: str = "brats2021",
    shape: Sequence[int] = (64, 64, 48),
    seed: int = 0,
) -> Path:
    """Write ``n_cases`` synthetic cases in a release's layout and return the dataset root.

    Layouts: ``brats2021`` (``BraTS2021_XXXXX/...nii.gz``), ``brats2020`` (the Kaggle tree of
    uncompressed ``.nii`` with training and unlabelled validation folders), ``brats2018``.
    """
    root = Path(root)
    for i in range(n_cases):
        if layout == "brats2021":
            make_brats_case(root, f"BraTS2021_{i:05d}", shape, seed + i)
        elif layout == "brats2018":
            make_brats_case(root, f"Brats18_SYN_{i:03d}_1", shape, seed + i)
        elif layout == "brats2020":
            train = root / "BraTS2020_TrainingData" / "MICCAI_BraTS2020_TrainingData"
            make_brats_case(train, f"BraTS20_Training_{i + 1:03d}", shape, seed + i, compressed=False)
        else:
            raise ValueError(f"unknown layout {layout!r}")
    return root


def make_lgg_patient(
    root: str | os.PathLike[str], patient: str, n_slices: int = 12, size: int = 64, seed: int = 0
) -> Path:
    """Write an LGG-like patient folder: RGB uint8 slices ``<patient>_<n>.tif`` and {0,255} masks.

    The lesion (brighter in the FLAIR channel) spans the middle slices; the first and last
    slices have empty masks, as many real ones do.
    """
    import tifffile

    rng = np.random.default_rng(seed)
    pdir = Path(root) / patient
    pdir.mkdir(parents=True, exist_ok=True)
    fg = get_scheme("lgg").foreground_labels[0]
    c = [size / 2 + rng.uniform(-0.15, 0.15) * size for _ in range(2)]
    for n in range(1, n_slices + 1):
        brain = _ellipsoid((size, size), (size / 2, size / 2), (size * 0.4, size * 0.35))
        t = (n - 1) / max(n_slices - 1, 1)
        radius = size * 0.15 * max(0.0, 1 - abs(t - 0.5) * 3)
        lesion = _ellipsoid((size, size), c, (radius, radius * 0.8)) & brain if radius > 1 else np.zeros_like(brain)
        img = np.zeros((size, size, 3), dtype=np.float32)
        img[brain] = (90, 110, 95)
        img[lesion] = (100, 210, 110)
        img += rng.normal(0, 6, img.shape) * brain[..., None]
        tifffile.imwrite(pdir / f"{patient}_{n}.tif", np.clip(img, 0, 255).astype(np.uint8))
        tifffile.imwrite(pdir / f"{patient}_{n}_mask.tif", (lesion * fg).astype(np.uint8))
    return pdir


def make_lgg_dataset(
    root: str | os.PathLike[str], n_patients: int = 4, n_slices: int = 12, size: int = 64, seed: int = 0
) -> Path:
    """Write a ``kaggle_3m``-like folder of ``n_patients`` patients (plus a ``data.csv``)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    ids = [f"TCGA_SY_{1000 + i}_2001010{i % 10}" for i in range(n_patients)]
    for i, pid in enumerate(ids):
        make_lgg_patient(root, pid, n_slices, size, seed + i)
    (root / "data.csv").write_text("Patient,death01\n" + "".join(f"{p[:12]},0\n" for p in ids))
    return root


def make_sample(root: str | os.PathLike[str], n_brats: int = 6, n_lgg: int = 4, seed: int = 0) -> dict[str, Path]:
    """The embedded default sample: a BraTS 2021-layout tree and an LGG tree under ``root``."""
    root = Path(root)
    return {
        "brats": make_brats_dataset(root / "brats2021", n_brats, "brats2021", seed=seed),
        "lgg": make_lgg_dataset(root / "kaggle_3m", n_lgg, seed=seed),
    }
