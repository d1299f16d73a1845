"""Learning-rate schedules as `LambdaLR` factories, bound to the optimizer by the task."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from lmlab.errors import LmlabError


def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Multiplier of the peak LR: linear warmup from 0, cosine decay to `min_ratio`, then flat."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if step >= total_steps:
        return min_ratio
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_ratio + 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - min_ratio)


def warmup_cosine(optimizer: Optimizer, warmup_steps: int, total_steps: int, min_lr: float) -> LambdaLR:
    """Linear warmup over `warmup_steps`, cosine decay to `min_lr` at `total_steps`."""
    if total_steps < 1:
        raise LmlabError(
            f"scheduler.total_steps={total_steps}: the cosine schedule needs a step budget; set trainer.max_steps"
        )
    peak = optimizer.param_groups[0]["lr"]
    if min_lr > peak:
        raise LmlabError(f"scheduler.min_lr={min_lr} exceeds the peak optimizer.lr={peak}; lower min_lr")
    ratio = min_lr / peak if peak > 0 else 1.0
    return LambdaLR(optimizer, lambda step: warmup_cosine_factor(step, warmup_steps, total_steps, ratio))


def constant(optimizer: Optimizer, warmup_steps: int = 0) -> LambdaLR:
    """Constant LR after an optional linear warmup."""
    return LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / (warmup_steps + 1)))
