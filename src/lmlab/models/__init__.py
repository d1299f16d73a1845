"""Models: plain `nn.Module`s with their config dataclasses, and the one family registry. No Lightning, no Hydra."""

from __future__ import annotations

from torch import nn

from lmlab.models.bert import Bert, BertConfig
from lmlab.models.gpt import GPT, GPTConfig
from lmlab.models.hf_causal import HFCausal, HFCausalConfig
from lmlab.models.hf_encoder import HFEncoder, HFEncoderConfig
from lmlab.models.lstm import LSTM, LSTMConfig
from lmlab.models.ngram import NGram, NGramConfig
from lmlab.models.registry import (
    FAMILIES,
    ModelFamily,
    build_model,
    family_of,
    model_config_from_dict,
    model_config_to_dict,
    register_family,
)

ModelConfig = GPTConfig | LSTMConfig | BertConfig | NGramConfig | HFEncoderConfig | HFCausalConfig
"""The built-in model config dataclasses (any registered family's config works where one is expected)."""

for _config, _module in (
    (GPTConfig, GPT),
    (LSTMConfig, LSTM),
    (BertConfig, Bert),
    (NGramConfig, NGram),
    (HFEncoderConfig, HFEncoder),
    (HFCausalConfig, HFCausal),
):
    register_family(_config, _module)


def count_parameters(model: nn.Module) -> int:
    """The model's own count where it defines one (tied weights once, n-gram entries), else its parameters."""
    count = getattr(model, "num_parameters", None)
    return int(count()) if callable(count) else sum(p.numel() for p in model.parameters())


__all__ = [
    "FAMILIES",
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
    "ModelFamily",
    "NGram",
    "NGramConfig",
    "build_model",
    "count_parameters",
    "family_of",
    "model_config_from_dict",
    "model_config_to_dict",
    "register_family",
]
