"""Supervised fine-tuning for generation: next-token loss on the assistant's replies only (the SFT DataModule marks
every other target `IGNORE_INDEX`), optionally on packed rows whose `segments` keep the examples apart."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lmlab.errors import LmlabError
from lmlab.models import ModelConfig
from lmlab.tasks.base import OptimizerFactory, SchedulerFactory
from lmlab.tasks.causal_lm import CausalLMTask
from lmlab.tasks.finetune import load_backbone

Batch = dict[str, torch.Tensor]
"""`ids` (B, T), `targets` (B, T) with -100 where not trained, and `segments` (B, T) when packed."""

PACKING_FAMILIES = ("gpt", "hf_causal")
"""Model families whose forward takes `segments` (attention within an example, positions restarting at each)."""


class SFTTask(CausalLMTask):
    """Fine-tunes (or trains from scratch) a causal model on conversations; logs `train/loss` and `val/loss`,
    `val/ppl`, `val/bpb` over the reply tokens.

    Args:
        model, optimizer, scheduler, weight_decay, token_bytes, tokenizer_kind: see `CausalLMTask`.
        init_from: an lmlab checkpoint (or run directory) whose model weights training starts from (`lmlab train`
            takes the model config and tokenizer from it too).
        init_weights: False keeps random weights: `init_from` then gives only the model config and tokenizer.
    """

    def __init__(
        self,
        model: ModelConfig | dict[str, Any],
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        weight_decay: float = 0.1,
        token_bytes: Sequence[int] | None = None,
        tokenizer_kind: str | None = None,
        init_from: str | None = None,
        init_weights: bool = True,
    ) -> None:
        super().__init__(model, optimizer, scheduler, weight_decay, token_bytes, tokenizer_kind)
        if init_from and init_weights:
            load_backbone(self.model, init_from, self.model_config)
        self.hparams.update(init_from=str(init_from) if init_from else None, init_weights=init_weights)

    def check_model(self, config: ModelConfig) -> None:
        super().check_model(config)
        if config.family == "ngram":
            raise LmlabError(
                "task=sft trains by gradient steps and model=ngram counts; use model=gpt, lstm or hf_causal"
            )

    def forward(self, idx: torch.Tensor, segments: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, V) of ids (B, T); `segments` (B, T) numbers the packed examples of each row."""
        if segments is None:
            return self.model(idx)
        if self.model_config.family not in PACKING_FAMILIES:
            raise LmlabError(
                f"data.packing=true needs a model that keeps packed examples apart ({', '.join(PACKING_FAMILIES)}), "
                f"not model={self.model_config.family}; set data.packing=false"
            )
        return self.model(idx, segments=segments)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Refuse a training batch without a trained token while it is still on the CPU (no device sync): its loss
        would be NaN, or a silent zero."""
        trainer = self._trainer
        if (trainer is None or trainer.training) and isinstance(batch, dict):
            check_trained(batch["targets"])
        return batch

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        logits = self(batch["ids"], batch.get("segments"))
        loss = self.loss(logits, batch["targets"])  # mean over the micro-batch's trained tokens
        self.log_train_loss(loss)
        return loss

    def validation_step(self, batch: Batch | tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """Score SFT rows, or (x, y) windows of plain text (`lmlab eval text_file=...` on an SFT checkpoint)."""
        if not isinstance(batch, dict):
            return super().validation_step(batch, batch_idx)
        self.update_val_metrics(self(batch["ids"], batch.get("segments")), batch["targets"])


def check_trained(targets: torch.Tensor) -> None:
    """Raise when targets (B, T) hold no trained token (all `IGNORE_INDEX`)."""
    if not bool((targets >= 0).any()):
        raise LmlabError(
            "a training batch has no reply token to learn (every target is prompt or padding); use SFT data with "
            "assistant turns that fit model.block_size, or set data.train_on_prompt=true"
        )
