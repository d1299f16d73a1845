"""The real config tree composed as `lmlab train` would, with tiny CPU sizes, and a tiny text corpus."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from lmlab.config.groups import config_dir
from lmlab.config.schemas import register_schemas

register_schemas()  # typed configs, as `lmlab <command>` composes them

TINY_TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\n"
) * 40

TINY_MODEL = {
    "gpt": ["model.n_layer=1", "model.n_head=2", "model.n_embd=16"],
    "bert": ["model.n_layer=1", "model.n_head=2", "model.n_embd=16"],
    "lstm": ["model.n_layer=1", "model.n_embd=16", "model.n_hidden=16"],
    "ngram": ["model.order=3"],
}
"""Tiny sizes per model family (only the fields that family has)."""

TINY_OVERRIDES = [
    "model.block_size=16",
    "data.batch_size=4",
    "data.eval_batch_size=8",
    "data.max_val_tokens=256",
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.log_every_n_steps=1",
    "trainer.enable_model_summary=false",
    "sample.max_new_tokens=8",
    "logger=csv",
]


def compose_train(tmp_path: Path, overrides: list[str] | None = None) -> DictConfig:
    """Compose `conf/train.yaml` as `lmlab train` would, with tiny sizes and outputs under `tmp_path`."""
    overrides = list(overrides or [])
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        overrides = [*TINY_OVERRIDES, *tiny_model(overrides), *overrides]
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.task_name = cfg.task_name  # named after the group choices, which the `hydra` node removed here holds
        del cfg["hydra"]
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.paths.cache_dir = str(tmp_path / "cache")
    Path(cfg.paths.output_dir).mkdir(parents=True, exist_ok=True)
    return cfg


def tiny_model(overrides: list[str]) -> list[str]:
    """The tiny-size overrides of the model family that `overrides` choose (the default: gpt)."""
    choice = next((o.split("=", 1)[1] for o in overrides if o.startswith("model=")), "gpt")
    family = {"gpt2_small": "gpt"}.get(choice, choice.split("_")[0])
    return TINY_MODEL.get(family, [])


def command(name: str, overrides: list[str]) -> DictConfig:
    """Compose `conf/<name>.yaml` as `lmlab <name>` would."""
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        return compose(name, overrides=overrides)
