"""The one table of model families: adding a model is one `register_family` call.

Everything that needs to know the families reads this table: building a model from its config, rebuilding a config
from a checkpoint, and the typed config schemas (and default `model=<name>` choices) that `lmlab.config` makes for
Hydra. A family's config is a dataclass with a `family` name and a `causal` flag; its module takes that config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import nn

from lmlab.errors import LmlabError


@dataclass(frozen=True)
class ModelFamily:
    """A model family: its config dataclass and the `nn.Module` built from it."""

    name: str
    config: type
    module: type[nn.Module]


FAMILIES: dict[str, ModelFamily] = {}
"""Registered families by name (the config's `family`, also its `model=` schema name)."""


def register_family(config: type, module: type[nn.Module]) -> ModelFamily:
    """Add a family, named by `config.family`; registering the same pair again is a no-op."""
    name = getattr(config, "family", None)
    if not isinstance(name, str) or not dataclasses.is_dataclass(config):
        raise TypeError(f"{config.__name__} must be a dataclass with a class attribute `family` (its name)")
    if not isinstance(getattr(config, "causal", None), bool):
        raise TypeError(f"{config.__name__} must say whether the model is causal: class attribute `causal = True`")
    family = ModelFamily(name, config, module)
    if FAMILIES.get(name, family) != family:
        raise ValueError(f"model family {name!r} is already registered with {FAMILIES[name].config.__name__}")
    FAMILIES[name] = family
    return family


def family_of(name: str | None) -> ModelFamily:
    """The registered family called `name`, or a one-line error listing the known ones."""
    if name not in FAMILIES:
        raise LmlabError(f"unknown model family {name!r}; known families: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


def build_model(config: Any) -> nn.Module:
    """Instantiate the module that a config describes."""
    return family_of(config.family).module(config)


def model_config_to_dict(config: Any) -> dict[str, Any]:
    """Plain-data form of a config, with its family, for checkpoints and hyper-parameter logs."""
    return {"family": config.family, **dataclasses.asdict(config)}


def model_config_from_dict(data: dict[str, Any]) -> Any:
    """Inverse of `model_config_to_dict`."""
    fields = dict(data)
    return family_of(fields.pop("family", None)).config(**fields)
