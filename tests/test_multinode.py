"""Multi-node on one machine (slow): `hardware=multinode` run by torchrun as two nodes on 127.0.0.1 (gloo, one process
per node), the path a SLURM or torchrun user takes, without a cluster. Against one process with accumulation 2: the
same losses and weights to 1e-5, node 0 writes the run and node 1 only its log, and a resume of the two-node run
continues it as if never stopped. Fast: which process a launcher's environment makes this one."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmlab.cli.main import worker_overrides
from lmlab.compute.ranks import RANK_VARIABLES, is_first_process, process_name
from tests.test_batching import CURVE as SGD_CURVE

STEPS, FIRST_STOP = 8, 4
TOLERANCE = 1e-5
TIMEOUT = 300  # seconds per launch: a hung rendezvous fails the test instead of stalling CI

CURVE = [o for o in SGD_CURVE if not o.startswith("trainer.max_steps")] + [
    "data=text_files",
    "data.batch_size=4",  # global 8 (SGD_CURVE): 2 nodes × 4, no accumulation; 1 process × 4, accumulation 2
    "trainer.deterministic=true",
]
TWO_NODES = ["hardware=multinode", "trainer.accelerator=cpu", "trainer.precision=32-true"]


@pytest.mark.parametrize(
    ("env", "first", "name"),
    [
        ({}, True, "rank0"),  # a plain `lmlab train`
        ({"RANK": "0", "LOCAL_RANK": "0", "NODE_RANK": "0"}, True, "rank0"),  # torchrun, node 0
        ({"RANK": "1", "LOCAL_RANK": "0", "NODE_RANK": "1"}, False, "rank1"),  # torchrun, node 1
        ({"SLURM_PROCID": "9"}, False, "rank9"),  # srun
        ({"SLURM_PROCID": "0", "LOCAL_RANK": "1"}, False, "node0_local1"),  # Lightning's re-run inside an sbatch script
        ({"NODE_RANK": "1"}, False, "node1_local0"),  # Lightning's by-hand multi-node launch: rank_zero_only says 0
    ],
)
def test_the_launchers_environment_names_the_process(monkeypatch, env: dict[str, str], first: bool, name: str):
    for variable in RANK_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    assert (is_first_process(), process_name()) == (first, name)
    overrides = worker_overrides("train", ["trainer.max_steps=4"])
    assert overrides == ([] if first else ["hydra.output_subdir=null", f"hydra.job.name=train_{name}"])


def test_a_process_lightning_started_keeps_the_hydra_settings_lightning_gave_it(monkeypatch) -> None:
    monkeypatch.setenv("LOCAL_RANK", "1")
    lightning = ["hydra.run.dir=x", "hydra.job.name=train_ddp_process_1", "hydra.output_subdir=null"]
    assert worker_overrides("train", lightning) == []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(commands: list[list[str]], cwd: Path, env: dict[str, str]) -> list[str]:
    """Run the commands at once, each in its own process group; return their outputs. A launch that runs past
    `TIMEOUT` is killed with every process it started (torchrun's workers included) and fails the test."""
    procs = [start(command, cwd, env) for command in commands]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=TIMEOUT)[0])
    except subprocess.TimeoutExpired:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"a launch ran past {TIMEOUT} s: {commands}")
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output[-4000:]
    return outputs


def start(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    """`command` in a process group of its own (so a kill reaches every process it starts), output captured."""
    options = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True, "start_new_session": True}
    return subprocess.Popen(command, cwd=cwd, env=env, **options)


def environment(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "WANDB_MODE": "offline", "LMLAB_CACHE": str(tmp_path / "cache")}
    env["OMP_NUM_THREADS"] = "1"  # both "nodes" share this machine's cores; each real node would own its own
    env.pop("LMLAB_COMMAND", None)
    return env


def one_process(tmp_path: Path, name: str, *overrides: str) -> tuple[Path, str]:
    run_dir = tmp_path / name
    command = [sys.executable, "-m", "lmlab", "train", *CURVE, *overrides, f"hydra.run.dir={run_dir}"]
    return run_dir, launch([command], tmp_path, environment(tmp_path))[0]


def two_nodes(tmp_path: Path, name: str, *overrides: str) -> tuple[list[Path], list[str]]:
    """`torchrun --nnodes=2 --nproc-per-node=1 --node-rank=R ... -m lmlab train` for R = 0, 1, as on two machines.
    Each node gets a run folder of its own (as two clocks a second apart would name them)."""
    port = free_port()
    folders = [tmp_path / f"{name}-node{rank}" for rank in (0, 1)]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1"]
    rendezvous = ["--master-addr=127.0.0.1", f"--master-port={port}"]
    commands = [
        [*torchrun, f"--node-rank={rank}", *rendezvous, "-m", "lmlab", "train", *overrides, f"hydra.run.dir={folder}"]
        for rank, folder in enumerate(folders)
    ]
    return folders, launch(commands, tmp_path, environment(tmp_path))


def losses(run_dir: Path) -> dict[str, list[float]]:
    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    return {key: [float(r[key]) for r in rows if r.get(key)] for key in ("train/loss", "val/loss")}


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return checkpoint["state_dict"]


def max_difference(a: dict, b: dict) -> float:
    """The largest |a - b| over every entry (loss lists or weight tensors) of two dicts of the same keys and shapes."""
    assert a.keys() == b.keys()
    gaps = []
    for key in a:
        left, right = torch.as_tensor(a[key], dtype=torch.float64), torch.as_tensor(b[key], dtype=torch.float64)
        assert left.shape == right.shape, key
        gaps.append(float((left - right).abs().max()))
    return max(gaps)


@pytest.mark.slow
def test_two_nodes_on_loopback_match_one_process_with_accumulation(tmp_path: Path, tiny_corpus: Path) -> None:
    corpus = f"data.corpus.paths=[{tiny_corpus}]"
    reference_dir, reference_log = one_process(tmp_path, "one", corpus, f"trainer.max_steps={STEPS}")
    assert "micro-batch 4 × 1 process × accumulation 2" in reference_log
    reference = losses(reference_dir)
    assert len(reference["train/loss"]) == STEPS and len(reference["val/loss"]) == STEPS // 2
    assert reference["train/loss"][-1] < reference["train/loss"][0] - 0.1  # it learns: the comparison is not trivial

    # two nodes, stopped after FIRST_STOP steps
    (node0, node1), logs = two_nodes(tmp_path, "two", *CURVE, *TWO_NODES, corpus, f"trainer.max_steps={FIRST_STOP}")
    assert "micro-batch 4 × 2 processes × accumulation 1" in logs[0]
    first = losses(node0)
    assert max_difference(first, {k: v[: len(first[k])] for k, v in reference.items()}) <= TOLERANCE
    assert len(first["train/loss"]) == FIRST_STOP
    assert torch.load(node0 / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == FIRST_STOP
    for name in ("config.yaml", "tokenizer.json", "provenance.json", ".hydra", "summary.json"):
        assert (node0 / name).exists(), name  # node 0 holds the run
    assert sorted(p.name for p in node1.iterdir()) == ["train_rank1.log"]  # node 1: its log, no second run

    # both nodes resume the run in node 0's folder (`resume=`), to the full length
    resumed, _ = two_nodes(tmp_path, "resume", f"resume={node0}", f"trainer.max_steps={STEPS}")
    assert sorted(p.name for p in resumed[1].iterdir()) == ["train_rank1.log"]
    assert len((node0 / "resumes.log").read_text().splitlines()) == 1  # recorded once, by rank 0
    two = losses(node0)
    assert len(two["train/loss"]) == STEPS
    loss_gap, weight_gap = max_difference(two, reference), max_difference(weights(node0), weights(reference_dir))
    print(f"two nodes vs one process × accumulation 2: max |Δloss| {loss_gap:.2e}, max |Δweight| {weight_gap:.2e}")
    assert loss_gap <= TOLERANCE
    assert weight_gap <= TOLERANCE
