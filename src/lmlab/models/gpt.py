"""A GPT-style decoder: pre-norm Transformer blocks with causal self-attention, readable in one sitting."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.models.layers import Block, check_transformer_shape, init_gpt2_weights, make_norm


@dataclass
class GPTConfig:
    """Shape of a GPT decoder."""

    vocab_size: int = 256
    """Number of token ids (set from the tokenizer)."""
    block_size: int = 64
    """Longest context in tokens."""
    n_layer: int = 4
    """Transformer blocks."""
    n_head: int = 4
    """Attention heads per block."""
    n_embd: int = 128
    """Residual stream width."""
    dropout: float = 0.0
    """Dropout on embeddings, attention weights and residual branches."""
    bias: bool = False
    """Bias in Linear and LayerNorm layers (GPT-2 uses bias; without is a little faster and as good)."""
    norm: str = "layernorm"
    """`layernorm` (GPT-2) or `rmsnorm` (Llama)."""
    pos_embedding: str = "learned"
    """`learned` position table (GPT-2) or `rope`, rotary embeddings on queries and keys (Llama)."""

    family = "gpt"
    causal = True

    def __post_init__(self) -> None:
        check_transformer_shape(self)


class GPT(nn.Module):
    """Token (+ learned position) embeddings -> causal blocks -> norm -> logits over the vocabulary (tied)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd) if config.pos_embedding == "learned" else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, causal=True) for _ in range(config.n_layer))
        self.ln_f = make_norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        init_gpt2_weights(self, config.n_layer)

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        """Final normalised hidden states (B, T, C) of token ids (B, T)."""
        T = idx.size(1)
        if self.config.block_size < T:
            raise LmlabError(f"input of {T} tokens is longer than model.block_size={self.config.block_size}")
        x = self.wte(idx)  # (B, T, C)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(T, device=idx.device))
        x = self.drop(x)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Map token ids (B, T) to next-token logits (B, T, vocab_size)."""
        return self.lm_head(self.hidden_states(idx))

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Parameters counted once (tied weights once); `non_embedding` leaves out the position table."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding and self.wpe is not None else n
