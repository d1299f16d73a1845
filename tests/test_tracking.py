"""Tracking: W&B mode choice, run ids, names and groups, generated samples, other loggers, provenance files."""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from omegaconf import OmegaConf

import lmlab
from lmlab.callbacks import GeneratedSamples
from lmlab.cli.run_identity import folder_name, name_tracking_runs, sweep_group
from lmlab.runs import loggers as run_loggers
from lmlab.runs.provenance import git_state, write_provenance
from tests.helpers.cli import run_cli
from tests.helpers.compose import TINY_MODEL, TINY_OVERRIDES, compose_train

ROOT = Path(__file__).resolve().parents[1]
TINY = [o for o in TINY_OVERRIDES + TINY_MODEL["gpt"] if not o.startswith("logger=")]
HINT = "logging offline; upload later with `wandb sync"


# --- reading what W&B wrote offline -------------------------------------------------------------------------------


def wandb_records(run_file: Path) -> list[Any]:
    """The protobuf records of an offline `run-<id>.wandb` file (W&B's LevelDB-style log: 7-byte file header,
    32 KiB blocks of chunks with a 7-byte header each: crc32, length, type 1 full / 2 first / 3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    records, chunks, pos, block = [], b"", 7, 1 << 15
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (kind == 0 and length == 0):  # block trailer / padding
            pos += left
            continue
        chunks += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            records.append(wandb_internal_pb2.Record.FromString(chunks))
            chunks = b""
    return records


def offline_run(run_dir: Path) -> dict[str, Any]:
    """Id, name, group, job type and config of the single offline W&B run under `run_dir`."""
    runs = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1, runs
    info: dict[str, Any] = {"config": {}}
    for record in wandb_records(runs[0]):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            info |= {"id": run.run_id, "name": run.display_name, "group": run.run_group, "job_type": run.job_type}
            info["tags"] = list(run.tags)
            items = run.config.update
        elif kind == "config":
            items = record.config.update
        else:
            continue
        info["config"] |= {item.key: json.loads(item.value_json) for item in items}
    return info


# --- choosing the mode: never block on the network ----------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def unreachable_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials but a W&B server address on loopback where nothing listens; no WANDB_MODE."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setattr(run_loggers, "_automatic_mode", None)


def test_unreachable_server_means_offline_at_once_and_one_hint(unreachable_server, caplog) -> None:
    started = time.perf_counter()
    modes = [run_loggers.choose_wandb_mode(), run_loggers.choose_wandb_mode()]
    assert modes == ["offline", "offline"]
    assert time.perf_counter() - started < 15
    assert sum(HINT in r.getMessage() for r in caplog.records) == 1  # a sweep warns once, not per job


def test_silent_server_means_offline_after_the_probe_timeout(unreachable_server, monkeypatch) -> None:
    with socket.socket() as server:  # accepts connections (the kernel does) but never answers
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
        started = time.perf_counter()
        assert run_loggers.choose_wandb_mode() == "offline"
        assert time.perf_counter() - started < 15


def test_explicit_mode_wins_without_probing(monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    monkeypatch.setattr(run_loggers, "server_reachable", lambda: pytest.fail("probed"))
    assert run_loggers.choose_wandb_mode() == "offline"
    assert run_loggers.choose_wandb_mode("disabled") == "disabled"


def test_run_id_is_kept_in_the_run_directory(tmp_path: Path) -> None:
    first = run_loggers.wandb_logger("lmlab", str(tmp_path / "a"), mode="offline")
    again = run_loggers.wandb_logger("lmlab", str(tmp_path / "a"), mode="offline")
    other = run_loggers.wandb_logger("lmlab", str(tmp_path / "b"), mode="offline")
    assert (tmp_path / "a" / "wandb_run_id").read_text().strip() == first._id == again._id
    assert other._id != first._id
    assert first._wandb_init["resume"] == "allow"
    assert first._wandb_init["config"]["provenance"]["hardware"]["cpu_count"] == os.cpu_count()


# --- names and groups ---------------------------------------------------------------------------------------------


def test_sweep_group_is_the_sweep_directory_relative_to_the_launch_directory() -> None:
    assert sweep_group("/home/me/proj/multirun/2026-01-02/10-11-12", "/home/me/proj") == "multirun/2026-01-02/10-11-12"
    assert sweep_group("multirun/x", "/home") == "multirun/x"
    long = "/elsewhere/" + "d" * 300 + "/10-11-12"
    assert len(sweep_group(long, "/home")) == 128 and sweep_group(long, "/home").endswith("/10-11-12")


def test_explicit_name_and_group_are_kept(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, ["logger=wandb", "logger.wandb.name=mine", "logger.wandb.group=g"])
    name_tracking_runs(cfg)  # outside Hydra there are no overrides to name it by
    assert (cfg.logger.wandb.name, cfg.logger.wandb.group) == ("mine", "g")


def test_tensorboard_names_a_run_by_its_overrides_and_charts_only_its_metrics(
    tmp_path: Path, tiny_corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opened on a sweep, TensorBoard listed `0/tensorboard`, `1/tensorboard`, ... and led with an `epoch` chart (0
    throughout) and Lightning's `hp_metric` placeholder. Runs are now named as W&B names them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lmlab.cli import run_identity
    from lmlab.cli.train import train

    overrides = f"data.corpus.paths=[{tiny_corpus}],optimizer.lr=0.001"  # Hydra's override_dirname of the job
    monkeypatch.setattr(run_identity, "hydra_run_identity", lambda: (overrides, "multirun/sweep"))
    cfg = compose_train(tmp_path, ["data=text_files", f"data.corpus.paths=[{tiny_corpus}]", "logger=tensorboard"])
    train(cfg)
    runs = [p.parent for p in (Path(cfg.paths.output_dir) / "tensorboard").rglob("events.out.tfevents.*")]
    assert {run.name for run in runs} == {overrides.replace("/", "_")}  # one folder: `/` would nest folders
    events = EventAccumulator(str(runs[0]))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert "train/loss" in scalars and "val/loss" in scalars
    assert "epoch" not in scalars and "hp_metric" not in scalars
    assert tensorboard_hparams(runs[0])["optimizer/lr"] == cfg.optimizer.lr  # the HParams tab keeps the settings


def test_an_explicit_tensorboard_version_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lmlab.cli import run_identity

    monkeypatch.setattr(run_identity, "hydra_run_identity", lambda: ("model=lstm", None))
    for version, expected in (("mine", "mine"), (None, "model=lstm")):
        cfg = compose_train(tmp_path, ["logger=tensorboard"])
        cfg.logger.tensorboard.version = version
        name_tracking_runs(cfg)
        assert cfg.logger.tensorboard.version == expected
    monkeypatch.setattr(run_identity, "hydra_run_identity", lambda: (None, None))
    name_tracking_runs(cfg := compose_train(tmp_path, ["logger=tensorboard"]))  # outside Hydra: no sub-folder
    assert cfg.logger.tensorboard.version == ""


# --- generated samples --------------------------------------------------------------------------------------------


def test_samples_callback_logs_a_growing_table_for_causal_lms(tmp_path: Path) -> None:
    from pytorch_lightning.loggers import WandbLogger

    from lmlab.models import GPTConfig
    from lmlab.tasks import CausalLMTask
    from lmlab.tokenizers.char import CharTokenizerConfig

    class Recording(WandbLogger):
        def __init__(self) -> None:
            self.tables: list[tuple[str, list[list[Any]], int]] = []

        def log_text(self, key: str, columns: Any = None, data: Any = None, dataframe: Any = None, step: Any = None):
            self.tables.append((key, [list(row) for row in data], step))

    tokenizer = CharTokenizerConfig().train(["abcdefgh\n"])
    task = CausalLMTask(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=16))
    logger = Recording()
    trainer = SimpleNamespace(
        loggers=[logger], datamodule=SimpleNamespace(tokenizer=tokenizer), sanity_checking=False,
        is_global_zero=True, global_step=2,
    )  # fmt: skip
    callback = GeneratedSamples(prompt="ab", max_new_tokens=5, seed=3)
    callback.on_validation_end(trainer, task)
    trainer.global_step = 4
    callback.on_validation_end(trainer, task)
    assert [(key, step, len(rows)) for key, rows, step in logger.tables] == [
        ("val/samples", 2, 1),
        ("val/samples", 4, 2),
    ]
    step, prompt, text = logger.tables[-1][1][-1]
    assert (step, prompt, len(text)) == (4, "ab", 5)
    assert logger.tables[-1][1][0][2] == text  # same seed, same weights: the same sample
    trainer.sanity_checking = True
    callback.on_validation_end(trainer, task)
    trainer.sanity_checking = False
    callback.on_validation_end(trainer, task)  # step 4 again (the final whole-split validation): no second sample
    trainer.global_step, trainer.is_global_zero = 6, False  # other ranks sample too, but do not log
    callback.on_validation_end(trainer, task)
    assert len(logger.tables) == 2 and callback.sampled_step == 6


# --- provenance ---------------------------------------------------------------------------------------------------


def test_provenance_records_overrides_commit_and_packages(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "secret-sentinel-4242")
    record = write_provenance(tmp_path, ["optimizer.lr=0.001", "model=lstm"])
    assert yaml.safe_load((tmp_path / "overrides.yaml").read_text()) == ["optimizer.lr=0.001", "model=lstm"]
    saved = json.loads((tmp_path / "provenance.json").read_text())
    assert saved == record
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert saved["git"]["commit"] == head.strip()  # the tests run from a checkout of lmlab
    assert (tmp_path / "git.diff").is_file() == saved["git"]["dirty"]
    import torch

    assert f"torch=={torch.__version__}\n" in (tmp_path / "requirements.txt").read_text()
    assert saved["packages"]["torch"] == torch.__version__
    for path in tmp_path.iterdir():
        assert "secret-sentinel-4242" not in path.read_text()


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                   capture_output=True)  # fmt: skip


def test_dirty_checkout_writes_its_diff_and_no_checkout_is_fine(tmp_path: Path, monkeypatch) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "code.py").write_text("x = 1\n")
    git(repo, "init", "-q")
    git(repo, "add", "code.py")
    git(repo, "commit", "-q", "-m", "first")
    assert git_state(repo / "code.py") == {"commit": git_state(repo / "code.py")["commit"], "dirty": False}
    (repo / "code.py").write_text("x = 2\n")
    monkeypatch.setattr(lmlab, "__file__", str(repo / "code.py"))
    record = write_provenance(tmp_path / "run", [])
    assert record["git"]["dirty"] is True
    assert "+x = 2" in (tmp_path / "run" / "git.diff").read_text()

    (repo / "untracked.py").write_text("")
    alone = tmp_path / "installed" / "lmlab" / "__init__.py"  # e.g. a wheel in site-packages
    alone.parent.mkdir(parents=True)
    alone.write_text("")
    for source in (repo / "untracked.py", alone):
        monkeypatch.setattr(lmlab, "__file__", str(source))
        record = write_provenance(tmp_path / source.stem, [])
        assert record["git"] is None and not (tmp_path / source.stem / "git.diff").exists()


# --- end to end ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_job_sweep_gives_two_wandb_runs_in_one_group_and_every_logger(tmp_path: Path) -> None:
    sweep = tmp_path / "multirun" / "sweep1"
    result = run_cli(
        "train", "-m", "optimizer.lr=1e-3,3e-3", *TINY, "trainer.max_steps=2", "trainer.val_check_interval=1",
        "logger=many", f"hydra.sweep.dir={sweep}",
        cwd=tmp_path, env={"LMLAB_CACHE": str(tmp_path / "cache")}, timeout=400,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = [sweep / "0", sweep / "1"]
    runs = [offline_run(job) for job in jobs]
    assert [r["group"] for r in runs] == ["multirun/sweep1"] * 2
    assert [r["config"]["optimizer"]["lr"] for r in runs] == [1e-3, 3e-3]
    assert runs[0]["id"] != runs[1]["id"]
    assert "optimizer.lr=0.001" in runs[0]["name"] and "optimizer.lr=0.003" in runs[1]["name"]
    assert [r["job_type"] for r in runs] == [OmegaConf.load(job / "config.yaml").task_name for job in jobs]
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    for job, run in zip(jobs, runs, strict=True):
        assert run["config"]["provenance"]["git"]["commit"] == head.strip()
        assert list((job / "wandb").glob("offline-run-*/files/media/table/val/samples_*.table.json"))
        assert list((job / "tensorboard" / folder_name(run["name"])).glob("events.out.tfevents.*"))  # as W&B names it
        assert (
            yaml.safe_load((job / "csv" / "hparams.yaml").read_text())["optimizer"]["lr"]
            == run["config"]["optimizer"]["lr"]
        )
        overrides = yaml.safe_load((job / "overrides.yaml").read_text())
        assert overrides == OmegaConf.load(job / ".hydra" / "overrides.yaml")
        assert json.loads((job / "provenance.json").read_text())["git"]["commit"] == head.strip()
        assert (job / "config.yaml").is_file() and (job / "requirements.txt").is_file()


@pytest.mark.slow
def test_unreachable_server_does_not_block_the_cli(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    env = {"LMLAB_CACHE": str(tmp_path / "cache"), "WANDB_MODE": None, "WANDB_API_KEY": "x" * 40,
           "WANDB_BASE_URL": f"http://127.0.0.1:{closed_port()}"}  # fmt: skip
    result = run_cli("train", *TINY, "logger=wandb", f"hydra.run.dir={run_dir}", cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (result.stdout + result.stderr).count(HINT) == 1
    assert offline_run(run_dir)["id"] == (run_dir / "wandb_run_id").read_text().strip()


@pytest.mark.slow
def test_wandb_setup_against_a_silent_server_takes_seconds(unreachable_server, monkeypatch, tmp_path: Path) -> None:
    """A port that accepts connections but never answers: without the probe W&B would wait ~100 s, then fail."""
    import wandb

    started = time.perf_counter()  # the first run of a process starts W&B's service: not what is measured
    wandb.init(mode="offline", dir=str(tmp_path), project="warm-up").finish()
    warm_up = time.perf_counter() - started
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
        started = time.perf_counter()
        logger = run_loggers.wandb_logger("lmlab", str(tmp_path / "run"))
        assert logger.experiment.id == (tmp_path / "run" / "wandb_run_id").read_text().strip()
        elapsed = time.perf_counter() - started
        run_loggers.finish_wandb()
    print(f"W&B service start {warm_up:.1f} s; logger setup against a silent server {elapsed:.1f} s")
    assert elapsed < 15, elapsed


@pytest.mark.slow
def test_second_run_in_the_same_directory_continues_the_wandb_run(tmp_path: Path, tiny_corpus: Path) -> None:
    from lmlab.cli.train import train

    for _ in range(2):
        cfg = compose_train(tmp_path, ["data=text_files", f"data.corpus.paths=[{tiny_corpus}]", "logger=many",
                                       "trainer.max_steps=2", "optimizer.lr=0.0123"])  # fmt: skip
        try:
            train(cfg)
        finally:
            run_loggers.finish_wandb()
    run_dir = Path(cfg.paths.output_dir)
    # offline-run-<date>_<time>-<id>, with a `-1` suffix when both runs started in the same second
    runs = [re.fullmatch(r"offline-run-\d{8}_\d{6}-([a-z0-9]+)(-\d+)?", p.name) for p in (run_dir / "wandb").iterdir()]
    ids = [m.group(1) for m in runs if m]
    assert len(ids) == 2
    assert ids[0] == ids[1] == (run_dir / "wandb_run_id").read_text().strip()
    assert yaml.safe_load((run_dir / "tensorboard" / "hparams.yaml").read_text())["optimizer"]["lr"] == 0.0123
    assert tensorboard_hparams(run_dir / "tensorboard")["optimizer/lr"] == 0.0123


def tensorboard_hparams(log_dir: Path) -> dict[str, Any]:
    """The hyper-parameters TensorBoard's HParams tab shows for the event files in `log_dir`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(log_dir))
    events.Reload()
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    return {key: value.number_value if value.HasField("number_value") else value.string_value
            for key, value in hparams.items()}  # fmt: skip
