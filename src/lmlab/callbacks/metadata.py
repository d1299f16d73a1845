"""Makes every checkpoint self-describing: tokenizer, resolved run config and lmlab version ride along."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl

import lmlab


class CheckpointMetadata(pl.Callback):
    """Adds `checkpoint["lmlab"]` with what later commands need to rebuild model and tokenizer."""

    def __init__(self, tokenizer: dict[str, Any], run_config: dict[str, Any] | None = None) -> None:
        self.metadata = {"version": lmlab.__version__, "tokenizer": tokenizer, "config": run_config or {}}

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint["lmlab"] = self.metadata
