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
    ratio = min_ratio(optimizer, "cosine", total_steps, min_lr)
    return LambdaLR(optimizer, lambda step: warmup_cosine_factor(step, warmup_steps, total_steps, ratio))


def min_ratio(optimizer: Optimizer, name: str, total_steps: int, min_lr: float) -> float:
    """`min_lr` as a fraction of the peak lr of the first parameter group (`optimizer.lr`; with MuonAdamW the AdamW
    lr, and Muon's groups decay by the same fraction); raise `LmlabError` for a missing budget or a min above peak."""
    if total_steps < 1:
        raise LmlabError(
            f"scheduler.total_steps={total_steps}: the {name} schedule needs a step budget; set trainer.max_steps"
        )
    peak = optimizer.param_groups[0]["lr"]
    if min_lr > peak:
        raise LmlabError(f"scheduler.min_lr={min_lr} exceeds the peak optimizer.lr={peak}; lower min_lr")
    return min_lr / peak if peak > 0 else 1.0


DECAY_SHAPES = ("linear", "sqrt")


def wsd_factor(
    step: int, warmup_steps: int, total_steps: int, decay_fraction: float, min_ratio: float, shape: str = "linear"
) -> float:
    """Multiplier of the peak LR: linear warmup from 0, constant peak, then over the last `decay_fraction` of
    `total_steps` a decay to `min_ratio`, `linear` or `sqrt` (1 - sqrt(progress): falls fast, then flattens)."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    decay_steps = max(1, round(decay_fraction * total_steps))
    decay_start = total_steps - decay_steps
    if step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start) / decay_steps)
    drop = progress if shape == "linear" else math.sqrt(progress)
    return min_ratio + (1.0 - drop) * (1.0 - min_ratio)


def wsd(
    optimizer: Optimizer,
    warmup_steps: int,
    total_steps: int,
    min_lr: float,
    decay_fraction: float = 0.2,
    decay_shape: str = "linear",
) -> LambdaLR:
    """Warmup-stable-decay (MiniCPM; Hägele et al., 2024): linear warmup over `warmup_steps`, the peak lr until the
    last `decay_fraction` of `total_steps`, then a `decay_shape` decay to `min_lr` at `total_steps`."""
    ratio = min_ratio(optimizer, "wsd", total_steps, min_lr)
    if not 0.0 < decay_fraction <= 1.0:
        raise LmlabError(f"scheduler.decay_fraction={decay_fraction} must be in (0, 1]; e.g. 0.2")
    if decay_shape not in DECAY_SHAPES:
        raise LmlabError(f"scheduler.decay_shape={decay_shape!r} is unknown; choose one of: {', '.join(DECAY_SHAPES)}")
    return LambdaLR(
        optimizer, lambda step: wsd_factor(step, warmup_steps, total_steps, decay_fraction, ratio, decay_shape)
    )


def constant(optimizer: Optimizer, warmup_steps: int = 0) -> LambdaLR:
    """Constant LR after an optional linear warmup."""
    return LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / (warmup_steps + 1)))
