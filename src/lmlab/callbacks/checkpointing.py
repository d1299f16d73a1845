"""Checkpoints: the best by the monitored metric, and `last.ckpt` with the latest weights."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from lmlab.tasks.base import SAMPLE_PREFIX, VAL_PREFIX


class BestAndLastCheckpoint(ModelCheckpoint):
    """Lightning's `ModelCheckpoint`, except that `save_last` keeps `last.ckpt` the latest weights: after every
    validation and when training ends. Lightning rewrites it only in a step that also saved a top-k checkpoint,
    so once the monitored metric stops improving, `last.ckpt` would silently keep the weights of the best step.

    When validations during fit score the data's fixed sample (`data.val_sample_tokens`), they log `val_sample/...`
    instead of `val/...`, and a monitored `val/<metric>` ranks the checkpoints by `val_sample/<metric>`: the only
    validation there is during fit, the same windows every time (as nanoGPT keeps its best checkpoint by
    `estimate_loss` on random batches). The whole split scores the final weights after fit (`val/...`).
    """

    def _monitor_candidates(self, trainer: pl.Trainer) -> dict[str, torch.Tensor]:
        candidates = super()._monitor_candidates(trainer)
        monitor = self.monitor or ""
        sampled = SAMPLE_PREFIX + monitor.removeprefix(VAL_PREFIX)
        if monitor.startswith(VAL_PREFIX) and monitor not in candidates and sampled in candidates:
            candidates[monitor] = candidates[sampled]
        return candidates

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
