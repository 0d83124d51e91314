"""The packaged default models: inside the wheel, loadable without pickles, metadata consistent."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bts_monai.errors import BtsInputError
from bts_monai.model.packaged import (
    DEFAULT_MODELS,
    MODELS_DIR,
    list_models,
    load_packaged,
    validate_metadata,
)

REPO = Path(__file__).resolve().parents[2]


def test_default_models_are_packaged_and_small():
    names = {m["name"] for m in list_models()}
    assert set(DEFAULT_MODELS.values()) <= names
    for name in DEFAULT_MODELS.values():
        weights = MODELS_DIR / name / "model.safetensors"
        assert weights.stat().st_size <= 15 * 1024 * 1024


@pytest.mark.parametrize("name", sorted(DEFAULT_MODELS.values()))
def test_metadata_complete_and_consistent(name: str):
    meta = json.loads((MODELS_DIR / name / "metadata.json").read_text())
    validate_metadata(meta)
    assert "research only" in meta["intended_use"].lower()
    assert meta["reproduce"]["command"].startswith("lightning fit --config configs/default_")
    assert meta["training_data"]["n_train"] > 0 and meta["training_data"]["n_val"] > 0
    assert not set(meta["training_data"]["train_cases"]) & set(meta["training_data"]["val_cases"])
    assert meta["validation"]["mean_per_region"]
    assert meta["data_license"]
    broken = dict(meta, inference=dict(meta["inference"], modalities=["flair"]))
    with pytest.raises(BtsInputError, match="inputs"):
        validate_metadata(broken)


@pytest.mark.parametrize("name", sorted(DEFAULT_MODELS.values()))
def test_packaged_model_runs(name: str):
    net, config = load_packaged(name)
    dims = config["spatial_dims"]
    x = torch.zeros(1, len(config["modalities"]), *([32] * dims))
    with torch.inference_mode():
        y = net(x)
    assert y.shape[1] == net.out_channels if hasattr(net, "out_channels") else y.shape[1] >= 1
    assert torch.isfinite(y).all()


def test_unknown_model_name():
    with pytest.raises(BtsInputError, match="no packaged model named 'nope'"):
        load_packaged("nope")


@pytest.mark.slow
def test_models_are_inside_the_wheel_and_load_from_it(tmp_path: Path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(REPO),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        check=True,
    )
    (wheel,) = tmp_path.glob("bts_monai-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for model in DEFAULT_MODELS.values():
            for f in ("model.safetensors", "metadata.json"):
                assert f"bts_monai/models/{model}/{f}" in names
        zf.extractall(tmp_path / "unpacked")
    for model in DEFAULT_MODELS.values():
        state = load_file(str(tmp_path / "unpacked" / "bts_monai" / "models" / model / "model.safetensors"))
        assert state and all(v.dtype == torch.float16 for v in state.values())
        packaged = load_packaged(model)[0].state_dict()
        for key, value in state.items():
            np.testing.assert_array_equal(value.float().numpy(), packaged[key].numpy())


def test_a_module_registered_twice_is_stored_once_and_loads_back():
    """MONAI's DynUNet lists each block's weights twice (its nested skip_layers): a packaged model
    stores them once, and loading fills the other names in (strict: nothing missing)."""
    import torch
    from monai.networks.nets import DynUNet

    from bts_monai.model.spec import load_weights, state_aliases, unique_state

    def net() -> DynUNet:
        return DynUNet(
            3, 2, 3, kernel_size=[3, 3, 3], strides=[1, 2, 2], upsample_kernel_size=[2, 2], filters=[4, 8, 16]
        )

    torch.manual_seed(0)
    source, target = net(), net()
    full, once = source.state_dict(), unique_state(source)
    assert state_aliases(source) and len(once) < len(full)
    assert set(once) | set(state_aliases(source)) == set(full)
    load_weights(target, once, None)
    for key, value in full.items():
        assert torch.equal(target.state_dict()[key], value), key
