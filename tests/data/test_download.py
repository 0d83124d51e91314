"""bts_monai.data.download and bts-download against a local fake of the Kaggle API (never the network)."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

# Imported at collection so kagglehub's stdout log handler binds to pytest's session-long stream.
pytest.importorskip("kagglehub")

from bts_monai.cli.download import main  # noqa: E402
from bts_monai.data import download as dl  # noqa: E402
from bts_monai.data.download import (  # noqa: E402
    DATALIST_NAME,
    DATASETS,
    MARKER_NAME,
    DownloadError,
    download_dataset,
    find_kaggle_credentials,
)
from bts_monai.errors import BtsInputError  # noqa: E402

try:  # tests/ as a package, or (pytest's default "prepend" import mode) tests/data on sys.path
    from .kaggle_fake_server import (
        FakeDataset,
        FakeKaggle,
        brats2020_members,
        brats2021_members,
        lgg_members,
        zip_bytes,
    )
except ImportError:
    from kaggle_fake_server import (  # type: ignore[no-redef]
        FakeDataset,
        FakeKaggle,
        brats2020_members,
        brats2021_members,
        lgg_members,
        zip_bytes,
    )

CREDENTIAL_VARS = ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR", "KAGGLE_API_V1_TOKEN")
SMALL = {
    "brats2020": {"training": 3, "validation": 2},
    "brats2021": {"cases": 3},
    "lgg": {"patients": 2, "slices": 6},
}


@pytest.fixture(scope="module")
def archives() -> dict[str, bytes]:
    """Each dataset's zip bundle, built once: tiny cases in the Kaggle copies' exact layouts."""
    return {
        "brats2020": zip_bytes(brats2020_members()),
        "brats2021": zip_bytes(brats2021_members()),
        "lgg": zip_bytes(lgg_members()),
    }


@pytest.fixture
def kaggle(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, archives: dict[str, bytes]):
    """A fake Kaggle serving the three archives, kagglehub pointed at it, a test token, HOME in tmp."""
    fake = FakeKaggle(datasets={DATASETS[n].handle: FakeDataset(a, version=4) for n, a in archives.items()})
    fake.start()
    fake.configure(monkeypatch)
    for var in CREDENTIAL_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub-cache"))
    monkeypatch.setenv("KAGGLE_API_TOKEN", "test-token")
    yield fake
    fake.stop()


def _tree(path: Path, skip: Path | None = None) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*") if skip is None or skip not in (p, *p.parents)}


def _serve(kaggle: FakeKaggle, name: str, archive: bytes) -> None:
    kaggle.datasets[DATASETS[name].handle] = FakeDataset(archive, version=4)


def _assert_not_complete(dest: Path, name: str) -> None:
    """No dataset folder and no marker anywhere: nothing looks finished."""
    assert not (dest / name).exists()
    assert not list(dest.rglob(MARKER_NAME))


# -- the three datasets -----------------------------------------------------------------------


def _check_brats2020(root: Path) -> None:
    case = root / "BraTS2020_TrainingData/MICCAI_BraTS2020_TrainingData/BraTS20_Training_355"
    assert (case / "BraTS20_Training_355_seg.nii").is_file()
    assert not (case / "W39_1998.09.19_Segm.nii").exists()
    val = root / "BraTS2020_ValidationData/MICCAI_BraTS2020_ValidationData/BraTS20_Validation_002"
    assert sorted(p.name for p in val.iterdir()) == [
        f"BraTS20_Validation_002_{m}.nii" for m in ("flair", "t1", "t1ce", "t2")
    ]


def _check_brats2021(root: Path) -> None:
    assert sorted(p.name for p in root.glob("BraTS2021_*")) == ["BraTS2021_00000", "BraTS2021_00495", "BraTS2021_00621"]
    assert not list(root.rglob("*.tar"))
    assert len(list(root.rglob("*.nii.gz"))) == 15  # the loose tars' duplicates were left out


def _check_lgg(root: Path) -> None:
    assert (root / "kaggle_3m/data.csv").is_file() and (root / "kaggle_3m/README.md").is_file()
    assert not (root / "lgg-mri-segmentation").exists()
    assert len(list(root.rglob("*_mask.tif"))) == 6


@pytest.mark.parametrize(
    ("name", "check", "n_labelled", "n_test"),
    [("brats2020", _check_brats2020, 3, 2), ("brats2021", _check_brats2021, 3, 0), ("lgg", _check_lgg, 2, 0)],
)
def test_download_extract_fix_up_check_and_rerun_does_no_work(
    kaggle: FakeKaggle,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    check: Callable[[Path], None],
    n_labelled: int,
    n_test: int,
) -> None:
    dest = tmp_path / "dest"
    root = download_dataset(name, dest, expected=SMALL[name])
    assert root == dest / name
    check(root)
    marker = json.loads((root / MARKER_NAME).read_text())
    assert marker["handle"] == DATASETS[name].handle and marker["version"] == 4
    assert marker["counts"] == SMALL[name]
    assert sorted(p.name for p in dest.iterdir()) == [name]  # work folder and lock file cleaned up
    assert [r["path"].rsplit("/", 1)[-1] for r in kaggle.requests] == ["GetDataset", "DownloadDataset", "archive.zip"]
    assert all(r["auth"] == "Bearer test-token" for r in kaggle.requests)

    datalist = json.loads((root / DATALIST_NAME).read_text())
    assert datalist["root"] == str(root.resolve())
    assert len(datalist["training"]) + len(datalist["validation"]) == n_labelled
    assert len(datalist["test"]) == n_test
    first = datalist["training"][0]
    some_path = first["slices"][0]["image"] if "slices" in first else first["flair"]
    assert (root / some_path).is_file()  # paths are relative to the datalist's folder

    # Again, offline and without credentials: nothing fetched, nothing rewritten.
    before = (root / MARKER_NAME).stat().st_mtime_ns
    n_requests = len(kaggle.requests)
    kaggle.stop()
    monkeypatch.delenv("KAGGLE_API_TOKEN")
    assert download_dataset(name, dest, expected=SMALL[name]) == root
    assert len(kaggle.requests) == n_requests
    assert (root / MARKER_NAME).stat().st_mtime_ns == before


def test_cli_downloads_and_prints_the_root(kaggle: FakeKaggle, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(DATASETS, "lgg", _with_expected(DATASETS["lgg"], SMALL["lgg"]))
    assert main(["lgg", "--dest", str(tmp_path / "d"), "--no-datalist"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(tmp_path / "d" / "lgg")
    assert not (tmp_path / "d" / "lgg" / DATALIST_NAME).exists()


def _with_expected(spec: dl.DatasetSpec, expected: dict[str, int]) -> dl.DatasetSpec:
    from dataclasses import replace

    return replace(spec, expected=expected)


# -- unsafe archives --------------------------------------------------------------------------


def _zip_with_entry(base: list[tuple[str, bytes]], name: str, data: bytes, mode: int = 0) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n, d in base:
            zf.writestr(n, d)
        info = zipfile.ZipInfo(name)
        if mode:
            info.create_system = 3
            info.external_attr = mode << 16
        zf.writestr(info, data)
    return buf.getvalue()


def _tar_with_entry(kind: bytes, name: str, linkname: str = "", data: bytes = b"") -> bytes:
    """A training tar holding one harmless file, then the given entry."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        ok = tarfile.TarInfo("BraTS2021_00000/BraTS2021_00000_t1.nii.gz")
        ok.size = 1
        tf.addfile(ok, io.BytesIO(b"x"))
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.size = kind, linkname, len(data)
        tf.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


UNSAFE = {
    "zip ../ member": ("lgg", lambda out: _zip_with_entry(lgg_members(), "../outside/evil.txt", b"pwned")),
    "zip absolute path": ("lgg", lambda out: _zip_with_entry(lgg_members(), str(out / "abs.txt"), b"pwned")),
    "zip symlink out": (
        "lgg",
        lambda out: _zip_with_entry(lgg_members(), "kaggle_3m/link", b"../../outside", stat.S_IFLNK | 0o777),
    ),
    "zip device file": ("lgg", lambda out: _zip_with_entry(lgg_members(), "kaggle_3m/dev", b"", stat.S_IFCHR | 0o600)),
    "tar ../ member": ("brats2021", lambda out: _tar_with_entry(tarfile.REGTYPE, "../outside/evil.txt", data=b"x")),
    "tar absolute path": ("brats2021", lambda out: _tar_with_entry(tarfile.REGTYPE, str(out / "abs"), data=b"x")),
    "tar symlink out": (
        "brats2021",
        lambda out: _tar_with_entry(tarfile.SYMTYPE, "BraTS2021_00000/l", "../../../outside"),
    ),
    "tar hardlink": ("brats2021", lambda out: _tar_with_entry(tarfile.LNKTYPE, "BraTS2021_00000/h", "/etc/passwd")),
    "tar device": ("brats2021", lambda out: _tar_with_entry(tarfile.CHRTYPE, "BraTS2021_00000/dev")),
}


@pytest.mark.parametrize("case", list(UNSAFE))
def test_unsafe_archives_are_refused_and_nothing_lands_outside(kaggle: FakeKaggle, tmp_path: Path, case: str) -> None:
    name, build = UNSAFE[case]
    outside = tmp_path / "outside"
    outside.mkdir()
    payload = build(outside)
    if name == "brats2021":  # the evil entry sits inside the training tar, inside the zip
        payload = zip_bytes([("BraTS2021_Training_Data.tar", payload)])
    _serve(kaggle, name, payload)
    dest = tmp_path / "dest"
    before = _tree(tmp_path)
    with pytest.raises(BtsInputError, match="unsafe archive"):
        download_dataset(name, dest, expected=SMALL[name])
    assert _tree(tmp_path, skip=dest) == before  # nothing written outside DEST
    _assert_not_complete(dest, name)
    assert not list(dest.rglob("*.zip"))  # a malicious archive is not kept


# -- credentials ------------------------------------------------------------------------------


def test_missing_credentials_exit_2_with_the_steps(kaggle: FakeKaggle, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("KAGGLE_API_TOKEN")
    assert main(["brats2021", "--dest", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no Kaggle API credentials found")
    for step in (
        "https://www.kaggle.com/settings",
        "~/.kaggle/access_token",
        "KAGGLE_API_TOKEN",
        "kaggle.json",
        "KAGGLE_CONFIG_DIR",
        "chmod 600",
    ):
        assert step in err[0]
    assert kaggle.requests == []  # checked before any call
    assert not (tmp_path / "d" / ".brats2021.lock").exists()  # a failed run leaves no lock file


def test_credentials_are_found_where_kaggle_users_keep_them(tmp_path: Path, monkeypatch) -> None:
    for var in CREDENTIAL_VARS:
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(BtsInputError, match="no Kaggle API credentials"):
        find_kaggle_credentials()

    config = tmp_path / "cfg"
    config.mkdir()
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(config))
    (config / "kaggle.json").write_text("{not json")
    with pytest.raises(BtsInputError, match="kaggle.json: not valid JSON"):
        find_kaggle_credentials()
    (config / "kaggle.json").write_text(json.dumps({"username": "u", "key": "k"}))
    assert find_kaggle_credentials() == str(config / "kaggle.json")

    monkeypatch.setenv("KAGGLE_USERNAME", "u")
    monkeypatch.setenv("KAGGLE_KEY", "k")
    assert "KAGGLE_USERNAME" in find_kaggle_credentials()

    (home / ".kaggle").mkdir(parents=True)
    (home / ".kaggle" / "access_token").write_text("tok\n")
    assert find_kaggle_credentials() == str(home / ".kaggle" / "access_token")

    monkeypatch.setenv("KAGGLE_API_TOKEN", "tok")
    assert "KAGGLE_API_TOKEN" in find_kaggle_credentials()


def test_rejected_credentials_401_exit_2(kaggle: FakeKaggle, tmp_path: Path, capsys) -> None:
    kaggle.api_status = 401
    with pytest.raises(BtsInputError, match="HTTP 401"):
        download_dataset("lgg", tmp_path / "api", expected=SMALL["lgg"])
    assert main(["lgg", "--dest", str(tmp_path / "cli")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "rejected the credentials from the KAGGLE_API_TOKEN environment variable (HTTP 401" in err
    assert "https://www.kaggle.com/settings" in err
    _assert_not_complete(tmp_path / "cli", "lgg")


# -- interruptions and failures ---------------------------------------------------------------


def test_connection_cut_mid_file_then_rerun_resumes(kaggle: FakeKaggle, tmp_path: Path, capsys, monkeypatch) -> None:
    # kagglehub writes 1 MiB chunks: a 3 MiB incompressible member makes the cut leave a partial file.
    padding = ("kaggle_3m/padding.bin", os.urandom(3 << 20))
    _serve(kaggle, "lgg", zip_bytes([*lgg_members(), padding]))
    kaggle.cut_downloads = 1
    dest = tmp_path / "dest"
    with pytest.raises(DownloadError, match="run the same command again to resume"):
        download_dataset("lgg", dest, expected=SMALL["lgg"])
    _assert_not_complete(dest, "lgg")
    (partial,) = dest.glob(".lgg.download/*.zip")
    assert 0 < partial.stat().st_size < len(kaggle.datasets[DATASETS["lgg"].handle].archive)

    # Cut again, seen through the CLI: one line, exit 1. (Resuming opens two GETs: the plain one,
    # left unread since a partial file exists, then the ranged one.)
    kaggle.cut_downloads = 2
    monkeypatch.setitem(DATASETS, "lgg", _with_expected(DATASETS["lgg"], SMALL["lgg"]))
    assert main(["lgg", "--dest", str(dest)]) == 1
    assert "connection to Kaggle lost" in capsys.readouterr().err.strip().splitlines()[-1]

    root = download_dataset("lgg", dest, expected=SMALL["lgg"])
    assert (root / "kaggle_3m/padding.bin").stat().st_size == 3 << 20
    resumed = [r["range"] for r in kaggle.calls("file") if r["range"]]
    assert resumed and not any(r.startswith("bytes=0-") for r in resumed)  # picked up where it stopped


def test_truncated_archive_is_deleted_and_rerun_completes(kaggle: FakeKaggle, tmp_path: Path, archives) -> None:
    _serve(kaggle, "brats2020", archives["brats2020"][: len(archives["brats2020"]) * 2 // 3])
    dest = tmp_path / "dest"
    with pytest.raises(BtsInputError, match="corrupt or truncated archive"):
        download_dataset("brats2020", dest, expected=SMALL["brats2020"])
    _assert_not_complete(dest, "brats2020")
    assert not list(dest.rglob("*.zip"))
    _serve(kaggle, "brats2020", archives["brats2020"])
    assert (download_dataset("brats2020", dest, expected=SMALL["brats2020"]) / MARKER_NAME).is_file()


def test_full_disk_is_a_clear_error_and_nothing_looks_complete(
    kaggle: FakeKaggle, tmp_path: Path, monkeypatch, archives
) -> None:
    real = shutil.disk_usage
    free = len(archives["lgg"]) + 1000  # room for the archive, not for its extraction

    def small_disk(path):
        return real(path)._replace(free=free)

    monkeypatch.setattr(shutil, "disk_usage", small_disk)
    dest = tmp_path / "dest"
    with pytest.raises(BtsInputError, match="not enough free disk space to extract lgg"):
        download_dataset("lgg", dest, expected=SMALL["lgg"])
    _assert_not_complete(dest, "lgg")
    assert list(dest.glob(".lgg.download/*.zip"))  # kept: the next run skips the download
    assert not (dest / ".lgg.download" / "extracted").exists()

    monkeypatch.setattr(shutil, "disk_usage", real)
    assert download_dataset("lgg", dest, expected=SMALL["lgg"]) == dest / "lgg"
    assert not [r for r in kaggle.calls("file") if r["range"]]  # archive was complete: nothing re-fetched


def test_killed_mid_extraction_restarts_cleanly(kaggle: FakeKaggle, tmp_path: Path, monkeypatch) -> None:
    real_copy, calls = dl._copy_member, []

    def dies_on_third(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real_copy(*args)

    monkeypatch.setattr(dl, "_copy_member", dies_on_third)
    dest = tmp_path / "dest"
    with pytest.raises(KeyboardInterrupt):
        download_dataset("lgg", dest, expected=SMALL["lgg"])
    _assert_not_complete(dest, "lgg")
    monkeypatch.setattr(dl, "_copy_member", real_copy)
    # What a SIGKILL would leave: a half extraction, even one holding a marker, in the work folder.
    junk = dest / ".lgg.download" / "extracted" / "kaggle_3m"
    junk.mkdir(parents=True)
    (junk.parent / MARKER_NAME).write_text("{}")
    root = download_dataset("lgg", dest, expected=SMALL["lgg"])
    assert json.loads((root / MARKER_NAME).read_text())["counts"] == SMALL["lgg"]


def test_wrong_counts_fail_and_leave_nothing_complete(kaggle: FakeKaggle, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    with pytest.raises(BtsInputError, match="4 patients expected, 2 found"):
        download_dataset("lgg", dest, expected={"patients": 4})
    _assert_not_complete(dest, "lgg")
    assert download_dataset("lgg", dest, expected={"patients": 2}) == dest / "lgg"


def test_foreign_folder_is_not_overwritten_without_force(kaggle: FakeKaggle, tmp_path: Path) -> None:
    mine = tmp_path / "dest" / "lgg" / "my_notes.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("keep me")
    with pytest.raises(BtsInputError, match="not made by a completed download"):
        download_dataset("lgg", tmp_path / "dest", expected=SMALL["lgg"])
    assert mine.read_text() == "keep me" and kaggle.requests == []
    root = download_dataset("lgg", tmp_path / "dest", expected=SMALL["lgg"], force=True)
    assert not mine.exists() and (root / MARKER_NAME).is_file()
