"""What a run prints when it ends: metrics, where things were written, and a generated sample."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from torch import nn

from lmlab.generation import generate
from lmlab.io import atomic_write_text
from lmlab.models import count_parameters
from lmlab.tokenizers import Tokenizer


def sample_text(
    model: nn.Module,
    tokenizer: Tokenizer,
    block_size: int,
    prompt: str = "\n",
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = None,
    seed: int = 0,
) -> str:
    """Continue `prompt` with the model; the same seed gives the same text."""
    ids = tokenizer.encode(prompt) or [0]
    device = next(iter([*model.parameters(), *model.buffers()])).device
    idx = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T)
    generator = torch.Generator(device=device).manual_seed(seed)
    out = generate(model, idx, max_new_tokens, block_size, temperature, top_k, generator)
    return tokenizer.decode(out[0].tolist())


def print_run_summary(run_dir: Path, metrics: dict[str, float], checkpoint: Any, sample: str | None) -> None:
    """A compact end-of-run report on the terminal."""
    console = Console()
    table = Table(title="final metrics", show_header=False)
    names = ("val/loss", "val/ppl", "val/bpb", "val/mlm_acc", "val/acc", "val/f1", "test/acc", "test/f1", "train/loss",
             "train/tokens_per_s")  # fmt: skip
    for name in names:
        if name in metrics:
            table.add_row(name, f"{metrics[name]:.4f}")
    console.print(table)
    if sample is not None:
        console.print(Panel(sample, title="sample", expand=False))
    best = getattr(checkpoint, "best_model_path", "") if checkpoint is not None else ""
    if best:
        console.print(f"best checkpoint: {best}")
    console.print(f"run directory: {run_dir}")


def write_summary(run_dir: Path, task: Any, datamodule: Any, metrics: dict[str, float], fit_seconds: float) -> None:
    """`summary.json`: final metrics, model family and size, training time and throughput, for reports."""
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
        "train_tokens": tokens,
        "fit_seconds": fit_seconds,
        "tokens_per_s": tokens / fit_seconds if fit_seconds > 0 else None,
    }
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
