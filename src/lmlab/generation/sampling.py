"""Sampling as small pure functions over next-token logits (B, V), and the choice of one token per row."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lmlab.errors import LmlabError


@dataclass
class SamplingOptions:
    """How the next token is chosen from the model's logits."""

    temperature: float = 1.0
    """Divides the logits; 0 picks the most likely token (greedy)."""
    top_k: int | None = None
    """Keep only the k most likely tokens (None or 0: all)."""
    top_p: float | None = None
    """Keep the smallest set of most likely tokens whose probability reaches p (nucleus; None or 1.0: all)."""
    min_p: float | None = None
    """Keep the tokens at least `min_p` times as likely as the most likely one, after the temperature (None or 0:
    all); the most likely always stays."""
    repetition_penalty: float = 1.0
    """> 1 discourages tokens already in the sequence (CTRL's rule: positive logits divided, negative multiplied)."""

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise LmlabError(f"temperature={self.temperature} must be >= 0 (0 = greedy), e.g. temperature=0.8")
        if self.top_k is not None and self.top_k < 0:
            raise LmlabError(f"top_k={self.top_k} must be >= 0 (0 or null = no limit), e.g. top_k=40")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise LmlabError(f"top_p={self.top_p} must lie in (0, 1] (1 or null = no limit), e.g. top_p=0.9")
        if self.min_p is not None and not 0 <= self.min_p <= 1:
            raise LmlabError(f"min_p={self.min_p} must lie in [0, 1] (0 or null = off), e.g. min_p=0.05")
        if not self.repetition_penalty > 0:
            raise LmlabError(f"repetition_penalty={self.repetition_penalty} must be > 0 (1 = off), e.g. 1.2")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide logits (..., V) by the temperature (> 0)."""
    return logits / temperature


def apply_top_k(logits: torch.Tensor, k: int | None) -> torch.Tensor:
    """Keep the `k` largest logits (..., V) per row, set the rest to -inf."""
    if k is None or k <= 0 or k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, p: float | None) -> torch.Tensor:
    """Nucleus filtering of logits (..., V): keep the most likely tokens until their probability reaches `p`.

    A token is dropped when the tokens more likely than it already hold at least `p`; the most likely always stays.
    """
    if p is None or p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (..., V)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs  # (..., V) probability of the tokens ranked above
    drop_sorted = mass_before >= p
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty on logits (B, V) for the token ids `seen` (B, S) of each row.

    A seen token's positive logit is divided by `penalty`, a negative one multiplied, so either way it becomes less
    likely for penalty > 1 (as Hugging Face's `RepetitionPenaltyLogitsProcessor`). Repeats in `seen` count once.
    """
    if penalty == 1.0 or seen.numel() == 0:
        return logits
    scores = logits.gather(-1, seen)  # (B, S)
    scores = torch.where(scores < 0, scores * penalty, scores / penalty)
    return logits.scatter(-1, seen, scores)


def apply_min_p(logits: torch.Tensor, min_p: float | None) -> torch.Tensor:
    """Min-p filtering of logits (B, V): drop tokens less likely than `min_p` times the most likely (which stays)."""
    if not min_p:
        return logits
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    top = probs.max(dim=-1, keepdim=True)  # (B, 1) each row's most likely token
    drop = probs < min_p * top.values
    drop.scatter_(-1, top.indices, False)  # even when every probability underflows, the top token stays
    return logits.masked_fill(drop, float("-inf"))


def process_logits(logits: torch.Tensor, seen: torch.Tensor | None, options: SamplingOptions) -> torch.Tensor:
    """Repetition penalty, then temperature, top-k, top-p and min-p, in Hugging Face's order (greedy decoding needs
    only the first)."""
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, options.repetition_penalty)
    if options.greedy:
        return logits
    logits = apply_temperature(logits, options.temperature)
    return apply_min_p(apply_top_p(apply_top_k(logits, options.top_k), options.top_p), options.min_p)


def draw(
    logits: torch.Tensor, greedy: bool = False, generators: Sequence[torch.Generator | None] | None = None
) -> torch.Tensor:
    """One token id per row of processed logits (B, V): the argmax, or a draw from the softmax. Returns (B, 1).

    With one generator per row each row's draws depend on its own seed only, so a sequence samples the same text
    whether it is decoded alone or in a batch.
    """
    if greedy:
        return logits.argmax(dim=-1, keepdim=True)
    probs = torch.softmax(logits.float(), dim=-1)  # (B, V)
    if generators is None:
        return torch.multinomial(probs, num_samples=1)
    if len(generators) == 1:
        return torch.multinomial(probs, num_samples=1, generator=generators[0])
    rows = [torch.multinomial(row, num_samples=1, generator=g) for row, g in zip(probs, generators, strict=True)]
    return torch.stack(rows)  # (B, 1)


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """Draw one token id per row from logits (B, V); temperature 0 means greedy. Returns (B, 1)."""
    options = SamplingOptions(temperature=temperature, top_k=top_k, top_p=top_p)
    return draw(process_logits(logits, None, options), options.greedy, None if generator is None else [generator])
