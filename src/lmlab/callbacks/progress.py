"""A Rich progress bar that counts toward the step budget and shows short metric names, and the model summary that
comes with it."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichModelSummary, RichProgressBar
from pytorch_lightning.utilities.model_summary import get_formatted_model_size, get_human_readable_count

SHORT_NAMES = {
    "train/loss": "loss",
    "val/loss": "val_loss",
    "val_sample/loss": "val_sample_loss",  # during fit, of the fixed validation sample (data.val_sample_tokens)
    "perf/avg_tokens_per_sec": "tok/s",
    "perf/avg_mfu": "mfu",
}
"""Bar names; `tok/s` and `mfu` are the run's steady-state rates so far, the numbers the run summary ends with."""
FORMATS = {"perf/avg_tokens_per_sec": lambda v: f"{v:,.0f}", "perf/avg_mfu": lambda v: f"{100 * v:.0f}%"}
"""Strings: Lightning would print a number with three decimals (`tok/s: 1368.000`)."""


class LMProgressBar(RichProgressBar):
    """`RichProgressBar` whose bar ends at `max_steps` (not the epoch's end), without `v_num`, paired with
    `LMModelSummary` where Lightning would pair it with its `RichModelSummary`."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        for callback in trainer.callbacks:
            if type(callback) is RichModelSummary:  # the one Lightning adds for a Rich bar; runs after setup
                callback.__class__ = LMModelSummary  # the same state, lmlab's printing

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


class LMModelSummary(RichModelSummary):
    """Lightning's Rich model summary without its FLOPs column and `Total FLOPs` line, which read 0 for lmlab's
    tasks: Lightning counts FLOPs only by running a module's `example_input_array`, which they do not set. The run
    summary reports model FLOP/s from lmlab's own count (`lmlab.models.flops`)."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        from rich import get_console
        from rich.table import Table

        columns = [(name, values) for name, values in summary_data if name != "FLOPs"]
        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        for name, _ in columns:
            table.add_column(name, justify="right" if name in ("Params", "Params per Device") else "left")
        for row in zip(*(values for _, values in columns), strict=True):
            table.add_row(*row)
        totals = {
            "Trainable params": get_human_readable_count(trainable_parameters),
            "Non-trainable params": get_human_readable_count(total_parameters - trainable_parameters),
            "Total params": get_human_readable_count(total_parameters),
            "Total estimated model params size (MB)": get_formatted_model_size(model_size),
            "Modules in train mode": total_training_modes["train"],
            "Modules in eval mode": total_training_modes["eval"],
        }
        console = get_console()
        console.print(table)
        for label, value in totals.items():
            console.print(f"[bold]{label}[/]: {value}")
