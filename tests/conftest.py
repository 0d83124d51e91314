"""Shared fixtures: tiny synthetic datasets built once per session, and the real-data path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def brats21_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four synthetic cases in the BraTS 2021 layout (48x48x40, LPS-like affine)."""
    from bts_monai.data.synthetic import make_brats_dataset

    return make_brats_dataset(tmp_path_factory.mktemp("brats21"), n_cases=4, shape=(48, 48, 40))


@pytest.fixture(scope="session")
def lgg_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three synthetic LGG patients of 10 slices of 48x48."""
    from bts_monai.data.synthetic import make_lgg_dataset

    return make_lgg_dataset(tmp_path_factory.mktemp("lgg") / "kaggle_3m", n_patients=3, n_slices=10, size=48)


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real cases under $BTS_REAL_DATA (skips when unset)."""
    root = os.environ.get("BTS_REAL_DATA")
    if not root:
        pytest.skip("BTS_REAL_DATA is not set (the real BraTS/LGG cases live in ../shared/data)")
    path = Path(root)
    if not (path / "brats2018").is_dir():
        pytest.skip(f"BTS_REAL_DATA={root} holds no brats2018 folder")
    return path


@pytest.fixture()
def one_line_error(capsys: pytest.CaptureFixture[str]):
    """A checker of a CLI's refusal: exactly one ``error: ...`` line on stderr (log lines may precede
    it), no traceback, and every needle in it. Returns the line."""

    def check(*needles: str) -> str:
        lines = [ln for ln in capsys.readouterr().err.splitlines() if "Traceback" in ln or ln.startswith("error: ")]
        assert len(lines) == 1 and lines[0].startswith("error: "), lines
        for n in needles:
            assert n in lines[0], lines[0]
        return lines[0]

    return check
