"""How big a model is: parameter counts, shared (tied) tensors counted once."""

from __future__ import annotations

from typing import NamedTuple

from torch import nn


class ParameterCounts(NamedTuple):
    """Parameters of a module: all of them, and those the optimizer updates."""

    total: int
    trainable: int


def parameter_counts(module: nn.Module) -> ParameterCounts:
    """All and trainable parameters of `module` (`parameters()` yields a tied tensor once)."""
    params = list(module.parameters())
    return ParameterCounts(sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad))


def count_parameters(model: nn.Module) -> int:
    """The model's own count where it defines one (tied weights once, n-gram entries), else its parameters."""
    count = getattr(model, "num_parameters", None)
    return int(count()) if callable(count) else parameter_counts(model).total


def non_embedding_parameters(module: nn.Module) -> int:
    """Parameters outside embedding tables (token and position lookups), Kaplan et al.'s N for scaling laws; a token
    table tied to the output head is left out too."""
    tables = {id(m.weight): m.weight.numel() for m in module.modules() if isinstance(m, nn.Embedding)}
    return parameter_counts(module).total - sum(tables.values())
