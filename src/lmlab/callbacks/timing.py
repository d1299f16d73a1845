"""Marks where a run's wall time goes: its first training step, the end of fit, and every validation loop."""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl

Marks = tuple[float, float, float, float, list[tuple[float, float]]]
"""(start, first training step, end of fit, now, validation intervals): what `lmlab.runs.timing.split_wall_time`
partitions."""


class WallClock(pl.Callback):
    """Records the moments a run's wall time is split at (`lmlab.runs.timing.split_wall_time(*clock.marks())`: the
    seconds of start-up, training, validation and end). Wall clock (`time.time`), as the user waits; on a GPU the marks
    fall where the host reaches them (a validation ends by reading its metrics, so little work is left in flight).

    Args:
        start: when the run began (`time.time()` scale), e.g. its process's start; default: now.
    """

    def __init__(self, start: float | None = None) -> None:
        self.start = time.time() if start is None else start
        self.first_step: float | None = None
        self.fit_end: float | None = None
        self.validations: list[tuple[float, float]] = []
        self._validation_begin: float | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self.first_step is None:
            self.first_step = time.time()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.fit_end = time.time()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validation_begin = time.time()  # the sanity check's too: it is a validation loop

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._validation_begin is not None:
            self.validations.append((self._validation_begin, time.time()))
            self._validation_begin = None

    def marks(self, now: float | None = None) -> Marks:
        """The marks from the start until `now` (default: now). Without training steps (`max_steps=0`), training
        takes no time and start-up ends where fit ended (or now)."""
        now = time.time() if now is None else now
        fit_end = self.fit_end if self.fit_end is not None else now
        first_step = self.first_step if self.first_step is not None else fit_end
        return self.start, first_step, fit_end, now, list(self.validations)
