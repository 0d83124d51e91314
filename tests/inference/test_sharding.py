"""Batch inference over a cluster: ``--num-parts``/``--part-id`` shares and ``--skip-existing``."""

from __future__ import annotations

import csv
import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from bts_monai.cli.infer import main
from bts_monai.data.synthetic import make_brats_case
from bts_monai.errors import BtsInputError
from bts_monai.inference.sharding import check_part, output_complete, part_path, select_part

N_CASES = 5
FAST = ["--backend", "torch", "-q"]


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("release")
    # Written out of order: the share follows the sorted case ids, not the folder's listing.
    for i in (3, 0, 4, 1, 2):
        make_brats_case(root / ("b" if i % 2 else "a"), f"BraTS2021_{i:05d}", shape=(24, 24, 20), seed=i)
    return root


def _ids(out: Path) -> list[str]:
    return sorted(p.name[: -len("_seg.nii.gz")] for p in out.glob("*_seg.nii.gz"))


# ---- the share --------------------------------------------------------------------------------
@pytest.mark.parametrize("num_parts", [1, 2, 3, 4, 7])
def test_parts_cover_every_case_exactly_once(num_parts: int):
    names = [f"case{i:02d}" for i in (5, 1, 9, 0, 3, 8, 2, 7, 6, 4)] + ["case03"]  # one id twice
    parts = [select_part(names, num_parts, k, key=str) for k in range(num_parts)]
    assert sorted(n for p in parts for n in p) == sorted(names)  # every input once, none twice
    assert [select_part(names, num_parts, k, key=str) for k in range(num_parts)] == parts  # deterministic
    ordered = sorted(set(names))
    for k, part in enumerate(parts):
        assert set(part) == set(ordered[k::num_parts])  # round-robin over the sorted ids
        assert part == [n for n in names if n in part]  # in the given order
    assert [p.count("case03") for p in parts].count(2) == 1  # one id's inputs stay together


@pytest.mark.parametrize(("num_parts", "part_id"), [(0, 0), (-2, 0), (2, 2), (3, -1), (1, 1), (2.0, 0)])
def test_bad_shares_are_refused(num_parts, part_id):
    with pytest.raises(BtsInputError, match="--num-parts|--part-id"):
        check_part(num_parts, part_id)


def test_cli_parts_write_every_case_once(cases: Path, tiny_ckpt: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    seen: list[str] = []
    for k in range(2):
        before = set(_ids(out)) if out.exists() else set()
        argv = [str(cases), "--ckpt", str(tiny_ckpt), "-o", str(out), "--num-parts", "2", "--part-id", str(k)]
        assert main([*argv, "--report", str(tmp_path / "volumes.csv"), *FAST]) == 0
        seen += sorted(set(_ids(out)) - before)
    ids = [f"BraTS2021_{i:05d}" for i in range(N_CASES)]
    assert sorted(seen) == ids and len(seen) == N_CASES
    # Part 0 took ids 0, 2, 4 of the sorted list, part 1 ids 1 and 3; each part has its own report.
    for k, want in ((0, ids[0::2]), (1, ids[1::2])):
        with open(tmp_path / f"volumes.part{k}of2.csv", newline="") as fh:
            assert sorted({row["case_id"] for row in csv.DictReader(fh)}) == want
    assert not (tmp_path / "volumes.csv").exists()
    assert "report: " + str(tmp_path / "volumes.part1of2.csv") in capsys.readouterr().out


def test_a_part_with_no_case_is_not_an_error(cases: Path, tiny_ckpt: Path, tmp_path: Path):
    argv = [str(cases / "a" / "BraTS2021_00000"), "--ckpt", str(tiny_ckpt), "-o", str(tmp_path / "o.nii.gz")]
    assert main([*argv, "--num-parts", "3", "--part-id", "2", *FAST]) == 0
    assert not (tmp_path / "o.nii.gz").exists()
    assert main([*argv, "--num-parts", "3", "--part-id", "0", *FAST]) == 0
    assert (tmp_path / "o.nii.gz").exists()


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--num-parts", "0"], "--num-parts"),
        (["--num-parts", "-1"], "--num-parts"),
        (["--num-parts", "3", "--part-id", "3"], "--part-id"),
        (["--num-parts", "2", "--part-id", "-1"], "--part-id"),
        (["--part-id", "1"], "--part-id"),
    ],
)
def test_cli_refuses_bad_shares_with_one_line(flags, needle, cases: Path, tmp_path: Path, one_line_error):
    assert main([str(cases), "-o", str(tmp_path / "out"), *flags, *FAST]) == 2
    one_line_error(needle)
    assert not (tmp_path / "out").exists()


# ---- skipping what is done ----------------------------------------------------------------------
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_output_complete_reads_every_file_back(tmp_path: Path):
    seg = tmp_path / "x_seg.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(24 * 24 * 20, dtype=np.uint8).reshape(24, 24, 20), np.eye(4)), seg)
    png = tmp_path / "x_overlay.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(png)
    raw = tmp_path / "x_seg.nii"
    nib.save(nib.load(seg), raw)
    for p in (seg, png, raw):
        assert output_complete(p)
        _truncate(p)
        assert not output_complete(p), p
    gzip_only_header = tmp_path / "y_seg.nii.gz"
    gzip_only_header.write_bytes(gzip.compress(b"\0" * 10))
    assert not output_complete(gzip_only_header)
    assert not output_complete(tmp_path / "missing_seg.nii.gz")


def test_skip_existing_skips_complete_cases_and_redoes_a_truncated_one(cases: Path, tiny_ckpt: Path, tmp_path: Path):
    out, overlays = tmp_path / "out", tmp_path / "overlays"
    argv = [str(cases), "--ckpt", str(tiny_ckpt), "-o", str(out), "--overlay", str(overlays), *FAST]
    assert main(argv) == 0
    segs = sorted(out.glob("*_seg.nii.gz"))
    assert len(segs) == N_CASES
    reference = {p.name: np.asarray(nib.load(p).dataobj) for p in segs}
    _truncate(segs[1])
    (overlays / segs[3].name.replace("_seg.nii.gz", "_overlay.png")).unlink()  # half a case's outputs
    stamps = {p.name: p.stat().st_mtime_ns for p in segs}
    past = {name: t - 10**9 for name, t in stamps.items()}
    for p in segs:  # backdated, so a rewrite shows even on a coarse clock
        os.utime(p, ns=(past[p.name], past[p.name]))
    # Without --skip-existing (or --overwrite) existing outputs are refused, as always.
    assert main(argv) == 2
    assert main([*argv, "--skip-existing", "--report", str(tmp_path / "r.csv")]) == 0
    redone = sorted(p.name for p in segs if p.stat().st_mtime_ns != past[p.name])
    assert redone == sorted([segs[1].name, segs[3].name])
    for p in segs:
        assert output_complete(p)
        np.testing.assert_array_equal(np.asarray(nib.load(p).dataobj), reference[p.name])
    assert (overlays / segs[3].name.replace("_seg.nii.gz", "_overlay.png")).is_file()
    # The report still covers every case: the skipped ones counted from their segmentations.
    with open(tmp_path / "r.csv", newline="") as fh:
        assert len({row["case_id"] for row in csv.DictReader(fh)}) == N_CASES


def test_skip_existing_one_case(cases: Path, tiny_ckpt: Path, tmp_path: Path, capsys):
    seg = tmp_path / "one.nii.gz"
    argv = [str(cases / "b" / "BraTS2021_00001"), "--ckpt", str(tiny_ckpt), "-o", str(seg), *FAST]
    assert main([*argv, "--skip-existing"]) == 0
    stamp = seg.stat().st_mtime_ns
    capsys.readouterr()
    assert main([*argv, "--skip-existing"]) == 0
    assert "skipped" in capsys.readouterr().out and seg.stat().st_mtime_ns == stamp
    _truncate(seg)
    assert main([*argv, "--skip-existing"]) == 0
    assert output_complete(seg)


@pytest.mark.parametrize("change", ["affine", "shape"])
def test_skip_existing_redoes_a_segmentation_of_another_grid(cases: Path, tiny_ckpt: Path, tmp_path: Path, change):
    """A complete file under the case's name but on another grid (another scan's, a resampled
    copy) is not the case's output: the case runs again and the file is replaced."""
    seg = tmp_path / "one.nii.gz"
    argv = [str(cases / "b" / "BraTS2021_00001"), "--ckpt", str(tiny_ckpt), "-o", str(seg), *FAST]
    assert main(argv) == 0
    good = nib.load(seg)
    data, affine = np.asarray(good.dataobj), good.affine.copy()
    if change == "affine":
        affine[0, 3] += 1.0  # one voxel over: same shape, another place
    else:
        data = data[:, :, :-1]
    nib.save(nib.Nifti1Image(data, affine), str(seg))
    assert output_complete(seg)
    assert main([*argv, "--skip-existing"]) == 0
    redone = nib.load(seg)
    assert redone.shape == good.shape and np.array_equal(redone.affine, good.affine)
    np.testing.assert_array_equal(np.asarray(redone.dataobj), np.asarray(good.dataobj))


def test_part_path():
    assert part_path("r/volumes.csv", 1, 0) == Path("r/volumes.csv")
    assert part_path("r/volumes.csv", 4, 3) == Path("r/volumes.part3of4.csv")
