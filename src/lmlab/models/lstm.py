"""The classic recurrent language model: embedding -> multi-layer LSTM -> linear head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.models.flops import matmul_parameters

LSTMState = tuple[torch.Tensor, torch.Tensor]


@dataclass
class LSTMConfig:
    """Shape of an LSTM language model."""

    vocab_size: int = 256
    """Number of token ids (set from the tokenizer)."""
    block_size: int = 64
    """Training window in tokens (truncated backpropagation through time); generation is not limited by it."""
    n_layer: int = 2
    """Stacked LSTM layers."""
    n_embd: int = 128
    """Token embedding width."""
    n_hidden: int = 256
    """LSTM hidden state width."""
    dropout: float = 0.0
    """Dropout on embeddings, between LSTM layers and before the head."""
    tie_weights: bool = False
    """Share the embedding with the output layer (adds an n_hidden -> n_embd projection when they differ)."""

    family = "lstm"
    causal = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_embd", "n_hidden"):
            if getattr(self, name) < 1:
                raise LmlabError(f"model.{name}={getattr(self, name)} must be a positive integer")
        if not 0.0 <= self.dropout < 1.0:
            raise LmlabError(f"model.dropout={self.dropout} must be in [0, 1)")


class LSTM(nn.Module):
    """Recurrent LM; `forward` returns logits, `step` also returns the state for token-by-token decoding."""

    def __init__(self, config: LSTMConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.rnn = nn.LSTM(
            config.n_embd,
            config.n_hidden,
            num_layers=config.n_layer,
            dropout=config.dropout if config.n_layer > 1 else 0.0,
            batch_first=True,
        )
        tie_projection = config.tie_weights and config.n_hidden != config.n_embd
        self.proj = nn.Linear(config.n_hidden, config.n_embd, bias=False) if tie_projection else None
        self.lm_head = nn.Linear(config.n_embd if config.tie_weights else config.n_hidden, config.vocab_size)
        if config.tie_weights:
            self.lm_head.weight = self.wte.weight
        nn.init.normal_(self.wte.weight, mean=0.0, std=0.02)

    def step(self, idx: torch.Tensor, state: LSTMState | None = None) -> tuple[torch.Tensor, LSTMState]:
        """Logits (B, T, V) for ids (B, T) continuing from `state`, and the state after the last token."""
        h, state = self.rnn(self.drop(self.wte(idx)), state)  # (B, T, H)
        h = self.drop(h)
        if self.proj is not None:
            h = self.proj(h)
        return self.lm_head(h), state

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        """Top-layer LSTM outputs (B, T, n_hidden) of ids (B, T) from a zero state (features for a task head)."""
        return self.rnn(self.drop(self.wte(idx)))[0]

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Map token ids (B, T) to next-token logits (B, T, vocab_size), starting from a zero state."""
        return self.step(idx)[0]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token: 6·N over the gate, projection and head matrices (the recurrence costs the
        same per token at any length, so `seq_len` does not enter); see `lmlab.models.flops`."""
        return 6.0 * matmul_parameters(self)
