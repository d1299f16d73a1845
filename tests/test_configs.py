"""Every option of every config group composes and instantiates; every experiment composes."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lmlab.cli.train import build_datamodule, build_task, build_trainer, use_starting_point
from lmlab.config.groups import config_dir, group_options
from lmlab.config.validate import check_run_config
from lmlab.data import ClassificationDataModule, LMDataModule
from lmlab.errors import LmlabError
from lmlab.tasks import ModelTask
from tests.helpers.companions import companions
from tests.helpers.compose import compose_train

GROUPS = ["model", "tokenizer", "data", "task", "optimizer", "scheduler", "hardware", "logger", "callbacks",
          "experiment", "debug", "paths", "hydra"]  # fmt: skip


def test_group_folders_are_the_documented_ones() -> None:
    found = {p.name for p in config_dir().iterdir() if p.is_dir()}
    assert set(GROUPS) <= found


def instantiate_all(cfg) -> None:
    """Build every component the way `lmlab train` does; a CUDA profile must refuse a CPU-only machine."""
    use_starting_point(cfg)  # task.init_from: model and tokenizer from a checkpoint
    check_run_config(OmegaConf.to_container(cfg, resolve=True))  # keys and types against every target's signature
    datamodule = build_datamodule(cfg)
    assert isinstance(datamodule, LMDataModule | ClassificationDataModule)
    task = build_task(cfg, datamodule.tokenizer, datamodule)
    assert isinstance(task, ModelTask)
    counting = getattr(task.model, "counting", False)  # n-grams count instead of taking optimizer steps
    assert isinstance(task.configure_optimizers(), type(None) if counting else dict | torch.optim.Optimizer)
    refusal = expected_refusal(cfg)
    if refusal is None:
        assert isinstance(build_trainer(cfg), pl.Trainer)
    else:  # profiles this machine cannot run must say so (tests/test_hardware.py builds them pointed at the CPU)
        with pytest.raises(LmlabError, match=refusal):
            build_trainer(cfg)


def expected_refusal(cfg) -> str | None:
    """The fix a profile must name on this machine: CUDA profiles without a GPU, DeepSpeed without its package."""
    if cfg.trainer.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        return "hardware=cpu"
    if "deepspeed" in str(cfg.trainer.get("strategy")).lower() and importlib.util.find_spec("deepspeed") is None:
        return "pip install deepspeed"
    return None


OPTIONS = [(g, o) for g in GROUPS if g not in ("hydra", "paths") for o in group_options(g)]


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_instantiates(tmp_path: Path, tiny_corpus: Path, group: str, option: str):
    overrides = [f"{group}={option}", *companions(group, option, tmp_path, tiny_corpus)]
    if (group != "data" or option == "text_files") and not any(o.startswith("data") for o in overrides[1:]):
        overrides += ["data=text_files", f"data.corpus.paths=[{tiny_corpus}]"]
    cfg = compose_train(tmp_path, overrides)
    OmegaConf.resolve(cfg)
    assert OmegaConf.missing_keys(cfg) == set()
    instantiate_all(cfg)


def test_optimizer_binds_parameter_groups(cfg_train) -> None:
    optimizer = instantiate(cfg_train.optimizer)
    assert isinstance(optimizer, functools.partial)
    params = [torch.nn.Parameter(torch.zeros(2, 2))]
    assert isinstance(optimizer(params), torch.optim.AdamW)


def test_experiments_start_with_their_command() -> None:
    for path in sorted((config_dir() / "experiment").glob("*.yaml")):
        lines = path.read_text().splitlines()
        assert lines[1].startswith("# lmlab train ") and f"experiment={path.stem}" in lines[1], path


def test_default_experiment_is_nanogpt_cpu_recipe(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path)
    with_defaults = compose_train(tmp_path, ["experiment=shakespeare_char"])
    assert cfg.task_name == with_defaults.task_name == "shakespeare_char"
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        full = compose("train")
    assert (full.model.n_layer, full.model.n_head, full.model.n_embd, full.model.block_size) == (
        4,
        4,
        128,
        64,
    )
    assert (full.data.batch_size, full.trainer.max_steps, full.model.dropout) == (12, 2000, 0.0)
    assert (full.optimizer.lr, full.scheduler.min_lr, full.scheduler.warmup_steps) == (1e-3, 1e-4, 100)
