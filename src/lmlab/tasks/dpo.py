"""Direct preference optimisation (DPO, Rafailov et al. 2023): raise the policy's log-probability of the preferred
completion over the dispreferred one, measured against a frozen reference model (the starting point), so the policy
learns the preference without drifting far from where it began.

For a pair (prompt x, chosen c, rejected r), with log π(y|x) summed over the completion's tokens only:

    loss = -log σ(β · [(log π(c|x) - log π_ref(c|x)) - (log π(r|x) - log π_ref(r|x))])

The reference is the starting policy: a frozen copy of it, or, for a policy whose LoRA adapters are still fresh (zero),
the same network with its adapters switched off (no copy, no extra memory). Metric names follow TRL's `DPOTrainer`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import Optimizer
from torchmetrics import MeanMetric

from lmlab.errors import LmlabError
from lmlab.models import ModelConfig, build_model, model_config_from_dict
from lmlab.tasks.base import OptimizerFactory, SchedulerFactory
from lmlab.tasks.sft import SFTTask

Batch = dict[str, Any]
"""A preference batch (`lmlab.data.preference`): `ids`, `targets` (2B, T), chosen rows first, and `pairs` = B."""

STATS = ("rewards_chosen", "rewards_rejected", "reward_margin", "reward_accuracy", "logps_chosen", "logps_rejected",
         "kl")  # fmt: skip
"""What is logged beside `loss`, as `train/<name>` and `val/<name>` (TRL: `rewards/chosen`, `rewards/margins`, ...)."""


def sequence_logps(
    token_loss: Callable[..., torch.Tensor], logits: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Summed log-probabilities (N,) of each row's targets (N, T) under logits (N, T, V); `IGNORE_INDEX` adds 0."""
    nats = token_loss(logits, targets, reduction="none").view(targets.shape)  # (N, T), fp32
    return -nats.sum(dim=-1)


def preference_stats(policy: torch.Tensor, reference: torch.Tensor, beta: float) -> dict[str, torch.Tensor]:
    """Per-pair loss and metrics (B,) from the summed log-probabilities (2B,) of the chosen rows then the rejected.

    `rewards_*` are DPO's implicit rewards β · (log π - log π_ref); `reward_accuracy` is 1 where the chosen reward
    is the higher; `kl` is log π(c|x) - log π_ref(c|x) on the chosen completions (nats per completion): how far the
    policy has moved from the reference on the preferred data. It is not an unbiased KL estimate, since the
    completions are not sampled from the policy, but it grows as the policy leaves the reference.
    """
    ratio = policy - reference  # (2B,) log π/π_ref of each completion
    chosen, rejected = ratio.chunk(2)  # (B,), (B,)
    logits = beta * (chosen - rejected)  # (B,)
    rewards_chosen, rewards_rejected = (beta * chosen).detach(), (beta * rejected).detach()
    logps_chosen, logps_rejected = policy.detach().chunk(2)
    return {
        "loss": -F.logsigmoid(logits),
        "rewards_chosen": rewards_chosen,
        "rewards_rejected": rewards_rejected,
        "reward_margin": rewards_chosen - rewards_rejected,
        "reward_accuracy": (rewards_chosen > rewards_rejected).float(),
        "logps_chosen": logps_chosen,
        "logps_rejected": logps_rejected,
        "kl": chosen.detach(),
    }


def adapter_switch(model: nn.Module) -> Callable[[], contextlib.AbstractContextManager] | None:
    """peft's `disable_adapter` context of a model with LoRA adapters (e.g. `model=hf_causal model.lora=true`)."""
    for module in model.modules():
        switch = getattr(module, "disable_adapter", None)
        if callable(switch):
            return switch
    return None


def fresh_adapters(model: nn.Module) -> bool:
    """Whether every LoRA update is still zero (`lora_B` starts at zero), so adapters off = the starting policy."""
    return all(not p.any() for name, p in model.named_parameters() if "lora_B" in name)


def without_dropout(model: nn.Module) -> None:
    """Dropout off in the policy, as TRL's `disable_dropout` does: with it the policy's log-probabilities are noisy
    and differ from the reference's at the start. Covers `nn.Dropout` layers and attention-probability dropout held
    as a rate (`dropout` in lmlab's attention, `attention_dropout` in transformers')."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for name in ("dropout", "attention_dropout"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)


class DPOTask(SFTTask):
    """Preference-tunes a causal model on `{prompt, chosen, rejected}` pairs (`data=preference_jsonl`).

    Logs `train/loss` and `val/loss` (the DPO loss; `val/loss` is the checkpoint monitor) and, under `train/` and
    `val/`, `rewards_chosen`, `rewards_rejected`, `reward_margin`, `reward_accuracy`, `logps_chosen`,
    `logps_rejected`, `kl` (see `preference_stats`). Plain-text windows or SFT rows given to validation (e.g.
    `lmlab eval text_file=...`) get the language-model metrics instead.

    The reference model is never trained or saved: it is rebuilt from the starting point (`init_from`, or the
    pretrained `model=hf_causal`) whenever the task is built (resuming, `lmlab eval`), so checkpoints hold the policy
    only, at the size of an SFT checkpoint, and load as a plain model. (A policy started from random weights, with
    no `init_from`, gets a new random reference when rebuilt.)

    Args:
        model, optimizer, scheduler, weight_decay, token_bytes, tokenizer_kind, init_from, init_weights: see
            `SFTTask`; `init_from` is the starting policy and the reference.
        beta: strength of the pull towards the reference (TRL's default 0.1); smaller lets the policy move further.
        disable_dropout: turn dropout off in the policy, as TRL does by default: with it on, the policy's
            log-probabilities are noisy and differ from the reference's (which always runs without) at the start.
    """

    def __init__(
        self,
        model: ModelConfig | dict[str, Any],
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        weight_decay: float = 0.0,
        token_bytes: Sequence[int] | None = None,
        tokenizer_kind: str | None = None,
        init_from: str | None = None,
        init_weights: bool = True,
        beta: float = 0.1,
        disable_dropout: bool = True,
    ) -> None:
        if not beta > 0:
            raise LmlabError(f"task.beta={beta} must be positive; DPO's usual values are 0.1 to 0.5")
        rebuilt = not init_from and getattr(as_config(model), "hf_config", None) is not None
        super().__init__(model, optimizer, scheduler, weight_decay, token_bytes, tokenizer_kind, init_from,
                         init_weights)  # fmt: skip
        self.beta = beta
        lora = adapter_switch(self.model) is not None and fresh_adapters(self.model)
        self.reference = None if lora else frozen_copy(self.pretrained() if rebuilt else self.model)
        """A frozen copy of the starting policy; None when the reference is the policy with its adapters off."""
        if disable_dropout:
            without_dropout(self.model)
        self.hparams.update(beta=beta, disable_dropout=disable_dropout)
        self.val_stats = nn.ModuleDict({name: MeanMetric() for name in ("loss", *STATS)})
        self._train_sums: dict[str, torch.Tensor] = {}

    def logps(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed completion log-probabilities (2B,) of the policy (with gradient) and of the reference."""
        ids, targets = batch["ids"], batch["targets"]  # (2B, T) each
        policy = sequence_logps(self.token_loss, self(ids), targets)
        reference = sequence_logps(self.token_loss, self.reference_logits(ids), targets)
        return policy, reference

    def pretrained(self) -> nn.Module:
        """`model=hf_causal` as pretrained, for the reference of a full fine-tune rebuilt from its own checkpoint
        (e.g. by `lmlab eval`): its config records the architecture, so the task built fresh weights."""
        return build_model(dataclasses.replace(self.model_config, hf_config=None))

    @torch.no_grad()
    def reference_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """The reference's logits (N, T, V) of ids (N, T): the policy with its adapters off, or the frozen copy in
        eval mode (set here: the task's `train()` reaches every submodule)."""
        if self.reference is None:
            with adapter_switch(self.model)():
                return self.model(ids)
        if self.reference.training:
            self.reference.eval()
        return self.reference(ids)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Refuse a training batch that is not preference pairs (e.g. `data=chat_jsonl`) before the first step."""
        trainer = self._trainer
        if trainer is None or trainer.training:
            check_pairs(batch)
        return super().on_before_batch_transfer(batch, dataloader_idx)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        stats = preference_stats(*self.logps(batch), self.beta)
        loss = stats["loss"].mean()
        self.log_train_loss(loss)
        for name in STATS:
            self._train_sums[name] = self._train_sums.get(name, 0.0) + stats[name].mean()
        return loss

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        """`train/<stat>`: the mean over the optimizer step's micro-batches (and processes), as `train/loss` is."""
        micro_batches = self._loss_count
        super().on_before_optimizer_step(optimizer)
        if micro_batches and self._train_sums and self.is_logging_step():
            for name, total in self._train_sums.items():
                mean = total / micro_batches
                if self.trainer.world_size > 1:
                    mean = self.trainer.strategy.reduce(mean, reduce_op="mean")
                self.log(f"train/{name}", mean.detach().cpu())
        self._train_sums = {}

    def validation_step(self, batch: Batch | tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        if not (isinstance(batch, dict) and "pairs" in batch):
            return super().validation_step(batch, batch_idx)
        stats = preference_stats(*self.logps(batch), self.beta)
        for name, values in stats.items():
            self.val_stats[name].update(values)

    def log_val_metrics(self) -> None:
        if not self.val_stats["loss"].update_called:
            return super().log_val_metrics()  # windows of text or SFT rows: the language-model metrics
        for name, metric in self.val_stats.items():
            self.log(f"val/{name}", metric.compute(), prog_bar=name in ("loss", "reward_accuracy"))
            metric.reset()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the reference out of checkpoints: it is rebuilt from the starting point, and would double the size."""
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith("reference.")]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resuming: the reference this task rebuilt from the starting point fills in what the checkpoint left out."""
        if self.reference is not None:
            state = checkpoint["state_dict"]
            for key, value in self.reference.state_dict().items():
                state.setdefault(f"reference.{key}", value)


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` that never trains: no gradients (the optimizer only sees `task.model`). It is put in eval
    mode when used (`DPOTask.reference_logits`), not here: Lightning warns of every module in eval mode at the start
    of training, which would alarm for what is intended."""
    reference = copy.deepcopy(model)
    reference.requires_grad_(False)
    return reference


def as_config(model: ModelConfig | dict[str, Any]) -> ModelConfig:
    """The model config of a task's `model` argument (its dict form as saved in checkpoints, or the dataclass)."""
    return model_config_from_dict(model) if isinstance(model, dict) else model


def check_pairs(batch: Batch) -> Batch:
    """A preference batch, or a one-line error naming the data to use (an SFT or text batch has no pairs)."""
    if not (isinstance(batch, dict) and "pairs" in batch):
        raise LmlabError("task=dpo trains on preference pairs; use data=preference_jsonl data.source.train=PAIRS.jsonl "
                         "(JSON Lines of {prompt, chosen, rejected})")  # fmt: skip
    return batch
