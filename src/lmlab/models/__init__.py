"""Models: plain `nn.Module`s with their config dataclasses. No Lightning, no Hydra."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from lmlab.errors import LmlabError
from lmlab.models.gpt import GPT, GPTConfig

ModelConfig = GPTConfig
"""Union of the model config dataclasses (grows with the model ladder)."""

_FAMILIES: dict[str, tuple[type, type[nn.Module]]] = {"gpt": (GPTConfig, GPT)}


def build_model(config: ModelConfig) -> nn.Module:
    """Instantiate the module that a config describes."""
    return _FAMILIES[config.family][1](config)


def model_config_to_dict(config: ModelConfig) -> dict[str, Any]:
    """Plain-data form of a config, with its family, for checkpoints and hyper-parameter logs."""
    return {"family": config.family, **dataclasses.asdict(config)}


def model_config_from_dict(data: dict[str, Any]) -> ModelConfig:
    """Inverse of `model_config_to_dict`."""
    fields = dict(data)
    family = fields.pop("family", None)
    if family not in _FAMILIES:
        raise LmlabError(f"unknown model family {family!r}; known families: {', '.join(sorted(_FAMILIES))}")
    return _FAMILIES[family][0](**fields)


__all__ = ["GPT", "GPTConfig", "ModelConfig", "build_model", "model_config_from_dict", "model_config_to_dict"]
