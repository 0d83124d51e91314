"""Multi-node DDP: two nodes (torchrun, and SLURM's srun) gather the single-process validation metrics.

Both "nodes" run on this machine, one process each, gloo. The launch commands are read from the
README's training section, so the documented commands are the ones tested. Each process writes the
validation metrics it holds (:class:`RankMetrics`, given to the CLI as a callback); they must equal,
value for value, those of one process validating the run's ``last.ckpt`` over the same cases.
Three validation cases over two processes: ``DistributedSampler`` repeats one case to even out the
shares, which must not count twice.
"""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
SBATCH = REPO / "scripts" / "slurm_train.sbatch"
LAUNCH_TIMEOUT_S = 200  # a launch that hangs (a rank waiting for a dead peer) is killed, never waited on



class RankMetrics(pl.Callback):
    """Test probe: after each validation, write the ``val/*`` metrics this process holds to
    ``<folder>/rank<R>.json`` (loggers write only on rank 0; this shows what every rank has)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        record = {
            "global_rank": trainer.global_rank,
            "node_rank": trainer.node_rank,
            "world_size": trainer.world_size,
            "environment": type(trainer.strategy.cluster_environment).__name__,
            "epoch": trainer.current_epoch,
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")},
        }
        Path(self.folder, f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def _tiny(run: Path, data: Path, probe: Path | None = None) -> list[str]:
    """Overrides that shrink the demo config to one short epoch on 5 tiny cases (2 train, 3 validate)."""
    args = [
        f"--trainer.default_root_dir={run}",
        "--trainer.max_epochs=1",
        "--trainer.check_val_every_n_epoch=1",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.precision=32-true",
        "--model.net.init_args.channels=[4, 8]",
        "--model.net.init_args.strides=[2]",
        "--model.net.init_args.num_res_units=0",
        "--model.overlay_cases=1",
        "--data.synthetic=false",
        f"--data.data_root={data}",
        f"--data.split_file={data.parent / 'split.json'}",
        "--data.val_fraction=0.6",
        "--data.cache=none",
        "--data.num_samples=1",
    ]
    if probe is not None:
        callback = {"class_path": f"{Path(__file__).stem}.RankMetrics", "init_args": {"folder": str(probe)}}
        args.append(f"--trainer.callbacks+={json.dumps(callback)}")
    return args


@pytest.fixture()
def five_cases(tmp_path: Path) -> Path:
    from bts_monai.data.synthetic import make_brats_dataset

    return make_brats_dataset(tmp_path / "data", n_cases=5, shape=(48, 48, 40))


def _readme_commands(program: str) -> list[list[str]]:
    """The README training section's shell commands that start with ``program`` (continuations joined)."""
    text = README.read_text()
    section = text[text.index("## Training:") : text.index("## Inference:")]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [shlex.split(line, comments=True) for line in lines if line.startswith(program + " ")]


def _free_port(lo: int = 20000, hi: int = 30000) -> int:
    for _ in range(100):
        port = random.randrange(lo, hi)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def _env(**extra: str) -> dict[str, str]:
    # tests/model on the path: the processes import RankMetrics from this module.
    path = os.pathsep.join([str(REPO), str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_", "TORCHELASTIC_"))}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, **extra}


def _run_together(commands: list[list[str]], cwd: Path, env: dict[str, str], logs: Path) -> list[int]:
    """Start the commands at once (each in its own process group) and wait for all of them.

    One that fails, or a deadline passed, ends every group: a surviving rank would otherwise wait
    in a collective for its dead peer for half an hour.
    """
    procs = []
    for i, cmd in enumerate(commands):
        out = open(logs / f"launch{i}.log", "w")  # noqa: SIM115 - closed below
        procs.append((subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True), out))
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    try:
        while any(p.poll() is None for p, _ in procs):
            if time.monotonic() > deadline or any(p.poll() not in (None, 0) for p, _ in procs):
                break
            time.sleep(0.5)
    finally:
        for p, out in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            out.close()
    return [p.returncode for p, _ in procs]


def _logs(logs: Path) -> str:
    return "\n".join(f"--- {f.name}\n{f.read_text()[-4000:]}" for f in sorted(logs.glob("launch*.log")))


def _single_process_metrics(run: Path, data: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    """One process (this one) validating ``ckpt`` over the same validation cases."""
    from bts_monai.cli.train import run_cli

    monkeypatch.setattr(sys, "argv", ["lightning"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks ran, so each convolution sums in the same order
    try:
        cli = run_cli(["validate", "--config", str(REPO / "configs" / "demo.yaml"), *_tiny(run, data),
                       f"--ckpt_path={ckpt}"])
    finally:
        torch.set_num_threads(threads)
    assert cli.trainer.world_size == 1
    return {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("val/")}


def _check_gathered(probe: Path, environment: str, reference: dict[str, float]) -> None:
    ranks = [json.loads(f.read_text()) for f in sorted(probe.glob("rank*.json"))]
    assert [(r["global_rank"], r["node_rank"], r["world_size"]) for r in ranks] == [(0, 0, 2), (1, 1, 2)]
    assert {r["environment"] for r in ranks} == {environment}
    assert reference["val/cases"] == 3.0  # each case once, not the padded four
    assert {"val/dice_mean", "val/hd95_ET", "val/iou_WT", "val/loss"} <= set(reference)
    for r in ranks:
        assert r["epoch"] == 0
        assert r["metrics"] == reference, f"rank {r['global_rank']} differs from one process"


@pytest.mark.slow
@pytest.mark.timeout(LAUNCH_TIMEOUT_S + 120)  # the launch's own deadline comes first
def test_two_torchrun_nodes_gather_the_single_process_metrics(
    five_cases: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commands = _readme_commands("torchrun")
    assert len(commands) == 2, "the README shows one torchrun command per node"
    assert commands[0][commands[0].index("--node_rank") + 1] == "0"
    assert commands[1][commands[1].index("--node_rank") + 1] == "1"
    port = str(_free_port())
    run, probe, logs = tmp_path / "run", tmp_path / "probe", tmp_path / "logs"
    probe.mkdir()
    logs.mkdir()
    launches = []
    for cmd in commands:
        cmd = list(cmd)
        assert cmd[cmd.index("--master_addr") + 1] == "127.0.0.1"
        cmd[cmd.index("--master_port") + 1] = port
        cmd[cmd.index("--config") + 1] = str(REPO / cmd[cmd.index("--config") + 1])
        # `torchrun` is this module of the environment's torch; run it with the test's interpreter.
        launches.append([sys.executable, "-m", "torch.distributed.run", *cmd[1:], *_tiny(run, five_cases, probe)])
    codes = _run_together(launches, tmp_path, _env(), logs)
    assert codes == [0, 0], _logs(logs)

    reference = _single_process_metrics(tmp_path / "reference", five_cases, run / "checkpoints" / "last.ckpt",
                                        monkeypatch)
    _check_gathered(probe, "TorchElasticEnvironment", reference)


def _fake_srun(bin_dir: Path) -> None:
    """An ``srun`` that starts SLURM_NNODES x SLURM_NTASKS_PER_NODE tasks here with srun's variables."""
    bin_dir.mkdir()
    srun = bin_dir / "srun"
    srun.write_text(
        f"#!{sys.executable}\n"
        "import os, subprocess, sys, time\n"
        "nodes, per = int(os.environ['SLURM_NNODES']), int(os.environ['SLURM_NTASKS_PER_NODE'])\n"
        "procs = []\n"
        "for node in range(nodes):\n"
        "    for local in range(per):\n"
        "        env = dict(os.environ, SLURM_NTASKS=str(nodes * per), SLURM_PROCID=str(node * per + local),\n"
        "                   SLURM_LOCALID=str(local), SLURM_NODEID=str(node), SLURM_STEP_ID='0')\n"
        "        procs.append(subprocess.Popen(sys.argv[1:], env=env))\n"
        "while any(p.poll() is None for p in procs) and not any(p.poll() for p in procs):\n"
        "    time.sleep(0.2)\n"
        "for p in procs:  # like srun --kill-on-bad-exit\n"
        "    if p.poll() is None:\n"
        "        p.kill()\n"
        "sys.exit(max(p.wait() for p in procs))\n"
    )
    srun.chmod(0o755)


def _as_batch_job(command: list[str]) -> tuple[list[str], dict[str, str]]:
    """``sbatch --nodes N --ntasks-per-node M SCRIPT ARGS`` -> ``bash SCRIPT ARGS`` and the job's variables."""
    assert command[0] == "sbatch"
    options: dict[str, str] = {}
    i = 1
    while command[i].startswith("--"):
        options[command[i]] = command[i + 1]
        i += 2
    assert Path(command[i]) == SBATCH.relative_to(REPO)
    # The master's port follows from the job id (SLURMEnvironment: last four digits + 15000).
    port = _free_port(15000, 25000)
    job = {
        "SLURM_JOB_ID": str(40000 + port - 15000),
        "SLURM_JOB_NAME": "bts-train",
        "SLURM_NNODES": options["--nodes"],
        "SLURM_JOB_NUM_NODES": options["--nodes"],
        "SLURM_NTASKS_PER_NODE": options["--ntasks-per-node"],
        "SLURM_NODELIST": "127.0.0.1",
    }
    return ["bash", str(SBATCH), *command[i + 1 :]], job


@pytest.mark.slow
@pytest.mark.timeout(LAUNCH_TIMEOUT_S + 120)  # the launch's own deadline comes first
def test_slurm_script_two_nodes_gather_the_single_process_metrics(
    five_cases: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commands = [c for c in _readme_commands("sbatch") if "configs/demo.yaml" in c]
    assert len(commands) == 1, "the README shows the SLURM command the test runs"
    script, job = _as_batch_job(commands[0])
    assert job["SLURM_NNODES"] == "2" and job["SLURM_NTASKS_PER_NODE"] == "1"
    script[script.index("configs/demo.yaml")] = str(REPO / "configs" / "demo.yaml")
    run, probe, logs = tmp_path / "run", tmp_path / "probe", tmp_path / "logs"
    probe.mkdir()
    logs.mkdir()
    _fake_srun(tmp_path / "bin")
    env = _env(**job, PYTHON=sys.executable)
    env["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{env['PATH']}"
    codes = _run_together([[*script, *_tiny(run, five_cases, probe)]], tmp_path, env, logs)
    assert codes == [0], _logs(logs)
    # The script always asks for `--ckpt_path last`; a first start has none and trains from scratch.
    assert "no last checkpoint available" in _logs(logs)

    reference = _single_process_metrics(tmp_path / "reference", five_cases, run / "checkpoints" / "last.ckpt",
                                        monkeypatch)
    _check_gathered(probe, "SLURMEnvironment", reference)


def test_readme_and_sbatch_agree_on_the_launch() -> None:
    """Cheap guard: the documented commands are the multi-node ones (ranks, DDP, node count)."""
    torchrun = _readme_commands("torchrun")
    for node, cmd in enumerate(torchrun):
        joined = " ".join(cmd)
        assert f"--nnodes 2 --node_rank {node} --nproc_per_node 1" in joined
        assert "--trainer.strategy ddp --trainer.num_nodes 2 --trainer.devices 1" in joined
    # Apart from the rank, both nodes run the same command.
    without_rank = [c[: c.index("--node_rank") + 1] + c[c.index("--node_rank") + 2 :] for c in torchrun]
    assert without_rank[0] == without_rank[1]
    text = SBATCH.read_text()
    assert '--trainer.num_nodes "$SLURM_NNODES" --trainer.devices "$SLURM_NTASKS_PER_NODE"' in text
    assert "--ckpt_path last" in text and "#SBATCH --signal=TERM@" in text


def test_stand_in_case_ids_do_not_collide_across_processes() -> None:
    """Batches without case ids: the gathered records of two ranks stay apart (batch indices repeat)."""
    from types import SimpleNamespace

    from bts_monai.model.module import BratsSegModule, build_network

    net = build_network(
        "monai.networks.nets.UNet",
        {"spatial_dims": 3, "in_channels": 4, "out_channels": 3, "channels": [4, 8], "strides": [2]},
    )
    module = BratsSegModule(net)
    names = {}
    for rank in (0, 1):
        module._trainer = SimpleNamespace(world_size=2, global_rank=rank)  # type: ignore[assignment]
        names[rank] = module._stand_in_case_ids(0, 2)
    assert len(set(names[0]) | set(names[1])) == 4
    module._trainer = SimpleNamespace(world_size=1, global_rank=0)  # type: ignore[assignment]
    assert module._stand_in_case_ids(3, 1) == ["case3_0"]
