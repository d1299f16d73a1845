"""Tokens per second in the progress bar and the logs."""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl


class TokensPerSecond(pl.Callback):
    """Logs `train/tokens_per_s` (all processes) and `train/lr` every `every_n_steps` optimizer steps.

    Measured over the steps since the last report, so start-up and validation pauses drop out.
    """

    def __init__(self, every_n_steps: int = 10) -> None:
        self.every_n_steps = every_n_steps
        self._tokens = 0
        self._start: float | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        if self._start is None:
            self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        self._tokens += batch[0].numel() * trainer.world_size
        if (idx + 1) % (self.every_n_steps * trainer.accumulate_grad_batches):
            return
        elapsed = time.perf_counter() - self._start
        pl_module.log("train/tokens_per_s", self._tokens / elapsed, prog_bar=True)
        if trainer.optimizers:
            pl_module.log("train/lr", trainer.optimizers[0].param_groups[0]["lr"])
        self._tokens, self._start = 0, time.perf_counter()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._tokens, self._start = 0, None
