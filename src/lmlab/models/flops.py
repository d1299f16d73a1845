"""Training FLOPs per token, the count behind model-FLOPs utilisation (MFU).

The count is the one nanoGPT's `estimate_mfu` and the PaLM paper use: every weight that takes part in a matrix
multiply costs 2 FLOPs per token forward and 4 backward (6·N), and attention adds 12·n_layer·n_embd·T
(scores and weighted sum, forward and backward, over a context of T tokens; counted in full even when causal).

N counts each such weight once: all parameters, minus embedding tables used only as lookups (a position table, a
token table that is not also the output head). For lmlab's GPT this is nanoGPT's `get_num_params()` (which leaves
out the position table). Norm gains and biases are counted too; they change N by well under 1 %.
"""

from __future__ import annotations

from torch import nn


def matmul_parameters(model: nn.Module) -> int:
    """Parameters that take part in matrix multiplies, each counted once (tied weights once)."""
    linear = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    lookups = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)} - linear
    seen: set[int] = set()
    total = 0
    for p in model.parameters():  # `parameters()` already yields a shared tensor once
        if id(p) not in lookups and id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def transformer_flops_per_token(matmul_params: int, n_layer: int, n_embd: int, seq_len: int) -> float:
    """Training FLOPs (forward + backward) per token: 6·N + 12·n_layer·n_embd·seq_len."""
    return 6.0 * matmul_params + 12.0 * n_layer * n_embd * seq_len


def flops_per_token(model: nn.Module, seq_len: int) -> float | None:
    """The model's own estimate (`model.flops_per_token(seq_len)`), or None where it gives none (e.g. n-grams)."""
    estimate = getattr(model, "flops_per_token", None)
    return float(estimate(seq_len)) if callable(estimate) else None
