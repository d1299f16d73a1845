"""A tiny resumable run, the rows it logs and signals sent at chosen steps: shared by the resume, interruption and
lever tests."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytorch_lightning as pl

STEPS = 14  # 7 batches per epoch below: the stops at 4 and 9 fall inside epochs 0 and 1


def base_overrides(corpus: Path) -> list[str]:
    """A tiny run that crosses two epoch ends, with dropout so the random state matters, whose validations during fit
    score a sample of the validation windows (4 of 16) and whose final weights the whole split."""
    return [
        "data=text_files",
        f"data.corpus.paths=[{corpus}]",
        "data.batch_size=12",
        "data.train_stride=64",
        "data.val_sample_tokens=64",
        "model.dropout=0.1",
        f"trainer.max_steps={STEPS}",
        "trainer.val_check_interval=5",
        "trainer.deterministic=true",
        "scheduler.warmup_steps=3",
    ]


def metric_rows(run_dir: Path) -> list[dict[str, str]]:
    """Every logged row, without the throughput columns (`perf/*`: timings, which no two runs share)."""
    with open(run_dir / "csv" / "metrics.csv", encoding="utf-8") as file:
        return [{k: v for k, v in row.items() if not k.startswith("perf/")} for row in csv.DictReader(file)]


class SignalsAt(pl.Callback):
    """Sends this process `signals[i]` at the end of step `steps[i]` (as a scheduler or a Ctrl+C would)."""

    def __init__(self, steps: list[int], signals: list[int]) -> None:
        self.signals = dict(zip(steps, signals, strict=True))

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step in self.signals:
            os.kill(os.getpid(), self.signals[trainer.global_step])


def stop_at(steps: list[int], signals: list[int]) -> list[str]:
    """Overrides that add a `SignalsAt` callback to a composed run."""
    return [
        "+callbacks.stop._target_=tests.helpers.runs.SignalsAt",
        f"+callbacks.stop.steps={steps}",
        f"+callbacks.stop.signals={signals}",
    ]
