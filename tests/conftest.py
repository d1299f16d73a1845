"""Shared fixtures: the real config tree composed with tiny CPU overrides, and a tiny text corpus.

Plain helpers that test modules import live in `tests/helpers/`; only what pytest injects by name stays here.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from omegaconf import DictConfig

from tests.helpers.compose import TINY_TEXT, compose_train

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(TINY_TEXT, encoding="utf-8")
    return path


@pytest.fixture
def cfg_train(tmp_path: Path, tiny_corpus: Path) -> DictConfig:
    """The default experiment shrunk to seconds, reading the tiny corpus."""
    return compose_train(tmp_path, ["data=text_files", f"data.corpus.paths=[{tiny_corpus}]"])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu` tests skip cleanly where CUDA is absent."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
