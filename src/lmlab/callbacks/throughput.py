"""Training throughput and model-FLOPs utilisation (MFU), in the progress bar, every logger and the run summary."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from lmlab.compute.perf import device_peak_flops
from lmlab.models.flops import flops_per_token

log = logging.getLogger(__name__)


def batch_shape(batch: Any) -> tuple[int, int]:
    """(sequences, tokens) of a batch whose first tensor holds token ids (B, T): a tuple, list, dict or tensor; a
    dict's `n_tokens` (SFT rows) counts only its real tokens, so padding is not throughput."""
    if isinstance(batch, dict) and "n_tokens" in batch:
        return batch["ids"].size(0), int(batch["n_tokens"])
    first = batch
    while not isinstance(first, torch.Tensor):
        first = next(iter(first.values())) if isinstance(first, dict) else first[0]
    return first.size(0), first.numel()


class Throughput(pl.Callback):
    """Logs `perf/tokens_per_sec`, `perf/samples_per_sec`, `perf/flops_per_sec` and `perf/mfu` (all processes
    together) and `train/lr` every `every_n_steps` optimizer steps and at the last one.

    Each report covers the steps since the previous one (a window), so start-up and validation pauses drop out.
    Achieved FLOP/s is tokens/s × the model's training FLOPs per token (`lmlab.models.flops`); MFU divides it by the
    peak of all devices: `peak_flops` per device when given, else Lightning's table for a GPU or a short fp32 matmul
    calibration for a CPU. A window faster than that peak raises the peak to its rate (a calibration on a busy
    machine, or a wrong `peak_flops`, is not a peak), so MFU never exceeds 1. Models without a FLOPs estimate
    (n-grams) report no FLOP/s or MFU.

    `summary()` gives the steady-state rates of the run: all windows' tokens over all their seconds, the first window
    (compilation, CUDA start-up, the first allocations) left out when later ones exist. The progress bar's `tok/s`
    and `mfu` show the same numbers so far (`perf/avg_tokens_per_sec`, `perf/avg_mfu`, not sent to loggers), so the
    bar's last values agree with the run summary; the loggers get each window's rates, to chart.
    """

    def __init__(
        self, every_n_steps: int = 10, peak_flops: float | None = None, peak_cache: str | Path | None = None
    ) -> None:
        self.every_n_steps = every_n_steps
        self.configured_peak = peak_flops
        self.peak_cache = peak_cache
        """JSON file of earlier CPU calibrations (`lmlab.compute.perf.device_peak_flops`); None: calibrate each run."""
        self.peak_flops: float | None = None
        """Peak FLOP/s of all devices together, set when training starts."""
        self.flops_per_token: float | None = None
        self._window = [0, 0, 0.0]  # sequences, tokens, seconds since the last report
        self._total = [0, 0, 0.0]  # the same over the run after the first window, validation pauses left out
        self._first: tuple[int, int, float] | None = None  # the first window: warm-up
        self._start: float | None = None
        self._reported_step = -1
        self._raised = False  # whether a window has raised the peak

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        device = trainer.strategy.root_device
        per_device = device_peak_flops(device, trainer.precision, self.configured_peak, self.peak_cache)
        self.peak_flops = per_device * trainer.world_size if per_device else None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reported_step = trainer.global_step  # a resumed run reports after its next full window

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        if self._start is None:
            self._start = time.perf_counter()
        if self.flops_per_token is None:
            sequences, tokens = batch_shape(batch)
            model = getattr(pl_module, "model", pl_module)
            self.flops_per_token = flops_per_token(model, tokens // max(sequences, 1)) or 0.0  # 0.0: none

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        sequences, tokens = batch_shape(batch)
        self._window[0] += sequences * trainer.world_size
        self._window[1] += tokens * trainer.world_size
        step = trainer.global_step
        last = 0 < trainer.max_steps <= step  # reported too, so the bar ends on the run's own numbers
        if step == self._reported_step or (step % max(self.every_n_steps, 1) and not last):
            return  # mid-accumulation, or not a reporting step
        self._reported_step = step
        metrics = self.rates(*self._close_window(sync=last))
        if trainer.optimizers and trainer.optimizers[0].param_groups:  # a counting model has a mock optimizer
            metrics["lr"] = trainer.optimizers[0].param_groups[0]["lr"]
        steady = self.rates(*self._steady())
        averages = {f"avg_{name}": steady[name] for name in ("tokens_per_sec", "mfu") if name in steady}
        for name, value in (metrics | averages).items():
            # CPU tensors: a number would become a tensor on the model's device, which the progress bar reads back
            # on every step (a GPU synchronisation per step)
            key = "train/lr" if name == "lr" else f"perf/{name}"
            average = name in averages
            pl_module.log(key, torch.tensor(float(value)), prog_bar=average, logger=not average)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close_window(sync=True)  # validation inside fit: its time is not training time
        self._start = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close_window(sync=True)
        self._start = None

    def _close_window(self, sync: bool = False) -> tuple[int, int, float]:
        """End the current measuring window: add it to the run's totals, return it, start the next one."""
        if self._start is None:
            return 0, 0, 0.0
        if sync and torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()  # queued GPU work belongs to this window
        now = time.perf_counter()
        sequences, tokens, _ = self._window
        window = (sequences, tokens, now - self._start)
        if not tokens:
            pass  # no training step in it: the end of a reported step until validation or the run's end
        elif self._first is None:
            self._first = window
        else:
            self._total = [a + b for a, b in zip(self._total, window, strict=True)]
        self._window, self._start = [0, 0, 0.0], now
        return window

    def rates(self, sequences: int, tokens: int, seconds: float) -> dict[str, float]:
        """tokens/s, samples/s and, where the model and device allow, achieved FLOP/s and MFU."""
        if seconds <= 0:
            return {}
        metrics = {"tokens_per_sec": tokens / seconds, "samples_per_sec": sequences / seconds}
        if self.flops_per_token:
            metrics["flops_per_sec"] = metrics["tokens_per_sec"] * self.flops_per_token
            if self.peak_flops:
                self._raise_peak(metrics["flops_per_sec"])
                metrics["mfu"] = metrics["flops_per_sec"] / self.peak_flops
        return metrics

    def _raise_peak(self, achieved: float) -> None:
        """Make `achieved` FLOP/s the peak when it beats it: what a run did, the device can do."""
        if self.peak_flops is None or achieved <= self.peak_flops:
            return
        if not self._raised:
            level = logging.WARNING if self.configured_peak else logging.INFO  # a user's number, or a measurement
            source = "configured (callbacks.throughput.peak_flops)" if self.configured_peak else "estimated"
            log.log(level, "throughput: training reached %.4g FLOP/s, above the %s peak of %.4g; MFU is now measured "
                    "against the best rate reached", achieved, source, self.peak_flops)  # fmt: skip
        self._raised, self.peak_flops = True, achieved

    def _steady(self) -> tuple[int, int, float]:
        """Sequences, tokens and seconds of the steady state: the windows after the first (the first while alone)."""
        sequences, tokens, seconds = self._total
        return (sequences, tokens, seconds) if seconds > 0 else self._first or (0, 0, 0.0)

    def summary(self) -> dict[str, float]:
        """Steady-state rates over the run's training steps (validation and the warm-up window left out), with the
        FLOPs count and peak behind MFU."""
        summary = self.rates(*self._steady())
        if self.flops_per_token:
            summary["flops_per_token"] = self.flops_per_token
        if self.peak_flops:
            summary["peak_flops"] = self.peak_flops
        return summary


TokensPerSecond = Throughput
"""The former name of this callback, kept for configs that still name it."""
