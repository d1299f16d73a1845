"""A BERT-style bidirectional Transformer encoder with a masked-LM head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.errors import LmlabError
from lmlab.models.layers import Block, check_transformer_shape, init_gpt2_weights, make_norm


@dataclass
class BertConfig:
    """Shape of a BERT encoder (pre-norm blocks, unlike the original post-norm BERT, for stable training)."""

    vocab_size: int = 256
    """Number of token ids (set from the tokenizer)."""
    block_size: int = 64
    """Longest input in tokens."""
    n_layer: int = 4
    """Transformer blocks."""
    n_head: int = 4
    """Attention heads per block."""
    n_embd: int = 128
    """Residual stream width."""
    dropout: float = 0.1
    """Dropout on embeddings, attention weights and residual branches."""
    bias: bool = True
    """Bias in Linear and LayerNorm layers."""
    norm: str = "layernorm"
    """`layernorm` or `rmsnorm`."""
    pos_embedding: str = "learned"
    """`learned` position table or `rope`."""

    family = "bert"
    causal = False

    def __post_init__(self) -> None:
        check_transformer_shape(self)


class Bert(nn.Module):
    """Embeddings -> bidirectional blocks -> norm; `forward` adds the MLM head (dense, GELU, norm, tied decoder)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd) if config.pos_embedding == "learned" else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, causal=False) for _ in range(config.n_layer))
        self.ln_f = make_norm(config)
        self.mlm_dense = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.mlm_norm = make_norm(config)
        self.mlm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.mlm_head.weight = self.wte.weight  # tied decoder, as in BERT
        init_gpt2_weights(self, config.n_layer)

    def hidden_states(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Contextual embeddings (B, T, C) of ids (B, T); `attention_mask` (B, T) is 1 for real tokens, 0 for pad."""
        T = idx.size(1)
        if self.config.block_size < T:
            raise LmlabError(f"input of {T} tokens is longer than model.block_size={self.config.block_size}")
        x = self.wte(idx)  # (B, T, C)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(T, device=idx.device))
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, attention_mask)
        return self.ln_f(x)

    def forward(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Masked-LM logits (B, T, vocab_size)."""
        h = self.hidden_states(idx, attention_mask)
        return self.mlm_head(self.mlm_norm(F.gelu(self.mlm_dense(h))))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
