"""Autoregressive decoding: prompts of any lengths in one batch, with a KV cache, a carried state or a window.

A decoder maps the token matrix so far (B, S), prompts left-padded, to the next-token logits (B, V); it remembers
what it has already computed, so each step feeds it only the new column. Three kinds:

- `KVCacheDecoder` for models with `new_cache` / `forward_cached` (lmlab's GPT, `HFCausal`): prefill the prompts
  once, then one token per step. When a sequence outgrows `block_size` the cache is rebuilt from the last
  `block_size` tokens every step (a prefill of the window), so the output equals the windowed loop token for token,
  as nanoGPT's `generate` crops; past `block_size` the cache saves nothing.
- `RecurrentDecoder` for the LSTM: its state carries the whole history, so the context is never cropped.
- `WindowDecoder` for any other causal model (n-gram, ...): the model sees the last `block_size` tokens each step.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.generation.constraints import ConstrainedRows
from lmlab.generation.processors import LogitsProcessor, apply_processors
from lmlab.generation.sampling import SamplingOptions, apply_repetition_penalty, draw, process_logits
from lmlab.models.lstm import LSTM, LSTMState


class Decoder(Protocol):
    """Next-token logits (B, V) of the token matrix (B, S); each call adds columns to the previous call's."""

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor: ...


def left_pad(prompts: Sequence[Sequence[int]], device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts of token ids -> a left-padded matrix (B, S) (padding id 0) and the padding per row (B,)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise LmlabError("every prompt needs at least one token; give some text to continue")
    width = max(len(p) for p in prompts)
    tokens = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        tokens[row, width - len(prompt) :] = torch.as_tensor(list(prompt), dtype=torch.long)
    pad = torch.tensor([width - len(p) for p in prompts], dtype=torch.long)
    return tokens.to(device), pad.to(device)


def pad_groups(pad: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """Rows grouped by their padding: [(pad, row indices)], so each group runs without padding."""
    return [(int(p), (pad == p).nonzero().squeeze(1)) for p in torch.unique(pad).tolist()]


class KVCacheDecoder:
    """Prefill once, then one token per step through the model's KV cache (see the module docstring)."""

    def __init__(self, model: nn.Module, pad: torch.Tensor) -> None:
        self.model, self.pad = model, pad
        self.block_size: int = model.config.block_size
        self.cache = None
        self.start = 0  # column of the token matrix where the cache's first column sits

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        S = tokens.size(1)
        if self.cache is None or S - self.start > self.block_size:
            self.start = max(0, S - self.block_size)  # (re-)prefill the last block_size tokens
            self.cache = self.model.new_cache(tokens.size(0), (self.pad - self.start).clamp(min=0))
        new = tokens[:, self.start + self.cache.length :]  # (B, T) columns the cache has not seen
        logits, self.cache = self.model.forward_cached(new, self.cache, last_only=True)
        return logits[:, -1, :]


class RecurrentDecoder:
    """The LSTM's state carries the context: prompts run once (grouped by length), then one token per step."""

    def __init__(self, model: LSTM, pad: torch.Tensor) -> None:
        self.model, self.pad = model, pad
        self.state: LSTMState | None = None

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.state is not None:
            logits, self.state = self.model.step(tokens[:, -1:], self.state)
            return logits[:, -1, :]
        B, layers, hidden = tokens.size(0), self.model.config.n_layer, self.model.config.n_hidden
        h = tokens.new_zeros((layers, B, hidden), dtype=self.model.wte.weight.dtype)
        c, last = torch.zeros_like(h), None
        for pad, rows in pad_groups(self.pad):
            logits, (h_g, c_g) = self.model.step(tokens[rows, pad:])  # (b, T, V), 2 × (L, b, H)
            h[:, rows], c[:, rows] = h_g, c_g
            last = logits.new_zeros((B, logits.size(-1))) if last is None else last
            last[rows] = logits[:, -1, :]
        self.state = (h, c)
        return last


class WindowDecoder:
    """Any causal model: feed each row its last `block_size` tokens every step, groups of equal padding together."""

    def __init__(self, model: nn.Module, block_size: int, pad: torch.Tensor) -> None:
        self.model, self.block_size, self.pad = model, block_size, pad
        self.padded = bool(pad.any())

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        if not self.padded:
            return self.model(tokens[:, -self.block_size :])[:, -1, :]
        last = None
        for pad, rows in pad_groups(self.pad):
            logits = self.model(tokens[rows, pad:][:, -self.block_size :])[:, -1, :]  # (b, V)
            last = logits.new_zeros((tokens.size(0), logits.size(-1))) if last is None else last
            last[rows] = logits
        return last


def require_causal(config: object) -> None:
    """Refuse a model config that cannot generate (a bidirectional encoder), naming the fix."""
    if not getattr(config, "causal", True):
        raise LmlabError(
            f"model={getattr(config, 'family', '?')} is a bidirectional encoder (masked LM) and cannot generate "
            "text; give a checkpoint of a causal model (gpt, lstm, ngram)"
        )


def make_decoder(model: nn.Module, block_size: int, pad: torch.Tensor, use_cache: bool = True) -> Decoder:
    """The fastest exact decoder the model supports (`use_cache=False`: the plain windowed loop)."""
    require_causal(getattr(model, "config", None))
    if use_cache and hasattr(model, "forward_cached") and hasattr(model, "new_cache"):
        return KVCacheDecoder(model, pad)
    if use_cache and isinstance(model, LSTM):
        return RecurrentDecoder(model, pad)
    return WindowDecoder(model, block_size, pad)


def seen_ids(tokens: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """Token ids (B, S) with each row's padding replaced by its last token, so padding is never penalised."""
    columns = torch.arange(tokens.size(1), device=tokens.device)
    return torch.where(columns[None, :] >= pad[:, None], tokens, tokens[:, -1:])


@torch.no_grad()
def decode_steps(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    block_size: int,
    options: SamplingOptions | None = None,
    generators: Sequence[torch.Generator | None] | None = None,
    use_cache: bool = True,
    processors: Sequence[LogitsProcessor] = (),
    constraint: ConstrainedRows | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the next token id of every prompt (B,), step by step; stop iterating to stop decoding.

    `generators`: one per prompt (each row samples from its own seed) or a single one shared by the batch.
    `processors` run on each step's logits after the repetition penalty and before temperature, top-k, top-p and
    min-p, each row seeing its own ids (prompt + generated, no padding). `constraint` then leaves each row only the
    tokens that keep its match of a pattern completable in the tokens left, and follows the drawn tokens.
    """
    options = options or SamplingOptions()
    device = next(iter([*model.parameters(), *model.buffers()])).device
    prompt_ids, pad = left_pad(prompts, device)
    decoder = make_decoder(model, block_size, pad, use_cache)
    penalise = options.repetition_penalty != 1.0
    pads = pad.tolist()  # the processors group rows by padding on the host
    S = prompt_ids.size(1)
    tokens = prompt_ids.new_empty((prompt_ids.size(0), S + max_new_tokens))  # (B, S + N), filled step by step
    tokens[:, :S] = prompt_ids
    was_training = model.training
    model.eval()
    try:
        for end in range(S, S + max_new_tokens):
            logits = decoder(tokens[:, :end]).float()  # (B, V)
            if penalise:
                logits = apply_repetition_penalty(logits, seen_ids(tokens[:, :end], pad), options.repetition_penalty)
            logits = apply_processors(logits, tokens[:, :end], processors, pads)
            if constraint is not None:
                logits = constraint.mask(logits, remaining=S + max_new_tokens - end)
            if not options.greedy:
                logits = process_logits(logits, None, options)
            tokens[:, end : end + 1] = draw(logits, options.greedy, generators)  # (B, 1)
            if constraint is not None:
                constraint.advance(tokens[:, end])
            yield tokens[:, end]  # (B,) a view of the token matrix, never written again
    finally:
        model.train(was_training)


def generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    block_size: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Extend `idx` (B, T) by `max_new_tokens`, the model seeing at most its last `block_size` tokens."""
    options = SamplingOptions(temperature=temperature, top_k=top_k)
    generators = None if generator is None else [generator]
    steps = decode_steps(model, idx.tolist(), max_new_tokens, block_size, options, generators, use_cache)
    new = [step.to(idx.device) for step in steps]
    return torch.cat([idx, torch.stack(new, dim=1)], dim=1) if new else idx
