"""Packaged-model folders are checked before they are believed: tampered copies are refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from bts_monai.errors import BtsInputError
from bts_monai.model.packaged import MODELS_DIR, load_model_folder
from bts_monai.model.spec import sha256_file


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    out = tmp_path / "model"
    shutil.copytree(MODELS_DIR / "brats_unet_2mm", out)
    return out


def _meta(folder: Path) -> dict:
    return json.loads((folder / "metadata.json").read_text())


def _write_meta(folder: Path, meta: dict) -> None:
    (folder / "metadata.json").write_text(json.dumps(meta))


def _resave(folder: Path, change) -> None:
    """Rewrite the weights through ``change(state)`` and record their new sha256 (a consistent forgery)."""
    path = folder / "model.safetensors"
    state = load_file(str(path))
    change(state)
    save_file(state, str(path))
    meta = _meta(folder)
    meta["weights"]["sha256"] = sha256_file(path)
    _write_meta(folder, meta)


def _refused(folder: Path, *needles: str) -> str:
    with pytest.raises(BtsInputError) as err:
        load_model_folder(folder)
    msg = str(err.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, msg
    return msg


def test_untouched_copy_loads(folder: Path):
    net, config = load_model_folder(folder)
    assert config["weights_sha256"] == _meta(folder)["weights"]["sha256"]


def test_foreign_class_path_gets_the_allow_list(folder: Path):
    meta = _meta(folder)
    meta["network"]["class_path"] = "evil_package.Net"
    _write_meta(folder, meta)
    _refused(folder, "metadata.json", "evil_package.Net", "outside")


def test_bit_flip_fails_the_sha256(folder: Path):
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x01
    path.write_bytes(bytes(data))
    _refused(folder, "model.safetensors", "SHA-256")


@pytest.mark.parametrize("name", ["../../model.safetensors", "/etc/passwd"])
def test_weights_file_stays_inside_the_folder(folder: Path, name: str):
    meta = _meta(folder)
    meta["weights"]["file"] = name
    _write_meta(folder, meta)
    _refused(folder, "metadata.json", "weights.file")


def test_non_finite_weights(folder: Path):
    def nan(state):
        key = next(k for k, v in state.items() if v.is_floating_point())
        state[key] = state[key].clone()
        state[key].view(-1)[0] = float("nan")

    _resave(folder, nan)
    _refused(folder, "model.safetensors", "NaN")


def test_reshaped_and_missing_tensors(folder: Path):
    key = next(k for k, v in load_file(str(folder / "model.safetensors")).items() if v.ndim > 1)
    _resave(folder, lambda s: s.__setitem__(key, s[key].reshape(-1)))
    _refused(folder, "model.safetensors", key, "shape")
    _resave(folder, lambda s: s.pop(key))
    _refused(folder, "model.safetensors", "lack")


def test_missing_sha256_is_refused(folder: Path):
    meta = _meta(folder)
    del meta["weights"]["sha256"]
    _write_meta(folder, meta)
    _refused(folder, "metadata.json", "sha256")


def test_bts_infer_exit_2_one_line(folder: Path, tmp_path: Path, capsys):
    from bts_monai.cli.infer import main

    meta = _meta(folder)
    meta["network"]["class_path"] = "evil_package.Net"
    _write_meta(folder, meta)
    assert main([str(tmp_path), "--ckpt", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "outside" in err[-1]
