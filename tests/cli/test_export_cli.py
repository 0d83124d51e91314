"""``bts-export-model MODEL --onnx [OUT]`` and ``--bundle DIR``: exports, checked; one-line refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from infer_helpers import brats_config, save_tiny_checkpoint

from bts_monai.cli.export import main
from bts_monai.model.spec import sha256_file


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real project checkpoint (the training module's save hook) of a tiny random 3D UNet."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "run.ckpt", brats_config(spacing=[2.0, 2.0, 2.0]))


def _onnx_output(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_onnx_to_a_path_matches_torch(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bts_monai.model.checkpoint import load_checkpoint

    out = tmp_path / "exports" / "tiny.onnx"
    assert main([str(ckpt), "--onnx", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"ONNX export: {out}" in printed and "checked with" in printed
    net, _ = load_checkpoint(ckpt)
    x = np.random.default_rng(0).normal(size=(1, 4, 24, 16, 32)).astype(np.float32)  # not the check's size
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_onnx_output(out, x), want, atol=1e-4)


def test_onnx_into_the_cache_keyed_by_sha256(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BTS_ONNX_CACHE", str(tmp_path / "cache"))
    assert main([str(ckpt), "--onnx"]) == 0
    expected = tmp_path / "cache" / f"{sha256_file(ckpt)}.onnx"
    assert expected.is_file()
    assert str(expected) in capsys.readouterr().out


def test_bundle_of_a_checkpoint(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "bundle"
    assert main([str(ckpt), "--bundle", str(folder)]) == 0
    assert "python -m monai.bundle run --config_file configs/inference.json" in capsys.readouterr().out
    config = json.loads((folder / "configs" / "inference.json").read_text())
    spacing = [t for t in config["preprocessing"]["transforms"] if t["_target_"] == "Spacingd"]
    assert spacing and spacing[0]["pixdim"] == [2.0, 2.0, 2.0]
    assert (folder / "models" / "model.pt").is_file()


def test_bundle_of_the_packaged_model_by_name(tmp_path: Path) -> None:
    folder = tmp_path / "packaged_bundle"
    assert main(["brats_unet_2mm", "--bundle", str(folder)]) == 0
    meta = json.loads((folder / "configs" / "metadata.json").read_text())
    assert meta["name"] == "brats_unet_2mm" and meta["bts_monai"]["weights"]["file"] == "model.safetensors"
    assert set(meta["eval_metrics"]) == {"val_mean_dice_tc", "val_mean_dice_wt", "val_mean_dice_et"}


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["{ckpt}", "NAME", "--onnx"], ["drop NAME"]),
        (["{ckpt}", "--onnx", "{tmp}/model.txt"], ["must end in .onnx"]),
        (["no_such_model", "--bundle", "{tmp}/b"], ["no_such_model", "not a checkpoint, a model folder"]),
        (["lgg_unet2d", "--bundle", "{tmp}/b"], ["3D NIfTI models only"]),
    ],
)
def test_refusals_are_one_line(ckpt: Path, tmp_path: Path, one_line_error, args: list[str], needles: list[str]) -> None:
    argv = [a.format(ckpt=ckpt, tmp=tmp_path) for a in args]
    assert main(argv) == 2
    one_line_error(*needles)
    assert not (tmp_path / "b").exists()


def test_package_records_each_validation_case_from_the_eval_csv(ckpt: Path, tmp_path: Path) -> None:
    """``--eval-csv``: the summary means and each case's Dice and HD95 per region, as bts-eval wrote them."""
    import csv

    import nibabel as nib

    from bts_monai.cli.eval import main as eval_main

    labels = np.zeros((16, 16, 12), dtype=np.uint8)
    labels[3:13, 3:13, 2:10] = 2
    labels[5:11, 5:11, 2:10] = 1
    labels[6:10, 6:10, 2:10] = 4
    for case, shift in (("a", 0), ("b", 2)):
        (tmp_path / "gt" / case).mkdir(parents=True)
        (tmp_path / "pred").mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(labels, np.eye(4)), str(tmp_path / "gt" / case / f"{case}_seg.nii.gz"))
        nib.save(nib.Nifti1Image(np.roll(labels, shift, axis=0), np.eye(4)), str(tmp_path / "pred" / f"{case}.nii.gz"))
    scores = tmp_path / "val.csv"
    assert eval_main([str(tmp_path / "pred"), str(tmp_path / "gt"), "-o", str(scores)]) == 0
    assert main([str(ckpt), "tiny", "--out", str(tmp_path / "models"), "--eval-csv", str(scores)]) == 0
    validation = json.loads((tmp_path / "models" / "tiny" / "metadata.json").read_text())["validation"]
    with scores.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["case_id"] in ("a", "b")]
    assert len(rows) == 6  # two cases x three regions
    for row in rows:
        got = validation["per_case"][row["region"]][row["case_id"]]
        assert got == {"dice": round(float(row["dice"]), 4), "hd95": round(float(row["hd95"]), 4)}
    assert validation["per_case"]["WT"]["a"]["dice"] == 1.0 > validation["per_case"]["WT"]["b"]["dice"]
    wt_mean = validation["mean_per_region"]["WT"]["dice"]
    assert wt_mean == pytest.approx(np.mean([validation["per_case"]["WT"][c]["dice"] for c in "ab"]), abs=1e-4)


def _split_file(path: Path) -> Path:
    """A datalist as the DataModule writes it to splits/: a seeded hold-out, before val_cases."""
    entry = {"dataset": "brats2018", "scheme": "brats2021"}
    data = {
        "split": {"mode": "holdout", "val_fraction": 0.25, "seed": 0},
        "training": [{"case_id": c, **entry} for c in ("c0", "c1", "c2")],
        "validation": [{"case_id": "c3", **entry}],
    }
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("val_cases", [["c2"], []])
def test_package_records_the_split_that_trained(ckpt: Path, tmp_path: Path, val_cases: list[str]) -> None:
    """--split is the datalist file; a checkpoint trained with fixed val_cases re-splits it so."""
    run = torch.load(ckpt, weights_only=True)
    run["datamodule_hyper_parameters"] = {"val_cases": val_cases, "seed": 0}  # as Lightning saves it
    torch.save(run, tmp_path / "run.ckpt")
    split = _split_file(tmp_path / "split.json")
    assert main([str(tmp_path / "run.ckpt"), "tiny", "--out", str(tmp_path / "m"), "--split", str(split)]) == 0
    data = json.loads((tmp_path / "m" / "tiny" / "metadata.json").read_text())["training_data"]
    if val_cases:
        assert data["train_cases"] == ["c0", "c1", "c3"] and data["val_cases"] == ["c2"]
        assert data["split"] == {"mode": "fixed", "val_cases": ["c2"]}
    else:  # no fixed split: the file's own
        assert data["train_cases"] == ["c0", "c1", "c2"] and data["val_cases"] == ["c3"]
        assert data["split"]["mode"] == "holdout"


def test_package_refuses_val_cases_missing_from_the_split(ckpt: Path, tmp_path: Path, one_line_error) -> None:
    run = torch.load(ckpt, weights_only=True)
    run["datamodule_hyper_parameters"] = {"val_cases": ["elsewhere"]}
    torch.save(run, tmp_path / "run.ckpt")
    split = _split_file(tmp_path / "split.json")
    assert main([str(tmp_path / "run.ckpt"), "tiny", "--out", str(tmp_path / "m"), "--split", str(split)]) == 2
    one_line_error("split.json", "val_cases not found", "elsewhere")
    assert not (tmp_path / "m").exists()


def test_package_records_the_recipe_lightning_saved(ckpt: Path, tmp_path: Path) -> None:
    """metadata.json's ``recipe``: optimizer, schedule, loss, patches, augmentation, epochs, as trained."""
    run = torch.load(ckpt, weights_only=True)
    optimizer = {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.003, "weight_decay": 1e-05}}
    scheduler = {"class_path": "torch.optim.lr_scheduler.PolynomialLR", "init_args": {"total_iters": 120}}
    run.update(epoch=119, global_step=1680)
    run["hyper_parameters"] = {"optimizer": optimizer, "lr_scheduler": scheduler, "loss": None, "sw_overlap": 0.5}
    run["datamodule_hyper_parameters"] = {"roi_size": [64, 64, 64], "spatial_augment": True, "seed": 0, "cache": "x"}
    torch.save(run, tmp_path / "run.ckpt")
    assert main([str(tmp_path / "run.ckpt"), "tiny", "--out", str(tmp_path / "m")]) == 0
    recipe = json.loads((tmp_path / "m" / "tiny" / "metadata.json").read_text())["recipe"]
    assert recipe["optimizer"] == optimizer and recipe["lr_scheduler"] == scheduler
    assert recipe["loss"].startswith("DiceCELoss")
    assert recipe["data"] == {"roi_size": [64, 64, 64], "spatial_augment": True, "seed": 0}
    assert recipe["epochs"] == 120 and recipe["optimizer_steps"] == 1680
