"""Models: plain `nn.Module`s with their config dataclasses. No Lightning, no Hydra."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from lmlab.errors import LmlabError
from lmlab.models.bert import Bert, BertConfig
from lmlab.models.gpt import GPT, GPTConfig
from lmlab.models.hf_causal import HFCausal, HFCausalConfig
from lmlab.models.hf_encoder import HFEncoder, HFEncoderConfig
from lmlab.models.lstm import LSTM, LSTMConfig
from lmlab.models.ngram import NGram, NGramConfig

ModelConfig = GPTConfig | LSTMConfig | BertConfig | NGramConfig | HFEncoderConfig | HFCausalConfig
"""Any model config dataclass. Each has a `family` name and says whether it is `causal`."""

_FAMILIES: dict[str, tuple[type, type[nn.Module]]] = {
    "gpt": (GPTConfig, GPT),
    "lstm": (LSTMConfig, LSTM),
    "bert": (BertConfig, Bert),
    "ngram": (NGramConfig, NGram),
    "hf_encoder": (HFEncoderConfig, HFEncoder),
    "hf_causal": (HFCausalConfig, HFCausal),
}


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


def count_parameters(model: nn.Module) -> int:
    """The model's own count where it defines one (tied weights once, n-gram entries), else its parameters."""
    count = getattr(model, "num_parameters", None)
    return int(count()) if callable(count) else sum(p.numel() for p in model.parameters())


__all__ = [
    "GPT",
    "LSTM",
    "Bert",
    "BertConfig",
    "GPTConfig",
    "HFCausal",
    "HFCausalConfig",
    "HFEncoder",
    "HFEncoderConfig",
    "LSTMConfig",
    "ModelConfig",
    "NGram",
    "NGramConfig",
    "build_model",
    "count_parameters",
    "model_config_from_dict",
    "model_config_to_dict",
]
