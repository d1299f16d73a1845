"""A GPT-style decoder: pre-norm Transformer blocks with causal self-attention, readable in one sitting."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.models.flops import matmul_parameters, transformer_flops_per_token
from lmlab.models.layers import KVCache, TransformerBody, TransformerConfig, init_gpt2_weights


@dataclass
class GPTConfig(TransformerConfig):
    """Shape of a GPT decoder (fields: see `TransformerConfig`)."""

    family = "gpt"
    causal = True

    tie_embeddings: bool = True
    """Share one matrix between the token embedding and the output head (GPT-2). false: a separate `lm_head` weight,
    vocab_size × n_embd more parameters (and memory), but input and output embeddings may then learn different roles
    (modded-nanogpt unties them)."""


class GPT(TransformerBody):
    """Token (+ learned position) embeddings -> causal blocks -> norm -> logits over the vocabulary (tied head by
    default)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__(config, causal=True)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight  # weight tying
        init_gpt2_weights(self, config.n_layer)

    def forward(self, idx: torch.Tensor, segments: torch.Tensor | None = None) -> torch.Tensor:
        """Map token ids (B, T) to next-token logits (B, T, vocab_size); `segments` (B, T) numbers the examples packed
        into each row (see `TransformerBody.hidden_states`)."""
        return self.lm_head(self.hidden_states(idx, segments=segments))

    def new_cache(self, batch_size: int, pad: torch.Tensor | None = None) -> KVCache:
        """An empty KV cache for `batch_size` rows, room for `block_size` tokens; `pad` (B,) as in `KVCache`."""
        weight = self.wte.weight
        pad = torch.zeros(batch_size, dtype=torch.long, device=weight.device) if pad is None else pad.to(weight.device)
        c = self.config
        shape = (batch_size, c.n_head, c.block_size, c.n_embd // c.n_head)
        return KVCache.empty(c.n_layer, shape, pad.long(), weight.dtype)

    def forward_cached(
        self, idx: torch.Tensor, cache: KVCache, last_only: bool = False
    ) -> tuple[torch.Tensor, KVCache]:
        """Logits (B, T, vocab_size) of ids (B, T) that follow the `cache.length` tokens already in `cache`.

        Only the new tokens are computed; their keys and values are appended to `cache` (in place), which is
        returned. Prefill a prompt with one call, then feed one token per step. Same logits as `forward` on the
        whole sequence; a sequence cannot outgrow `block_size` (crop it and prefill a new cache). `last_only`:
        logits (B, 1, vocab_size) of the last new token only, all a decoder needs (the head is not run on the rest).
        """
        T = idx.size(1)
        start = cache.length
        if start + T > cache.capacity:
            raise LmlabError(
                f"{start} cached + {T} new tokens exceed model.block_size={cache.capacity}; crop the context and "
                "prefill a new cache"
            )
        columns = torch.arange(start, start + T, device=idx.device)  # (T,)
        positions = (columns[None, :] - cache.pad[:, None]).clamp(min=0)  # (B, T): counted from each row's start
        x = self.embed(idx, positions)  # (B, T, C)
        mask = self._cache_mask(cache, start, T)
        for block, keys, values in zip(self.blocks, cache.keys, cache.values, strict=True):
            x = block.forward_cached(x, keys, values, start=start, positions=positions, mask=mask)
        cache.length = start + T
        if last_only:
            x = x[:, -1:]  # (B, 1, C): norm and head are per position
        return self.lm_head(self.final_norm(x)), cache

    @staticmethod
    def _cache_mask(cache: KVCache, start: int, T: int) -> torch.Tensor | None:
        """(B, 1, T, start+T) True where a new token may attend, or None where plain attention is exact."""
        if not cache.padded and (T == 1 or start == 0):
            return None
        keys = torch.arange(start + T, device=cache.pad.device)  # (S,) key columns
        queries = keys[start:, None]  # (T, 1) query columns
        real = keys[None, :] >= cache.pad[:, None]  # (B, S)
        own = keys[None, :] == queries  # (T, S): a padding query sees itself, so no row of scores is all -inf
        return ((keys[None, :] <= queries)[None] & (real[:, None, :] | own[None]))[:, None]  # (B, 1, T, S)

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Parameters counted once (tied weights once); `non_embedding` leaves out the lookup-only tables: the
        position table, and the token table where it is not also the output head (untied)."""
        if non_embedding:
            return matmul_parameters(self)
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token at context `seq_len` (default block_size); see `lmlab.models.flops`."""
        c = self.config
        return transformer_flops_per_token(self.num_parameters(non_embedding=True), c.n_layer, c.n_embd,
                                           seq_len or c.block_size)  # fmt: skip
