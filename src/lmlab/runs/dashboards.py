"""What an analysis command (inspect, lens, probe, patch) found, sent to the dashboards beside its files:
TensorBoard event files in the run folder, and a W&B run (offline without credentials) of the command's job type."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Findings:
    """Per-step curves (e.g. loss per layer: step = layer), pictures and tables of one analysis run."""

    curves: dict[str, Sequence[float]] = field(default_factory=dict)
    images: dict[str, Path] = field(default_factory=dict)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    summary: dict[str, float] = field(default_factory=dict)


def log_findings(run_dir: Path, job_type: str, findings: Findings, tensorboard: bool, wandb: bool) -> list[str]:
    """Send `findings` where asked; returns where they went (for the command's closing lines)."""
    where = []
    if tensorboard:
        where.append(str(to_tensorboard(run_dir / "tensorboard", findings)))
    if wandb and (run_id := to_wandb(run_dir, job_type, findings)) is not None:
        where.append(f"W&B run {run_id}")
    return where


def to_tensorboard(folder: Path, findings: Findings) -> Path:
    """Scalars per step, PNGs as images, tables as markdown text."""
    import numpy as np
    from matplotlib.image import imread
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(folder))
    try:
        for name, values in findings.curves.items():
            for step, value in enumerate(values):
                writer.add_scalar(name, float(value), step)
        for name, value in findings.summary.items():
            writer.add_scalar(name, float(value), 0)
        for name, path in findings.images.items():
            image = imread(str(path))[..., :3]  # (H, W, 3) floats in [0, 1]
            writer.add_image(name, np.ascontiguousarray(image), 0, dataformats="HWC")
        for name, rows in findings.tables.items():
            writer.add_text(name, markdown_table(rows), 0)
    finally:
        writer.close()
    return folder


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Rows of one shape as a markdown table (TensorBoard renders markdown text)."""
    if not rows:
        return ""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def to_wandb(run_dir: Path, job_type: str, findings: Findings) -> str | None:
    """A W&B run of its own in the run folder; None when W&B is disabled (WANDB_MODE=disabled)."""
    from lmlab.runs.loggers import choose_wandb_mode

    mode = choose_wandb_mode()
    if mode == "disabled":
        return None
    import wandb

    run = wandb.init(project="lmlab", job_type=job_type, dir=str(run_dir), mode=mode, name=f"{job_type}-{run_dir.name}")
    try:
        steps = max((len(v) for v in findings.curves.values()), default=0)
        for step in range(steps):
            run.log({name: float(v[step]) for name, v in findings.curves.items() if step < len(v)}, step=step)
        run.log({name: wandb.Image(str(path)) for name, path in findings.images.items()}, step=steps)
        for name, rows in findings.tables.items():
            if rows:
                columns = list(rows[0])
                run.log({name: wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows])}, step=steps)
        run.summary.update(findings.summary)
        return run.id
    finally:
        run.finish()
