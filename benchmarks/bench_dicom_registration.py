"""DICOM registration: speed and accuracy of ``bts-infer --register`` (SimpleITK rigid, Mattes MI)
on real BraTS cases with a known misalignment.

Each case's FLAIR, T1 and T2 are moved by a known rigid motion (a few degrees and millimetres, as
patients move between sequences) and resampled on their own grid; ``register_rigid`` aligns each
onto the T1ce. Accuracy: how far the found transform puts each brain voxel from where the true
motion puts it (mean and max over the brain, mm), against how far the motion moved it. Speed:
seconds per registration, and as a ratio to the baseline measured in the same run: resampling the
same series with the known transform (what --register costs at least).

    BTS_REAL_DATA=/work/shared/data .venv/bin/python benchmarks/bench_dicom_registration.py [--cases N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _env import describe  # noqa: E402

from bts_monai.inference.registration import register_rigid, to_sitk  # noqa: E402

MOTIONS = {  # degrees about x, y, z (about the brain's centre), then mm along x, y, z (RAS)
    "flair": ((4.0, -3.0, 5.0), (5.0, -4.0, 3.0)),
    "t1": ((-6.0, 2.0, 3.0), (-3.0, 6.0, -2.0)),
    "t2": ((2.0, 5.0, -4.0), (7.0, 2.0, 4.0)),
}


def rigid(degrees, shift, centre) -> np.ndarray:
    """A 4x4 rotation about ``centre`` (``Rz @ Ry @ Rx``) followed by a shift."""
    ax, ay, az = np.radians(degrees)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    out = np.eye(4)
    out[:3, :3] = rz @ ry @ rx
    out[:3, 3] = centre - out[:3, :3] @ centre + np.asarray(shift)
    return out


def moved(volume: np.ndarray, affine: np.ndarray, motion: np.ndarray) -> np.ndarray:
    """What the scanner's grid shows after the patient moved by ``motion``."""
    m = np.linalg.inv(affine) @ np.linalg.inv(motion) @ affine
    ijk = np.indices(volume.shape).reshape(3, -1)
    out = ndimage.map_coordinates(volume, m[:3, :3] @ ijk + m[:3, 3:4], order=1, cval=0.0)
    return np.rint(out).reshape(volume.shape).astype(np.float32)


def resample_baseline(fixed: np.ndarray, moving: np.ndarray, affine: np.ndarray, motion: np.ndarray) -> float:
    """Seconds to resample ``moving`` onto ``fixed`` with the known transform (SimpleITK, linear)."""
    import SimpleITK as sitk

    start = time.perf_counter()
    f, m = to_sitk(fixed, affine), to_sitk(moving, affine)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    lps = flip @ motion @ flip  # reference point -> moving point, in ITK's LPS
    t = sitk.AffineTransform(3)
    t.SetMatrix(lps[:3, :3].ravel().tolist())
    t.SetTranslation(lps[:3, 3].tolist())
    sitk.GetArrayFromImage(sitk.Resample(m, f, t, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=3, help="how many BraTS 2018 cases (default 3)")
    p.add_argument(
        "--levels-mm", default="8,4,2", help="voxel sizes (mm) of the resolution levels (default 8,4,2: LEVELS_MM)"
    )
    args = p.parse_args()
    levels = tuple(float(n) for n in args.levels_mm.split(","))
    root = Path(os.environ.get("BTS_REAL_DATA", "../shared/data")) / "brats2018"
    cases = sorted(d for d in root.iterdir() if d.is_dir())[: args.cases]
    print(describe())
    import SimpleITK as sitk

    print(f"SimpleITK {sitk.Version_VersionString()}, {sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()} threads; "
          f"load average {os.getloadavg()[0]:.1f}; levels {levels} mm")
    head = ("case".ljust(22), "seq".ljust(5), "moved mm", "error mean", "error max", "s".rjust(6), "x resample", "it")
    print(" ".join(head))
    rows = []
    for case in cases:
        ref = nib.load(case / f"{case.name}_t1ce.nii.gz")
        fixed = np.asarray(ref.dataobj).astype(np.float32)
        affine = ref.affine
        brain = np.argwhere(fixed > 0)
        points = affine[:3, :3] @ brain.T + affine[:3, 3:4]
        centre = points.mean(axis=1)
        for mod, (deg, shift) in MOTIONS.items():
            motion = rigid(deg, shift, centre)
            vol = np.asarray(nib.load(case / f"{case.name}_{mod}.nii.gz").dataobj).astype(np.float32)
            moving = moved(vol, affine, motion)
            base = resample_baseline(fixed, moving, affine, motion)
            _, rec = register_rigid(fixed, affine, moving, affine, levels_mm=levels)
            found = np.array(rec["matrix_ras"])
            err = np.linalg.norm((found - motion)[:3, :3] @ points + (found - motion)[:3, 3:4], axis=0)
            init = np.linalg.norm((motion - np.eye(4))[:3, :3] @ points + motion[:3, 3:4], axis=0)
            rows.append((init.mean(), err.mean(), err.max(), rec["seconds"], rec["seconds"] / base))
            print(
                f"{case.name:22s} {mod:5s} {init.mean():9.2f} {err.mean():10.3f} {err.max():9.3f} "
                f"{rec['seconds']:6.1f} {rec['seconds'] / base:10.1f} {rec['iterations']}",
                flush=True,
            )
    a = np.array(rows)
    print(
        f"summary over {len(rows)} registrations: moved {a[:, 0].mean():.2f} mm on average; error mean "
        f"{a[:, 1].mean():.3f} mm (median {np.median(a[:, 1]):.3f}, worst case mean {a[:, 1].max():.3f}), max over "
        f"brains {a[:, 2].max():.3f} mm; residual/initial {a[:, 1].mean() / a[:, 0].mean():.3f}; "
        f"{a[:, 3].mean():.1f} s per registration = {a[:, 4].mean():.1f}x a plain resample"
    )


if __name__ == "__main__":
    main()
