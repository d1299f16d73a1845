"""What a run prints when it ends: metrics, where things were written, and a generated sample."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from lmlab.compute.perf import format_bytes, peak_memory_bytes
from lmlab.io import atomic_write_text
from lmlab.models import count_parameters
from lmlab.runs.timing import WallTimeSplit
from lmlab.terminal import visible


def performance(trainer: Any) -> dict[str, Any]:
    """Throughput and MFU averaged over the run (from the `Throughput` callback, if any) and peak memory."""
    from lmlab.callbacks import Throughput

    perf: dict[str, Any] = {}
    for callback in trainer.callbacks:
        if isinstance(callback, Throughput):
            perf |= callback.summary()
    device = trainer.strategy.root_device
    perf["peak_memory_bytes"] = peak_memory_bytes(device)
    perf["peak_memory_of"] = "CUDA max allocated" if device.type == "cuda" else "process RSS"
    return perf


def performance_rows(perf: dict[str, Any]) -> list[tuple[str, str]]:
    """Rows of the run summary for `performance()`'s numbers (those present)."""
    rows = []
    if "tokens_per_sec" in perf:
        rows += [("tokens/s", f"{perf['tokens_per_sec']:,.0f}"), ("samples/s", f"{perf['samples_per_sec']:,.1f}")]
    if "flops_per_sec" in perf:
        rows.append(("model FLOP/s", f"{perf['flops_per_sec'] / 1e12:.3f} T"))
    if "mfu" in perf:
        rows.append(("MFU", f"{100 * perf['mfu']:.1f} % of {perf['peak_flops'] / 1e12:.3f} TFLOP/s peak"))
    if "peak_memory_bytes" in perf:
        rows.append(("peak memory", f"{format_bytes(perf['peak_memory_bytes'])} ({perf['peak_memory_of']})"))
    return rows


def print_run_summary(
    run_dir: Path,
    metrics: dict[str, float],
    checkpoint: Any,
    sample: str | None,
    perf: dict[str, Any] | None = None,
    timing: WallTimeSplit | None = None,
) -> None:
    """A compact end-of-run report on the terminal."""
    console = Console()
    table = Table(title="final metrics", show_header=False)
    names = ("val/loss", "val/ppl", "val/bpb", "val/mlm_acc", "val/acc", "val/f1", "test/acc", "test/f1", "train/loss")
    for name in names:
        if name in metrics:
            table.add_row(name, f"{metrics[name]:.4f}")
    for name, value in performance_rows(perf or {}):
        table.add_row(name, value)
    console.print(table)
    if sample is not None:
        # Text, not a str: a sample's `[...]` is not Rich markup; its control characters are shown, not obeyed
        console.print(Panel(Text(visible(sample)), title="sample", expand=False))
    best = getattr(checkpoint, "best_model_path", "") if checkpoint is not None else ""
    if best:
        console.print(f"best checkpoint: {best}")
    console.print(f"run directory: {run_dir}")
    if timing is not None:
        console.print(timing.line())


def write_summary(
    run_dir: Path,
    task: Any,
    datamodule: Any,
    metrics: dict[str, float],
    fit_seconds: float,
    perf: dict[str, Any] | None = None,
    timing: WallTimeSplit | None = None,
) -> None:
    """`summary.json`: final metrics, model family and size, training time and throughput (`tokens_per_s` over the
    whole fit; `perf`: training steps only, with MFU and peak memory), for reports; `timing`: the run's wall time
    split into start-up, training, validation and end (`lmlab.runs.timing`)."""
    trainer = task.trainer
    if getattr(task.model, "counting", False):
        tokens = len(datamodule.train_ids())
    else:
        tokens = trainer.global_step * trainer.accumulate_grad_batches * datamodule.batch_size * datamodule.block_size
        tokens *= trainer.world_size
    summary = {
        "metrics": metrics,
        "model": task.hparams["model"],
        "parameters": count_parameters(task.model),
        "steps": trainer.global_step,
        "epochs": trainer.current_epoch,
        "train_tokens": tokens,
        "fit_seconds": fit_seconds,
        "tokens_per_s": tokens / fit_seconds if fit_seconds > 0 else None,
        "perf": perf or {},
    }
    if timing is not None:
        summary["timing"] = timing.to_dict()
    summary |= scaling_fields(task.model, tokens, getattr(datamodule, "block_size", None))
    if getattr(datamodule, "padding_fraction", None) is not None:  # SFT rows: the share of positions that are padding
        summary["padding_fraction"] = datamodule.padding_fraction
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))


def scaling_fields(model: Any, tokens: int, seq_len: int | None) -> dict[str, Any]:
    """What a scaling-law fit reads besides `parameters` and `train_tokens`: N without embedding tables, and the
    training compute C = FLOPs per token (6·N + attention, `lmlab.models.flops`) × tokens where the model counts it."""
    from lmlab.models.flops import flops_per_token
    from lmlab.models.size import non_embedding_parameters

    fields: dict[str, Any] = {"non_embedding_parameters": non_embedding_parameters(model)}
    per_token = flops_per_token(model, seq_len) if seq_len else None
    if per_token:
        fields |= {"flops_per_token": per_token, "train_flops": per_token * tokens}
    return fields


def finished_metrics(run_dir: Path, max_steps: int, max_epochs: int | None = None) -> dict[str, float] | None:
    """The final metrics of a run that already reached this budget (`max_steps`; when -1, `max_epochs`), else None.

    Judged by `summary.json`, not by the newest checkpoint: the summary is written last, after the final validation,
    test and sample, so a run killed after its last step but before those still counts as unfinished.
    """
    try:
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or not isinstance(summary.get("metrics"), dict):
        return None
    done, budget = (summary.get("steps"), max_steps) if max_steps > 0 else (summary.get("epochs"), max_epochs)
    reached = isinstance(done, int) and budget is not None and done >= budget
    return dict(summary["metrics"]) if reached else None
