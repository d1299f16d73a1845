"""A Rich progress bar that counts toward the step budget and shows short metric names."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar

SHORT_NAMES = {"train/loss": "loss", "val/loss": "val_loss", "perf/tokens_per_sec": "tok/s", "perf/mfu": "mfu"}
FORMATS = {"perf/tokens_per_sec": lambda v: round(v), "perf/mfu": lambda v: f"{100 * v:.0f}%"}


class LMProgressBar(RichProgressBar):
    """`RichProgressBar` whose bar ends at `max_steps` (not the epoch's end), without `v_num`."""

    @property
    def total_train_batches(self) -> int | float:
        total = super().total_train_batches
        trainer = self.trainer
        if trainer.max_steps > 0:
            remaining = (trainer.max_steps - trainer.global_step) * trainer.accumulate_grad_batches
            total = min(total, remaining)  # read when each epoch starts
        return total

    def _get_train_description(self, current_epoch: int) -> str:
        # Step-budgeted runs have max_epochs=-1, which Lightning would print as "Epoch 0/-2".
        return f"Epoch {current_epoch}" if self.trainer.max_steps > 0 else super()._get_train_description(current_epoch)

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return {SHORT_NAMES.get(k, k): FORMATS.get(k, lambda v: v)(v) for k, v in metrics.items()}
