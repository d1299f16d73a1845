"""The model registry is the one place a family is added: one `register_family` call and the family composes as
`model=<name>`, trains and is evaluated, with no YAML file, schema or evaluator entry to write."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hydra.core.config_store import ConfigStore
from torch import nn

from lmlab.checkpoints import load_checkpoint
from lmlab.cli.train import train
from lmlab.config.groups import group_options
from lmlab.config.schemas import register_schemas
from lmlab.errors import LmlabError
from lmlab.inference.evaluate import evaluate_file
from lmlab.models import FAMILIES, build_model, family_of, model_config_from_dict, register_family
from tests.helpers.compose import TINY_TEXT, compose_train


@dataclass
class BigramConfig:
    """A next-token table: logits of token t+1 depend on token t only."""

    vocab_size: int = 256
    block_size: int = 16

    family = "bigram_test"
    causal = True


class Bigram(nn.Module):
    def __init__(self, config: BigramConfig) -> None:
        super().__init__()
        self.config = config
        self.table = nn.Embedding(config.vocab_size, config.vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.table(idx)  # (B, T, vocab_size)


@pytest.fixture
def bigram_family():
    family = register_family(BigramConfig, Bigram)
    register_schemas()  # as `lmlab <command>` does before composing
    yield family
    FAMILIES.pop(family.name)
    repo = ConfigStore.instance().repo  # forget its config choice and schema, so later tests see the real families
    for group in (repo["model"], repo["schema"]["model"]):
        group.pop(f"{family.name}.yaml", None)


def test_a_family_registered_in_one_place_composes_trains_and_evaluates(bigram_family, tmp_path: Path) -> None:
    assert "bigram_test" in group_options("model")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TINY_TEXT, encoding="utf-8")
    cfg = compose_train(tmp_path, ["model=bigram_test", "data=text_files", f"data.corpus.paths=[{corpus}]"])
    assert cfg.model._target_.endswith("BigramConfig") and cfg.model.block_size == 16
    metrics = train(cfg)
    assert math.isfinite(metrics["val/loss"]) and metrics["val/loss"] < math.log(256)  # it learned something

    loaded = load_checkpoint(Path(cfg.paths.output_dir))
    assert isinstance(loaded.model, Bigram) and loaded.model_config == BigramConfig(
        vocab_size=loaded.tokenizer.vocab_size
    )
    evaluation = evaluate_file(loaded, corpus, torch.device("cpu"))
    assert evaluation.tokens == len(TINY_TEXT) - 1 and math.isfinite(evaluation.metrics["val/bpb"])


def test_the_registry_builds_and_round_trips_configs(bigram_family) -> None:
    config = model_config_from_dict({"family": "bigram_test", "vocab_size": 7, "block_size": 4})
    assert isinstance(build_model(config), Bigram) and config.vocab_size == 7
    with pytest.raises(LmlabError, match=r"unknown model family 'nope'; known families: .*bigram_test"):
        family_of("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_family(type("Other", (BigramConfig,), {}), Bigram)  # same name, another config
