"""Pooling a sequence of hidden states into one vector per text, ignoring padding."""

from __future__ import annotations

import torch

from lmlab.errors import LmlabError

POOLINGS = ("last", "mean", "cls")
"""`last`: the last real token (causal models: the only position that has read the whole text); `mean`: the mean
over real tokens; `cls`: the first token (an encoder's [CLS])."""


def last_token_pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hidden state (B, C) at the last real token of each row of h (B, T, C); mask (B, T) is 1 for real tokens.

    Works for right and left padding alike: it picks the highest position whose mask is 1.
    """
    T = h.size(1)
    positions = torch.arange(T, device=h.device).expand_as(mask) * mask.long()  # (B, T), 0 where padding
    last = positions.argmax(dim=1)  # (B,)
    return h[torch.arange(h.size(0), device=h.device), last]  # (B, C)


def mean_pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean (B, C) of h (B, T, C) over the real tokens of each row."""
    weights = mask.to(h.dtype).unsqueeze(-1)  # (B, T, 1)
    return (h * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def pool(h: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """Pool h (B, T, C) to (B, C) as `how` says (one of `POOLINGS`)."""
    if how == "last":
        return last_token_pool(h, mask)
    if how == "mean":
        return mean_pool(h, mask)
    if how == "cls":
        return h[:, 0]
    raise LmlabError(f"task.pooling={how!r} is unknown; choose one of: {', '.join(POOLINGS)}")


def default_pooling(causal: bool, pooling: str | None) -> str:
    """The pooling to use: as given, else `last` for causal models and `cls` for encoders; refuse a bad match."""
    how = pooling or ("last" if causal else "cls")
    if how not in POOLINGS:
        raise LmlabError(f"task.pooling={how!r} is unknown; choose one of: {', '.join(POOLINGS)}")
    if causal and how == "cls":
        raise LmlabError(
            "task.pooling=cls reads the first token, which a causal model computes before seeing the text; "
            "use task.pooling=last or task.pooling=mean"
        )
    return how
