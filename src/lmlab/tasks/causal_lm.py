"""Causal language modelling: next-token cross-entropy, with perplexity and bits per byte on validation."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import Optimizer
from torchmetrics import SumMetric

from lmlab.models import ModelConfig, build_model, model_config_from_dict, model_config_to_dict

OptimizerFactory = Callable[..., Optimizer]
SchedulerFactory = Callable[[Optimizer], Any]


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices (≥2-D: linear and embedding weights), none on biases and norm gains."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class CausalLMTask(pl.LightningModule):
    """Trains any causal model of the ladder on `(x, y)` windows.

    Args:
        model: the model's config (dataclass or its dict form); the task builds the module.
        optimizer: partial optimizer, called with parameter groups.
        scheduler: partial LR scheduler, called with the optimizer; stepped every optimizer step.
        weight_decay: decay applied to ≥2-D weights only.
        token_bytes: UTF-8 bytes of each token id, so validation reports bits per byte.
    """

    def __init__(
        self,
        model: ModelConfig | dict[str, Any],
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        weight_decay: float = 0.1,
        token_bytes: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        config = model_config_from_dict(model) if isinstance(model, dict) else model
        self.save_hyperparameters({"model": model_config_to_dict(config), "weight_decay": weight_decay})
        self.model_config = config
        self.model = build_model(config)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.weight_decay = weight_decay
        bytes_per_id = torch.ones(config.vocab_size) if token_bytes is None else torch.tensor(token_bytes)
        self.register_buffer("token_bytes", bytes_per_id.float())
        self.val_nats = SumMetric()
        self.val_tokens = SumMetric()
        self.val_bytes = SumMetric()

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction=reduction)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch  # (B, T), (B, T)
        loss = self.loss(self(x), y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        nats = self.loss(self(x), y, reduction="sum")
        self.val_nats.update(nats)
        self.val_tokens.update(torch.tensor(float(y.numel()), device=y.device))
        self.val_bytes.update(self.token_bytes[y].sum())

    def on_validation_epoch_end(self) -> None:
        nats, tokens, nbytes = self.val_nats.compute(), self.val_tokens.compute(), self.val_bytes.compute()
        for metric in (self.val_nats, self.val_tokens, self.val_bytes):
            metric.reset()
        if tokens <= 0:
            return
        loss = nats / tokens
        self.log("val/loss", loss, prog_bar=True, sync_dist=False)
        self.log("val/ppl", torch.exp(loss))
        self.log("val/bpb", nats / math.log(2) / nbytes)

    def parameter_groups(self) -> Iterator[dict[str, Any]] | list[dict[str, Any]]:
        return decay_groups(self.model, self.weight_decay)

    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise RuntimeError("CausalLMTask was built without an optimizer; pass optimizer=... to train it")
        optimizer = self.optimizer_factory(self.parameter_groups())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
