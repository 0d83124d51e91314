"""``lightning predict`` with :class:`SegmentationWriter`: per-case files equal to ``bts-infer``'s,
in one process and over two DDP processes (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from bts_monai.data.synthetic import make_brats_dataset
from bts_monai.errors import BtsInputError
from bts_monai.inference.predictor import Predictor
from bts_monai.model.writer import SegmentationWriter

warnings.filterwarnings("ignore", message="Num foregrounds 0", category=UserWarning)

# The same data, split and weights in this process and in the DDP script below.
SETUP = r"""
import torch
from bts_monai.data.datamodule import BratsDataModule
from bts_monai.model.module import BratsSegModule, build_network


def setup(root, split):
    dm = BratsDataModule(data_root=root, roi_size=[16, 16, 16], num_workers=0, val_fraction=0.5, split_file=split)
    torch.manual_seed(0)
    spec = {"spatial_dims": 3, "in_channels": 4, "out_channels": 3, "channels": [4, 8], "strides": [2]}
    net = build_network("monai.networks.nets.UNet", spec)
    # sw_batch_size 1, as the Predictor on a CPU: the same windows in the same order.
    return dm, BratsSegModule(net, sw_roi_size=[16, 16, 16], sw_batch_size=1)
"""

DDP_SCRIPT = r"""
import json, os, sys
import pytorch_lightning as pl
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from writer_setup import setup
from bts_monai.model.writer import SegmentationWriter

root, split, out = sys.argv[1:4]
dm, module = setup(root, split)
writer = SegmentationWriter(out)
trainer = pl.Trainer(
    accelerator="cpu", devices=2, strategy="ddp", callbacks=[writer], logger=False,
    enable_checkpointing=False, enable_progress_bar=False,
)
trainer.predict(module, datamodule=dm, return_predictions=False)
with open(os.path.join(out, f"rank{trainer.global_rank}.json"), "w") as fh:
    json.dump([p.name for p in writer.written], fh)
"""


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("writer")
    root = make_brats_dataset(base / "data", n_cases=6, shape=(32, 32, 24))  # an LPS-like affine: reoriented
    (base / "writer_setup.py").write_text(SETUP)
    sys.path.insert(0, str(base))
    try:
        from writer_setup import setup
    finally:
        sys.path.remove(str(base))
    dm, module = setup(str(root), str(base / "split.json"))
    dm.setup("predict")
    ckpt: dict = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    torch.save(ckpt, base / "module.ckpt")
    # bts-infer's files from the same weights: what the writer must reproduce.
    ref = base / "bts_infer"
    predictor = Predictor.from_checkpoint(base / "module.ckpt", backend="torch")
    cases = [str(root / e["case_id"]) for e in dm.val_entries]
    assert all(r.ok for r in predictor.run(cases, ref, progress=False))
    return {"base": base, "root": root, "setup": setup, "ref": ref, "ids": sorted(e["case_id"] for e in dm.val_entries)}


def _assert_same_as_bts_infer(written: Path, ref: Path) -> None:
    a, b = nib.load(written), nib.load(ref / written.name)
    np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
    assert a.get_data_dtype() == b.get_data_dtype() == np.uint8
    np.testing.assert_allclose(a.affine, b.affine)
    for key in ("qform_code", "sform_code", "pixdim"):
        np.testing.assert_array_equal(a.header[key], b.header[key])


def _trainer(writer: SegmentationWriter) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", devices=1, callbacks=[writer], logger=False, enable_checkpointing=False,
        enable_progress_bar=False,
    )


def test_writer_writes_what_bts_infer_writes(sample: dict, tmp_path: Path):
    dm, module = sample["setup"](str(sample["root"]), str(sample["base"] / "split.json"))
    writer = SegmentationWriter(tmp_path / "out")
    _trainer(writer).predict(module, datamodule=dm, return_predictions=False)
    assert sorted(p.name for p in writer.written) == [f"{c}_seg.nii.gz" for c in sample["ids"]]
    for path in writer.written:
        labels = np.asarray(nib.load(path).dataobj)
        assert labels.shape == (32, 32, 24) and set(np.unique(labels)) <= {0, 1, 2, 4}
        _assert_same_as_bts_infer(path, sample["ref"])
    # Existing files are refused unless overwrite, as bts-infer refuses them.
    with pytest.raises(BtsInputError, match="exists"):
        _trainer(SegmentationWriter(tmp_path / "out")).predict(module, datamodule=dm, return_predictions=False)
    again = SegmentationWriter(tmp_path / "out", overwrite=True, output_scheme="brats2023")
    _trainer(again).predict(module, datamodule=dm, return_predictions=False)
    ref = np.asarray(nib.load(sample["ref"] / again.written[0].name).dataobj)
    new = np.asarray(nib.load(again.written[0]).dataobj)
    np.testing.assert_array_equal(new == 3, ref == 4)  # ET written as BraTS 2023's 3


@pytest.mark.slow
def test_ddp_two_processes_write_every_case_once(sample: dict, tmp_path: Path):
    script = sample["base"] / "ddp_predict.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "ddp_out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MASTER_PORT", None)
    proc = subprocess.run(
        [sys.executable, str(script), str(sample["root"]), str(sample["base"] / "split.json"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    per_rank = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(per_rank), per_rank  # both processes wrote cases
    names = [n for part in per_rank for n in part]
    assert sorted(names) == [f"{c}_seg.nii.gz" for c in sample["ids"]]  # each once
    for name in names:
        _assert_same_as_bts_infer(out / name, sample["ref"])
