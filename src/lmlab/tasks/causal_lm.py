"""Causal language modelling: next-token cross-entropy, with perplexity and bits per byte on validation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchmetrics import SumMetric

from lmlab.errors import LmlabError
from lmlab.models import ModelConfig
from lmlab.tasks.base import ModelTask, OptimizerFactory, SchedulerFactory
from lmlab.tokenizers import Tokenizer


class CausalLMTask(ModelTask):
    """Trains any causal model of the ladder on `(x, y)` windows; counting models (n-gram) count instead.

    Args:
        model, optimizer, scheduler, weight_decay: see `ModelTask`.
        token_bytes: UTF-8 bytes of each token id, so validation reports bits per byte.
        tokenizer_kind: the run's tokenizer kind; a pretrained `hf_causal` model needs its own (`hf`).
    """

    def __init__(
        self,
        model: ModelConfig | dict[str, Any],
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        weight_decay: float = 0.1,
        token_bytes: Sequence[int] | None = None,
        tokenizer_kind: str | None = None,
    ) -> None:
        family = model.get("family") if isinstance(model, dict) else model.family
        if family == "hf_causal" and tokenizer_kind not in (None, "hf"):
            raise LmlabError(
                f"model=hf_causal needs the model's own tokenizer, not tokenizer={tokenizer_kind}; use tokenizer=hf "
                "tokenizer.name_or_path=<the model folder or .gguf> (experiment=smollm2_shakespeare does)"
            )
        super().__init__(model, optimizer, scheduler, weight_decay)
        vocab_size = self.model_config.vocab_size
        bytes_per_id = torch.ones(vocab_size) if token_bytes is None else torch.tensor(token_bytes)
        self.register_buffer("token_bytes", bytes_per_id.float())
        self.val_nats = SumMetric()
        self.val_tokens = SumMetric()
        self.val_bytes = SumMetric()

    def check_model(self, config: ModelConfig) -> None:
        if not config.causal:
            raise LmlabError(
                f"task=causal_lm cannot train model={config.family}: a bidirectional encoder sees the token it "
                "must predict; use task=masked_lm"
            )

    @staticmethod
    def tokenizer_arguments(tokenizer: Tokenizer) -> dict[str, Any]:
        return {"token_bytes": tokenizer.token_bytes(), "tokenizer_kind": tokenizer.kind}

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return self.token_loss(logits, targets, reduction)  # logits (B, T, V), targets (B, T)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        if getattr(self.model, "counting", False):
            return self.count_training_split()
        x, y = batch  # (B, T), (B, T)
        loss = self.loss(self(x), y)
        self.log_train_loss(loss)
        return loss

    def count_training_split(self) -> None:
        """Fit a counting model on the whole training split at once, then stop (validation still runs)."""
        train_ids = getattr(self.trainer.datamodule, "train_ids", None)
        if train_ids is None:
            raise LmlabError(f"model={self.model_config.family} trains by counting and needs lmlab's LMDataModule")
        self.model.fit(np.asarray(train_ids()))
        self.trainer.should_stop = True
        return None

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.update_val_metrics(self(x), y)

    def update_val_metrics(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        """Add the summed loss, scored tokens and their bytes of logits (B, T, V) against targets (B, T)."""
        nats = self.loss(logits, y, reduction="sum")  # targets < 0 (IGNORE_INDEX) add nothing
        scored = y >= 0  # (B, T)
        self.val_nats.update(nats)
        self.val_tokens.update(scored.sum().float())
        self.val_bytes.update(self.token_bytes[y.clamp(min=0)][scored].sum())

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self.log_val_metrics()

    def log_val_metrics(self) -> None:
        """Log `val/loss`, `val/ppl` and `val/bpb` of the scored tokens, and reset their sums."""
        nats, tokens, nbytes = self.val_nats.compute(), self.val_tokens.compute(), self.val_bytes.compute()
        for metric in (self.val_nats, self.val_tokens, self.val_bytes):
            metric.reset()
        if tokens <= 0:
            return
        loss = nats / tokens
        self.log("val/loss", loss, prog_bar=True)
        self.log("val/ppl", torch.exp(loss))
        self.log("val/bpb", nats / math.log(2) / nbytes)
