"""Checkpoints: the best by the monitored metric, and `last.ckpt` with the latest weights."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint


class BestAndLastCheckpoint(ModelCheckpoint):
    """Lightning's `ModelCheckpoint`, except that `save_last` keeps `last.ckpt` the latest weights: after every
    validation and when training ends. Lightning rewrites it only in a step that also saved a top-k checkpoint,
    so once the monitored metric stops improving, `last.ckpt` would silently keep the weights of the best step."""

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_stale(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._save_last_if_stale(trainer)  # the budget ended between validations

    def _save_last_if_stale(self, trainer: pl.Trainer) -> None:
        # skips the sanity check, fast_dev_run, stages other than fit, and a step already saved
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
