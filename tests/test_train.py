"""Smoke tests of `lmlab train`'s pipeline in-process: a few steps on a tiny corpus."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from lmlab.cli.train import train
from lmlab.config.groups import group_options
from lmlab.models import build_model, model_config_from_dict
from lmlab.tokenizers import load_tokenizer, tokenizer_from_dict


def test_train_writes_run_directory(cfg_train, capsys) -> None:
    metrics = train(cfg_train)
    run = Path(cfg_train.paths.output_dir)
    assert {"val/loss", "val/ppl", "val/bpb", "train/loss"} <= set(metrics)
    assert metrics["val/ppl"] == torch.tensor(metrics["val/loss"]).exp().item()
    assert (run / "config.yaml").is_file() and (run / "tokenizer.json").is_file()
    rows = list(csv.DictReader((run / "csv" / "metrics.csv").open()))
    assert any(r["val/loss"] for r in rows) and any(r["train/loss"] for r in rows)
    assert (run / "checkpoints" / "last.ckpt").is_file()
    out = capsys.readouterr().out
    assert "run directory" in out and "sample" in out


def test_last_checkpoint_holds_the_final_weights(tmp_path, tiny_corpus) -> None:
    """`last.ckpt` is the final step's weights even when the monitored metric stopped improving (here it never does
    after the first validation: mode=max on a falling loss) and when the budget ends between validations."""
    from tests.helpers.compose import compose_train

    cfg = compose_train(
        tmp_path,
        ["data=text_files", f"data.corpus.paths=[{tiny_corpus}]", "trainer.max_steps=5", "trainer.val_check_interval=2",
         "callbacks.model_checkpoint.mode=max", "optimizer.lr=3e-3", "logger=none"],
    )  # fmt: skip
    train(cfg)
    folder = Path(cfg.paths.output_dir) / "checkpoints"
    last = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 5
    (best,) = folder.glob("best-*.ckpt")
    assert torch.load(best, map_location="cpu", weights_only=True)["global_step"] < 5


def test_checkpoint_describes_itself(cfg_train) -> None:
    train(cfg_train)
    ckpt_path = Path(cfg_train.paths.output_dir) / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    tokenizer = tokenizer_from_dict(ckpt["lmlab"]["tokenizer"])
    saved = load_tokenizer(Path(cfg_train.paths.output_dir) / "tokenizer.json")
    assert tokenizer.to_dict() == saved.to_dict()
    model = build_model(model_config_from_dict(ckpt["hyper_parameters"]["model"]))
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)
    assert ckpt["lmlab"]["config"]["model"]["n_embd"] == cfg_train.model.n_embd
    assert ckpt["global_step"] == cfg_train.trainer.max_steps


@pytest.mark.parametrize("hardware", ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def test_loss_falls_on_real_budget(tmp_path, tiny_corpus, hardware: str) -> None:
    from tests.helpers.compose import compose_train

    cfg = compose_train(
        tmp_path,
        [f"hardware={hardware}", "data=text_files", f"data.corpus.paths=[{tiny_corpus}]", "trainer.max_steps=60",
         "trainer.val_check_interval=30", "model.n_embd=32", "scheduler=constant", "optimizer.lr=3e-3"],
    )  # fmt: skip
    metrics = train(cfg)
    rows = list(csv.DictReader((Path(cfg.paths.output_dir) / "csv" / "metrics.csv").open()))
    val = [float(r["val/loss"]) for r in rows if r["val/loss"]]
    vocab = len(set(tiny_corpus.read_text())) + 1
    assert len(val) == 2 and val[-1] < val[0] - 0.3 and val[0] < math.log(vocab)
    assert metrics["val/loss"] == val[-1]
    ckpt = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values())


EXPERIMENTS = [
    [f"experiment={e}"] if e != "shakespeare_char_gpu" else pytest.param([f"experiment={e}"], marks=pytest.mark.gpu)
    for e in group_options("experiment")
]
TRAIN_CASES = (
    [[f"model={m}"] for m in group_options("model")]
    + EXPERIMENTS
    + [
        ["tokenizer=bpe", "tokenizer.vocab_size=300"],
        ["model=gpt_llama", "tokenizer=bpe", "tokenizer.vocab_size=300"],
    ]
)


@pytest.mark.parametrize("overrides", TRAIN_CASES, ids=lambda o: ",".join(o))
def test_every_model_and_tokenizer_trains_a_few_steps(tmp_path, tiny_corpus, overrides: list[str]) -> None:
    from tests.helpers.companions import companions
    from tests.helpers.compose import compose_train

    choice = overrides[0].split("=", 1)
    extra = companions(*choice, tmp_path, tiny_corpus)
    if choice[0] != "experiment" and not any(o.startswith("data") for o in extra):  # experiments bring their own
        extra += ["data=text_files", f"data.corpus.paths=[{tiny_corpus}]"]
    cfg = compose_train(tmp_path, [*overrides, *extra])
    metrics = train(cfg)
    assert math.isfinite(metrics["val/loss"])
    summary = json.loads((Path(cfg.paths.output_dir) / "summary.json").read_text())
    assert summary["parameters"] > 0 and summary["metrics"]["val/loss"] == metrics["val/loss"]
    assert (Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt").is_file()


def test_zero_steps_validate_and_save_the_starting_model(tmp_path, tiny_corpus) -> None:
    """`trainer.max_steps=0` trains nothing: the pretrained model (with LoRA adapters, whose B matrices start at zero)
    is validated and saved as `last.ckpt`, which gives the pretrained model's own logits: a zero-shot baseline that
    `lmlab eval` takes like any run."""
    from transformers import AutoModelForCausalLM

    from lmlab.checkpoints.load import load_checkpoint
    from tests.helpers.compose import compose_train
    from tests.helpers.hf import save_tiny_causal

    folder = save_tiny_causal(tmp_path / "tiny_causal", tiny_corpus.read_text())
    cfg = compose_train(
        tmp_path,
        ["model=hf_causal", f"model.name_or_path={folder}", "model.lora=true", "tokenizer=hf",
         f"tokenizer.name_or_path={folder}", "data=text_files", f"data.corpus.paths=[{tiny_corpus}]",
         "trainer.max_steps=0"],
    )  # fmt: skip
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 0 and math.isfinite(metrics["val/loss"])
    assert summary["metrics"]["val/loss"] == metrics["val/loss"]
    loaded = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert loaded.model_config.lora and loaded.run_config["trainer"]["max_steps"] == 0
    ids = torch.tensor([loaded.tokenizer.encode("First Citizen:\nBefore we proceed")])  # (1, T)
    pretrained = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        expected = pretrained(input_ids=ids).logits[..., : loaded.tokenizer.vocab_size]
        assert torch.allclose(loaded.model(ids), expected, atol=1e-6)


def test_validations_during_fit_score_the_sample_and_the_final_weights_the_whole_split(tmp_path, tiny_corpus) -> None:
    """`data.val_sample_tokens`: validations during fit score a fixed sample (`val_sample/...`, also what ranks the
    best checkpoint), the final weights the whole split (`val/...`), exactly as a run that never samples."""
    from tests.helpers.compose import compose_train

    base = ["data=text_files", f"data.corpus.paths=[{tiny_corpus}]", "trainer.max_steps=4"]  # 16 windows of 16
    sampled = compose_train(tmp_path / "sampled", [*base, "data.val_sample_tokens=40"])  # 3 windows
    whole = compose_train(tmp_path / "whole", [*base, "data.val_sample_tokens=null"])
    metrics = train(sampled)
    assert metrics == train(whole)  # the same final numbers: the whole split, the same training
    run = Path(sampled.paths.output_dir)
    rows = list(csv.DictReader((run / "csv" / "metrics.csv").open()))
    steps = {name: [int(r["step"]) for r in rows if r.get(name)] for name in ("val_sample/loss", "val/loss")}
    assert steps == {"val_sample/loss": [1, 3], "val/loss": [4]}  # in fit, step k's validation is logged at k - 1
    final_sample = next(float(r["val_sample/loss"]) for r in rows if r["val_sample/loss"] and r["step"] == "3")
    assert final_sample != metrics["val/loss"] and "val_sample/loss" not in metrics
    summary = json.loads((run / "summary.json").read_text())
    assert summary["metrics"]["val/loss"] == metrics["val/loss"]
    assert [p.name for p in (run / "checkpoints").glob("best-*.ckpt")] == ["best-step000004.ckpt"]


def test_summary_splits_the_wall_time(cfg_train, capsys) -> None:
    train(cfg_train)
    timing = json.loads((Path(cfg_train.paths.output_dir) / "summary.json").read_text())["timing"]
    parts = [timing[k] for k in ("startup_s", "training_s", "validation_s", "end_s")]
    assert all(p >= 0 for p in parts) and min(timing["training_s"], timing["validation_s"]) > 0
    assert sum(parts) == pytest.approx(timing["total_s"], abs=0.01)
    assert "wall time: start-up " in capsys.readouterr().out
