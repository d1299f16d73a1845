"""Atomic checkpoint writes, SLURM's requeue signal, and (slow) a training run SIGKILLed again and again."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from lmlab.checkpoints.find import checkpoints_of
from lmlab.checkpoints.load import load_checkpoint, read_checkpoint
from lmlab.checkpoints.writing import AtomicCheckpointIO, trainer_plugins
from lmlab.cli.train import build_trainer, train
from lmlab.errors import LmlabError
from tests.helpers.compose import TINY_MODEL, TINY_OVERRIDES, TINY_TEXT, compose_train
from tests.helpers.runs import base_overrides, metric_rows

SLURM_ENV = {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "lmlab", "SLURM_JOB_ID": "4242", "SLURM_PROCID": "0",
             "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost"}  # fmt: skip


def test_a_write_that_dies_midway_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"weights": torch.ones(3)}, path)

    def dies_midway(obj: object, file) -> None:
        file.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # as if killed while writing

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"weights": torch.zeros(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["weights"], torch.ones(3))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_every_trainer_writes_atomically_and_requeues_under_slurm(cfg_train, monkeypatch) -> None:
    assert isinstance(build_trainer(cfg_train).strategy.checkpoint_io, AtomicCheckpointIO)
    assert not any(type(p).__name__ == "SLURMEnvironment" for p in trainer_plugins())
    for key, value in SLURM_ENV.items():
        monkeypatch.setenv(key, value)
    trainer = build_trainer(cfg_train)
    environment = trainer._accelerator_connector.cluster_environment
    assert type(environment).__name__ == "SLURMEnvironment" and environment.auto_requeue
    assert environment.requeue_signal == signal.SIGUSR1


class SignalAt(pl.Callback):
    """Sends this process `signum` at the end of step `step`."""

    def __init__(self, step: int, signum: int = signal.SIGUSR1) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def test_sigusr1_under_slurm_saves_a_checkpoint_that_resume_finds(tmp_path, tiny_corpus, monkeypatch) -> None:
    for key, value in SLURM_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PATH", str(tmp_path))  # no `scontrol` here: the requeue call fails, the checkpoint stays
    cfg = compose_train(
        tmp_path,
        ["data=text_files", f"data.corpus.paths=[{tiny_corpus}]", "trainer.max_steps=3",
         "+callbacks.usr1._target_=tests.test_interruptions.SignalAt", "+callbacks.usr1.step=2"],
    )  # fmt: skip
    train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    hpc = run_dir / "hpc_ckpt_1.ckpt"
    assert read_checkpoint(hpc)["global_step"] == 2
    assert hpc in checkpoints_of(run_dir)


class SignalInValidation(pl.Callback):
    """Sends this process SIGTERM after the first batch of the validation at step `step` (of 2 batches here)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_validation_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if not trainer.sanity_checking and trainer.global_step == self.step and trainer.state.fn == "fit":
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_during_validation_stops_after_it_and_the_resumed_run_is_exact(tmp_path, tiny_corpus) -> None:
    """Stopped mid-validation, the old checkpoint counted that validation as done: the resumed run never logged it
    and never saved its best checkpoint. The stop now waits for the validation's end."""
    overrides = [*base_overrides(tiny_corpus), "trainer.max_steps=7"]
    straight = train(compose_train(tmp_path / "straight", overrides))
    stop = ["+callbacks.stop._target_=tests.test_interruptions.SignalInValidation", "+callbacks.stop.step=5"]
    stopped = compose_train(tmp_path / "stopped", [*overrides, *stop])
    run_dir = Path(stopped.paths.output_dir)
    with pytest.raises(SystemExit) as exit_info:
        train(stopped)
    assert exit_info.value.code == 143
    assert read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 5
    assert any(row.get("val_sample/loss") for row in metric_rows(run_dir))  # logged before the stop (the sample)
    resumed = train(compose_train(tmp_path / "again", [*overrides, f"resume={run_dir}"]))
    assert resumed == straight
    assert metric_rows(run_dir) == metric_rows(tmp_path / "straight" / "run")  # the step-5 validation, once
    best = sorted(p.name for p in checkpoints_of(tmp_path / "straight" / "run"))
    assert sorted(p.name for p in checkpoints_of(run_dir)) == best and "best-step000005.ckpt" in best


def cli_command(corpus: Path, run_dir: Path, steps: int) -> list[str]:
    tiny = [o for o in TINY_OVERRIDES + TINY_MODEL["gpt"] if not o.startswith("trainer.")]
    return [
        sys.executable, "-m", "lmlab", "train", *tiny, "data=text_files", f"data.corpus.paths=[{corpus}]",
        f"trainer.max_steps={steps}", "trainer.val_check_interval=50", "trainer.log_every_n_steps=5",
        "+callbacks.model_checkpoint.every_n_train_steps=1", "callbacks.model_checkpoint.monitor=null",
        "callbacks=[model_checkpoint]", "resume=auto", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip


def wait_for(condition, timeout: float, every: float = 0.005) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(every)
    return False


def kill_after_a_save(proc: subprocess.Popen, folder: Path, during_write: bool, delay: float) -> tuple[bool, bool]:
    """Wait for this process's first checkpoint, then SIGKILL it while it writes the next one (`during_write`) or
    after `delay` seconds. Returns (killed, killed while a temporary checkpoint file existed)."""
    started = time.time()

    def saved() -> bool:
        return folder.is_dir() and any(p.stat().st_mtime > started for p in folder.glob("*.ckpt"))

    wait_for(lambda: saved() or proc.poll() is not None, timeout=120)
    writing = False
    if during_write:
        writing = wait_for(lambda: any(folder.glob(".*.tmp")) or proc.poll() is not None, 10, 0.0005)
    else:
        time.sleep(delay)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    return killed, writing and killed


@pytest.mark.slow
def test_sigkill_loop_resumes_to_the_end_and_every_checkpoint_loads(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TINY_TEXT, encoding="utf-8")
    env = {**os.environ, "WANDB_MODE": "offline", "LMLAB_CACHE": str(tmp_path / "cache")}
    steps, rng, run_dir = 300, random.Random(0), None
    during_writes = kills = 0
    for attempt in range(40):
        if kills >= 12:
            break
        fresh = tmp_path / "outputs" / "a" / f"{attempt:02d}"
        errors = tmp_path / f"stderr-{attempt:02d}.txt"
        with open(errors, "w") as stderr:
            proc = subprocess.Popen(cli_command(corpus, fresh, steps), cwd=tmp_path, env=env,
                                    stdout=subprocess.DEVNULL, stderr=stderr)  # fmt: skip
            folder = (run_dir or fresh) / "checkpoints"
            killed, writing = kill_after_a_save(proc, folder, attempt % 3 == 0, rng.uniform(0, 0.3))
        assert killed or proc.returncode == 0, errors.read_text()[-3000:]
        kills, during_writes = kills + killed, during_writes + writing
        run_dir = run_dir or (fresh if (fresh / "checkpoints").is_dir() else None)
        for path in checkpoints_of(run_dir):  # whatever the moment, every checkpoint on disk loads
            load_checkpoint(path)
    assert kills >= 10 and during_writes >= 1, (kills, during_writes)

    final = subprocess.run(cli_command(corpus, tmp_path / "outputs" / "a" / "final", steps), cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert final.returncode == 0, final.stderr[-3000:]
    assert read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == steps
    for path in checkpoints_of(run_dir):
        load_checkpoint(path)
    assert len((run_dir / "resumes.log").read_text().splitlines()) >= kills


def test_any_bytes_that_are_not_a_checkpoint_give_one_line(tmp_path: Path) -> None:
    """Random bytes fail torch.load in many ways (zip and pickle errors, but also IndexError, KeyError, ...): every
    one becomes the one-line error, never a traceback."""
    rng = random.Random(0)
    path = tmp_path / "garbage.ckpt"
    for _ in range(300):
        path.write_bytes(rng.randbytes(1024))
        with pytest.raises(LmlabError, match=r"cannot read checkpoint .*; it may be truncated or corrupt"):
            read_checkpoint(path)
