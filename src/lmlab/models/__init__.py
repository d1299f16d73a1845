"""Models: plain `nn.Module`s with their config dataclasses, and the one family registry. No Lightning, no Hydra."""

from __future__ import annotations

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
from lmlab.models.size import ParameterCounts, count_parameters, parameter_counts

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
    "ParameterCounts",
    "build_model",
    "count_parameters",
    "family_of",
    "model_config_from_dict",
    "model_config_to_dict",
    "parameter_counts",
    "register_family",
]
