"""Typed configs: schemas made from the config dataclasses, and the signature checks of the other groups."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hydra.utils import get_object
from omegaconf import OmegaConf

from lmlab.config.groups import group_options
from lmlab.config.schemas import schema_of, schemas
from lmlab.config.validate import check_targets
from lmlab.errors import LmlabError
from tests.helpers.compose import compose_train


@pytest.mark.parametrize("group", ["model", "tokenizer"])
def test_every_option_composes_typed_by_its_own_dataclass(tmp_path: Path, group: str) -> None:
    """One source of truth: each option's node is typed by the schema of the dataclass its `_target_` names, and holds
    exactly that dataclass's fields."""
    for option in group_options(group):
        extra = ["tokenizer.name_or_path=x"] if (group, option) == ("tokenizer", "hf") else []
        node = compose_train(tmp_path, [f"{group}={option}", *extra])[group]
        dataclass = get_object(node._target_)
        assert OmegaConf.get_type(node).__name__ == dataclass.__name__, option
        assert set(node) == {"_target_"} | {f.name for f in dataclasses.fields(dataclass)}, option


def test_schema_follows_the_dataclass() -> None:
    @dataclasses.dataclass
    class Toy:
        vocab_size: int = 10
        width: int = 4
        names: list[str] = dataclasses.field(default_factory=lambda: ["a"])
        rate: float | None = None

    schema = schema_of(Toy, "toys.Toy")
    node = OmegaConf.structured(schema)
    assert node._target_ == "toys.Toy" and node.vocab_size is None  # filled in at run time
    assert (node.width, list(node.names), node.rate) == (4, ["a"], None)
    with pytest.raises(Exception, match="width"):
        node.width = "wide"
    with pytest.raises(Exception, match="depth"):
        node.depth = 2


def test_every_model_family_has_a_schema() -> None:
    from lmlab.models import FAMILIES

    assert {f.config.__name__ for f in FAMILIES.values()} == {c.__name__ for c in schemas()["model"].values()}


def test_unknown_key_of_a_signature_checked_node_names_the_closest() -> None:
    config = {"callbacks": {"ckpt": {"_target_": "pytorch_lightning.callbacks.ModelCheckpoint", "monitr": "val/loss"}}}
    with pytest.raises(LmlabError, match=r"^callbacks\.ckpt\.monitr is not a setting of ModelCheckpoint; did you mean"):
        check_targets(config)


def test_simple_types_are_checked_and_open_signatures_pass() -> None:
    with pytest.raises(LmlabError, match=r"trainer\.max_steps='ten' has the wrong type; give a value of type int"):
        check_targets({"trainer": {"_target_": "pytorch_lightning.Trainer", "max_steps": "ten"}})
    check_targets({"trainer": {"_target_": "pytorch_lightning.Trainer", "max_steps": 10, "devices": "auto"}})
    check_targets({"x": {"_target_": "builtins.dict", "anything": 1}})  # **kwargs: nothing to check against


def test_sweep_check_composes_real_jobs_of_the_grid() -> None:
    """Each swept value is checked beside the other dimensions' first values, never beside a default no job uses:
    `model.n_hidden` fits every job of `model=lstm,lstm` although the default model (gpt) has no such key."""
    from lmlab.config.validate import check_overrides, grid_jobs

    assert grid_jobs(["p=1"], [["a=1", "a=2"], ["b=x", "b=y"]]) == [
        ["p=1", "a=1", "b=x"], ["p=1", "a=2", "b=x"], ["p=1", "a=1", "b=y"],
    ]  # fmt: skip
    check_overrides("train", ["-m", "model=lstm,lstm", "model.n_hidden=32"])  # no error
    with pytest.raises(LmlabError, match=r"model\.n_hidden is not a setting of model \(GPTConfig\)"):
        check_overrides("train", ["-m", "model=lstm,gpt", "model.n_hidden=32"])
