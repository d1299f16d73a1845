"""Tasks: LightningModules that define objectives, metrics and optimizer wiring. No architecture code."""

from __future__ import annotations

from lmlab.tasks.causal_lm import CausalLMTask, decay_groups
from lmlab.tasks.schedules import constant, warmup_cosine, warmup_cosine_factor

__all__ = ["CausalLMTask", "constant", "decay_groups", "warmup_cosine", "warmup_cosine_factor"]
