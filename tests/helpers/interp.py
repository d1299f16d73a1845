"""Checkpoints for the interpretability commands' tests: a tiny trained GPT, an n-gram model (no hook points)."""

from __future__ import annotations

from pathlib import Path

import torch

from lmlab.models import build_model
from lmlab.models.ngram import NGramConfig
from tests.helpers.cli import run_cli
from tests.helpers.compose import TINY_MODEL, TINY_OVERRIDES, TINY_TEXT


def ngram_checkpoint(tmp_path: Path) -> Path:
    """A checkpoint of an n-gram model (no hook points), shaped like `lmlab train`'s."""
    from lmlab.models import model_config_to_dict
    from lmlab.tokenizers import CharTokenizerConfig

    tokenizer = CharTokenizerConfig(["<pad>"]).train([TINY_TEXT])
    config = NGramConfig(vocab_size=tokenizer.vocab_size, order=2)
    checkpoint = {
        "state_dict": {f"model.{k}": v for k, v in build_model(config).state_dict().items()},
        "hyper_parameters": {"model": model_config_to_dict(config)},
        "lmlab": {"tokenizer": tokenizer.to_dict(), "config": {"task": {"_target_": "lmlab.tasks.CausalLMTask"}}},
    }
    torch.save(checkpoint, tmp_path / "ngram.ckpt")
    return tmp_path / "ngram.ckpt"


def train_tiny(tmp_path: Path) -> Path:
    """A tiny GPT trained for a few steps by `lmlab train` in a subprocess on TINY_TEXT; its run directory."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TINY_TEXT, encoding="utf-8")
    run_dir = tmp_path / "train"
    result = run_cli(
        "train", "data=text_files", f"data.corpus.paths=[{corpus}]", *TINY_OVERRIDES, *TINY_MODEL["gpt"],
        f"hydra.run.dir={run_dir}", cwd=tmp_path, env={"LMLAB_CACHE": str(tmp_path / "cache")}, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir
