"""The preprocessed-case cache: settings hash, idempotent crash-safe builds, lazy reads, equivalence."""

from __future__ import annotations

import os
import pickle
import tracemalloc
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from bts_monai.data import cache as cache_mod
from bts_monai.data.cache import (
    CacheSettings,
    PreprocessedCache,
    PreprocessedCase,
    PreprocessedDataset,
    build_cache,
    preprocessed_train_transforms,
    preprocessed_val_transforms,
    to_original_grid,
)
from bts_monai.data.discovery import BRATS_MODALITIES, discover
from bts_monai.data.synthetic import BRATS_LIKE_AFFINE, make_brats_dataset, synthetic_brats_arrays
from bts_monai.data.transforms import train_transforms, val_transforms
from bts_monai.errors import BtsInputError
from bts_monai.labels import get_scheme

warnings.filterwarnings("ignore", message="Num foregrounds 0", category=UserWarning)


def _item(entry: dict, modalities=BRATS_MODALITIES) -> dict:
    return {"image": [entry[m] for m in modalities], "label": entry["label"], "case_id": entry["case_id"]}


@pytest.fixture(scope="module")
def entries(brats21_root: Path) -> list[dict]:
    return discover(brats21_root)[:3]


@pytest.fixture(scope="module")
def built(entries: list[dict], tmp_path_factory: pytest.TempPathFactory) -> PreprocessedCache:
    return build_cache(entries, tmp_path_factory.mktemp("cache"), CacheSettings(), progress=False)


def _assert_same_samples(cached: list[dict], plain: list[dict]) -> None:
    assert len(cached) == len(plain)
    for a, b in zip(cached, plain):
        assert a["image"].shape == b["image"].shape
        assert a["image"].dtype == b["image"].dtype == torch.float32
        assert torch.equal(a["label"], b["label"])
        # float16 storage: relative error below 2^-11, times the intensity jitter (<= 1.1).
        torch.testing.assert_close(a["image"], b["image"], rtol=1.2e-3, atol=1e-3)


# ---- settings ----------------------------------------------------------------------------------
def test_settings_digest_follows_every_setting_and_only_them():
    base = CacheSettings()
    assert CacheSettings(scheme="brats2018").digest == base.digest  # 2017-2021 share one scheme
    assert CacheSettings(modalities=list(BRATS_MODALITIES)).digest == base.digest
    variants = [
        CacheSettings(scheme="brats2023"),
        CacheSettings(modalities=("flair", "t1ce", "t2")),
        CacheSettings(modalities=("t1", "flair", "t1ce", "t2")),
        CacheSettings(label_mode="labels"),
        CacheSettings(intensity="minmax"),
        CacheSettings(spacing=(1.0, 1.0, 1.0)),
    ]
    digests = {v.digest for v in variants}
    assert len(digests) == len(variants) and base.digest not in digests
    with pytest.raises(ValueError, match="modalities"):
        CacheSettings(modalities=("dwi",))
    with pytest.raises(ValueError, match="label_mode"):
        CacheSettings(label_mode="onehot")


# ---- building ----------------------------------------------------------------------------------
def test_build_layout_metadata_and_size(built: PreprocessedCache, entries: list[dict]):
    assert built.case_ids() == sorted(e["case_id"] for e in entries)
    assert (built.root / "settings.json").is_file()
    case = PreprocessedCase(built.case_dir(entries[0]["case_id"]))
    meta = case.meta
    assert meta["settings_digest"] == built.settings.digest
    assert meta["original_shape"] == [48, 48, 40] and meta["orientation"] == "RAS"
    assert meta["target"] == {"mode": "regions", "channels": ["TC", "WT", "ET"]}
    assert case.image.dtype == np.float16 and list(case.image.shape) == meta["image_shape"]
    assert case.target.dtype == np.uint8 and tuple(case.target.shape) == case.spatial_shape
    box = np.subtract(meta["foreground_end_coord"], meta["foreground_start_coord"]).tolist()
    assert box == list(case.spatial_shape)
    source = sum(os.path.getsize(e[k]) for e in entries for k in (*BRATS_MODALITIES, "label"))
    assert built.disk_bytes() < 2 * source


def test_build_is_idempotent_and_rebuilds_only_changed_sources(tmp_path: Path):
    root = make_brats_dataset(tmp_path / "data", n_cases=2, shape=(32, 32, 24))
    entries = discover(root)
    cache = PreprocessedCache(tmp_path / "cache")
    first = cache.build(entries, progress=False)
    assert len(first.built) == 2 and not first.reused
    stamp = (cache.case_dir(entries[1]["case_id"]) / "image.b2nd").stat().st_mtime_ns
    again = cache.build(entries, progress=False)
    assert not again.built and len(again.reused) == 2
    # A new version of one case's FLAIR (another size): only that case is preprocessed again.
    images, _ = synthetic_brats_arrays((32, 32, 24), seed=99)
    nib.save(nib.Nifti1Image(images["flair"] * 2, BRATS_LIKE_AFFINE), entries[0]["flair"])
    third = cache.build(entries, progress=False)
    assert third.built == [entries[0]["case_id"]] and third.reused == [entries[1]["case_id"]]
    assert (cache.case_dir(entries[1]["case_id"]) / "image.b2nd").stat().st_mtime_ns == stamp
    # Other settings live in their own folder; the first cache stays.
    other = PreprocessedCache(tmp_path / "cache", CacheSettings(label_mode="labels"))
    assert other.root != cache.root and len(other.build(entries, progress=False).built) == 2
    assert len(cache.case_ids()) == 2


def test_crash_half_way_leaves_no_partial_case(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = make_brats_dataset(tmp_path / "data", n_cases=2, shape=(32, 32, 24))
    entries = discover(root)
    cache = PreprocessedCache(tmp_path / "cache")
    real_write = cache_mod._write_array
    calls = {"n": 0}

    def dying_write(arr, path, channel_first):
        calls["n"] += 1
        if calls["n"] == 4:  # the second case's target, after its image; the first case is complete
            raise KeyboardInterrupt
        real_write(arr, path, channel_first)

    monkeypatch.setattr(cache_mod, "_write_array", dying_write)
    with pytest.raises(KeyboardInterrupt):
        cache.build(entries, progress=False)
    assert cache.case_ids() == [entries[0]["case_id"]]
    assert not (cache.root / entries[1]["case_id"]).exists()
    # A temporary folder left by a killed process (a pid that cannot be alive) is cleaned up.
    stale = cache.root / ".tmp-999999999-deadbeef-X"
    stale.mkdir()
    monkeypatch.setattr(cache_mod, "_write_array", real_write)
    summary = cache.build(entries, progress=False)
    assert summary.built == [entries[1]["case_id"]] and summary.reused == [entries[0]["case_id"]]
    assert not stale.exists() and not list(cache.root.glob(".tmp-*"))


def test_parallel_build_matches_serial(entries: list[dict], built: PreprocessedCache, tmp_path: Path):
    par = build_cache(entries, tmp_path, CacheSettings(), workers=2, progress=False)
    assert par.case_ids() == built.case_ids()
    for cid in par.case_ids():
        a, b = PreprocessedCase(par.case_dir(cid)), PreprocessedCase(built.case_dir(cid))
        assert np.array_equal(a.read_image(), b.read_image())
        assert np.array_equal(a.read_target(), b.read_target())


def test_bad_cases_raise_input_errors_naming_the_file(tmp_path: Path):
    root = make_brats_dataset(tmp_path / "data", n_cases=2, shape=(32, 32, 24))
    entries = discover(root)
    seg = nib.load(entries[0]["label"])
    bad = np.asarray(seg.dataobj).copy()
    bad[0, 0, 0] = 3  # not a BraTS 2017-2021 label value
    nib.save(nib.Nifti1Image(bad, seg.affine), entries[0]["label"])
    Path(entries[1]["t1"]).write_bytes(b"not a nifti file at all")
    cache = PreprocessedCache(tmp_path / "cache")
    with pytest.raises(BtsInputError, match="unexpected: \\[3\\]") as info:
        cache.build(entries[:1], progress=False)
    assert info.value.path == entries[0]["label"]
    with pytest.raises(BtsInputError, match=f"cannot preprocess case {entries[1]['case_id']}") as info:
        cache.build(entries[1:], workers=2, progress=False)
    assert entries[1]["case_id"] in info.value.path
    with pytest.raises(BtsInputError, match="duplicate"):
        cache.build([entries[0], entries[0]], progress=False)
    assert cache.case_ids() == []


# ---- reading -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("label_mode", "roi", "spatial_dims"),
    [
        ("regions", (32, 32, 32), 3),
        ("regions", (42, 24, 40), 3),  # padded on one side only in the first axis, on both in the last
        ("labels", (32, 32, 32), 3),
        ("regions", (40, 40), 2),
    ],
)
def test_train_sample_equals_uncached_sample(
    entries: list[dict], tmp_path_factory: pytest.TempPathFactory, label_mode: str, roi: tuple, spatial_dims: int
):
    settings = CacheSettings(label_mode=label_mode)
    cache = build_cache(entries, tmp_path_factory.mktemp("eq"), settings, progress=False)
    cached_t = preprocessed_train_transforms(roi, spatial_dims=spatial_dims, num_samples=3)
    plain_t = train_transforms("brats2021", roi, spatial_dims=spatial_dims, label_mode=label_mode, num_samples=3)
    ds = PreprocessedDataset(cache, [e["case_id"] for e in entries], cached_t)
    for i, entry in enumerate(entries):
        for seed in (0, 7):
            cached_t.set_random_state(seed=seed)
            plain_t.transforms[1].set_random_state(seed=seed)  # the random part of the uncached chain
            _assert_same_samples(ds[i], plain_t(_item(entry)))


def test_case_without_tumour_samples_like_monai(tmp_path: Path):
    images, label = synthetic_brats_arrays((32, 32, 24), seed=3, tumour=False)
    case_dir = tmp_path / "data" / "BraTS2021_09999"
    case_dir.mkdir(parents=True)
    for name, vol in {**images, "seg": label}.items():
        nib.save(nib.Nifti1Image(vol, BRATS_LIKE_AFFINE), case_dir / f"BraTS2021_09999_{name}.nii.gz")
    entries = discover(tmp_path / "data")
    cache = build_cache(entries, tmp_path / "cache", progress=False)
    assert cache.meta("BraTS2021_09999")["num_foreground"] == 0
    cached_t = preprocessed_train_transforms((16, 16, 16), num_samples=2).set_random_state(seed=1)
    plain_t = train_transforms("brats2021", (16, 16, 16), num_samples=2)
    plain_t.transforms[1].set_random_state(seed=1)
    _assert_same_samples(PreprocessedDataset(cache, None, cached_t)[0], plain_t(_item(entries[0])))


def test_val_sample_equals_uncached_and_maps_back_to_the_original_grid(built: PreprocessedCache, entries: list[dict]):
    entry = entries[1]
    cached = PreprocessedDataset(built, [entry["case_id"]], preprocessed_val_transforms())[0]
    plain = val_transforms("brats2021")(_item(entry))
    assert torch.equal(cached["label"], plain["label"].as_tensor())
    torch.testing.assert_close(cached["image"].as_tensor(), plain["image"].as_tensor(), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(cached["image"].affine, plain["image"].affine)
    assert list(cached["foreground_start_coord"]) == list(plain["foreground_start_coord"])
    # The stored metadata suffice to put a prediction back on the source file's voxels.
    back = to_original_grid(cached["label"], built.meta(entry["case_id"]))
    seg = np.asarray(nib.load(entry["label"]).dataobj)
    assert np.array_equal(back.astype(bool), get_scheme("brats2021").to_regions(seg))


def test_reads_lazily_and_holds_no_arrays(tmp_path: Path):
    root = make_brats_dataset(tmp_path / "data", n_cases=1, shape=(96, 96, 80))
    cache = build_cache(discover(root), tmp_path / "cache", progress=False)
    ds = PreprocessedDataset(cache, None, preprocessed_train_transforms((16, 16, 16), augment=False))
    assert len(pickle.dumps(ds)) < 20_000  # folder names and transforms, no voxels
    ds[0]
    tracemalloc.start()
    ds[0]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    whole = np.prod(cache.meta(cache.case_ids()[0])["image_shape"]) * 2
    assert peak < whole / 4, f"reading one 16^3 patch allocated {peak} bytes; the whole image is {whole}"


def test_complement_indexes_like_the_materialised_complement():
    rng = np.random.default_rng(0)
    n = 500
    excluded = np.sort(rng.choice(n, size=120, replace=False))
    expected = np.setdiff1d(np.arange(n), excluded)
    comp = cache_mod._Complement(excluded, n)
    assert len(comp) == len(expected)
    assert [comp[k] for k in range(len(comp))] == expected.tolist()
    with pytest.raises(IndexError):
        comp[len(comp)]


def test_dataset_refuses_cases_not_in_the_cache(built: PreprocessedCache):
    with pytest.raises(BtsInputError, match="not preprocessed"):
        PreprocessedDataset(built, ["BraTS2021_12345"])


def test_datamodule_trains_from_the_preprocessed_cache(brats21_root: Path, tmp_path: Path):
    from bts_monai.data.datamodule import BratsDataModule

    dm = BratsDataModule(
        data_root=str(brats21_root),
        roi_size=[16, 16, 16],
        num_samples=2,
        batch_size=2,
        val_fraction=0.25,
        split_file=str(tmp_path / "split.json"),
        cache="preprocessed",
        cache_dir=str(tmp_path / "cache"),
        num_workers=0,
    )
    dm.prepare_data()
    cache_root = next((tmp_path / "cache").iterdir())
    assert len(PreprocessedCache(tmp_path / "cache").case_ids()) == 4 and cache_root.is_dir()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 4, 16, 16, 16) and batch["label"].shape == (4, 3, 16, 16, 16)
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape[:2] == (1, 4) and val["label"].shape[1] == 3
    assert val["image"].dtype == torch.float32


def test_datamodule_refuses_lgg_for_the_preprocessed_cache(lgg_root: Path, tmp_path: Path):
    from bts_monai.data.datamodule import BratsDataModule

    dm = BratsDataModule(
        data_root=str(lgg_root),
        dataset="lgg",
        spatial_dims=2,
        split_file=str(tmp_path / "split.json"),
        cache="preprocessed",
        cache_dir=str(tmp_path / "cache"),
        num_workers=0,
    )
    with pytest.raises(ValueError, match="LGG"):
        dm.prepare_data()


@pytest.mark.real_data
@pytest.mark.slow
def test_real_case_equivalence_and_size(real_data: Path, tmp_path: Path):
    entries = [e for e in discover(real_data / "brats2018") if e["case_id"] == "Brats18_CBICA_AME_1"]
    # The cache reads the shared files in place and writes only under tmp_path.
    cache = build_cache(entries, tmp_path / "cache", progress=False)
    case = PreprocessedCase(cache.case_dir(entries[0]["case_id"]))
    assert case.meta["original_shape"] == [240, 240, 155]
    src_bytes = sum(os.path.getsize(entries[0][k]) for k in (*BRATS_MODALITIES, "label"))
    assert cache.disk_bytes() < 2 * src_bytes
    cached_t = preprocessed_train_transforms((128, 128, 128), num_samples=2).set_random_state(seed=5)
    plain_t = train_transforms("brats2018", (128, 128, 128), num_samples=2)
    plain_t.transforms[1].set_random_state(seed=5)
    _assert_same_samples(PreprocessedDataset(cache, None, cached_t)[0], plain_t(_item(entries[0])))
