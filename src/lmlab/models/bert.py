"""A BERT-style bidirectional Transformer encoder with a masked-LM head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.models.flops import matmul_parameters, transformer_flops_per_token
from lmlab.models.layers import TransformerBody, TransformerConfig, init_gpt2_weights, make_norm


@dataclass
class BertConfig(TransformerConfig):
    """Shape of a BERT encoder (pre-norm blocks, unlike the original post-norm BERT, for stable training)."""

    dropout: float = 0.1
    """Dropout on embeddings, attention weights and residual branches."""
    bias: bool = True
    """Bias in Linear and LayerNorm layers."""

    family = "bert"
    causal = False


class Bert(TransformerBody):
    """Embeddings -> bidirectional blocks -> norm; `forward` adds the MLM head (dense, GELU, norm, tied decoder)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config, causal=False)
        self.mlm_dense = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.mlm_norm = make_norm(config)
        self.mlm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.mlm_head.weight = self.wte.weight  # tied decoder, as in BERT
        init_gpt2_weights(self, config.n_layer)

    def forward(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Masked-LM logits (B, T, vocab_size)."""
        h = self.hidden_states(idx, attention_mask)
        return self.mlm_head(self.mlm_norm(F.gelu(self.mlm_dense(h))))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token at context `seq_len` (default block_size); see `lmlab.models.flops`."""
        c = self.config
        return transformer_flops_per_token(matmul_parameters(self), c.n_layer, c.n_embd, seq_len or c.block_size)
