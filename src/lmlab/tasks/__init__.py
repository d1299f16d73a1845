"""Tasks: LightningModules that define objectives, metrics and optimizer wiring. No architecture code."""

from __future__ import annotations

from lmlab.tasks.base import ModelTask, decay_groups
from lmlab.tasks.causal_lm import CausalLMTask
from lmlab.tasks.classification import ClassificationTask
from lmlab.tasks.dpo import DPOTask
from lmlab.tasks.masked_lm import MaskedLMTask, mask_tokens
from lmlab.tasks.optimizers import MuonAdamW
from lmlab.tasks.probe import LinearProbeTask
from lmlab.tasks.schedules import constant, warmup_cosine, warmup_cosine_factor, wsd, wsd_factor
from lmlab.tasks.sft import SFTTask

__all__ = [
    "CausalLMTask",
    "ClassificationTask",
    "DPOTask",
    "LinearProbeTask",
    "MaskedLMTask",
    "ModelTask",
    "MuonAdamW",
    "SFTTask",
    "constant",
    "decay_groups",
    "mask_tokens",
    "warmup_cosine",
    "warmup_cosine_factor",
    "wsd",
    "wsd_factor",
]
