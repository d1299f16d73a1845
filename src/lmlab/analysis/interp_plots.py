"""Figures of the interpretability commands: probe accuracy over layers, activation-patching heat maps."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lmlab.analysis.plots import _figure, _save


def plot_probe_accuracy(
    layers: Sequence[str], accuracy: Sequence[float], majority: float, path: str | Path, title: str = ""
) -> Path:
    """Held-out probe accuracy per layer (a line over `embed`, 0, 1, ...) with the majority baseline dashed."""
    fig, ax = _figure(max(5.0, 1.5 + 0.45 * len(layers)), 3.8)
    x = np.arange(len(layers))
    ax.plot(x, accuracy, marker="o", label="probe (held out)")
    ax.axhline(majority, color="gray", linestyle="--", label=f"majority class ({majority:.3f})")
    ax.set_xticks(x, labels=list(layers))
    ax.set_xlabel("layer (after block i; embed = before block 0)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(min(min(accuracy, default=majority), majority) - 0.05, 1.02)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def plot_patch_heatmap(
    values: np.ndarray, rows: Sequence[str], columns: Sequence[str], path: str | Path, xlabel: str, title: str = ""
) -> Path:
    """A (rows, columns) grid of normalised recovery: red where patching restores the clean metric (1), blue
    where it pushes the other way, white at 0; the values are written in the cells when the grid is small."""
    values = np.asarray(values, dtype=float)
    fig, ax = _figure(max(4.0, 1.8 + 0.5 * len(columns)), max(2.5, 1.2 + 0.4 * len(rows)))
    bound = max(1.0, float(np.nanmax(np.abs(values))) if values.size else 1.0)
    image = ax.imshow(values, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
    ax.set_xticks(range(len(columns)), labels=list(columns), rotation=60 if len(columns) > 8 else 0, fontsize=8)
    ax.set_yticks(range(len(rows)), labels=list(rows), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=9)
    if values.size <= 400:
        for (i, j), value in np.ndenumerate(values):
            color = "white" if abs(value) > 0.6 * bound else "black"
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6, color=color)
    fig.colorbar(image, ax=ax, label="recovery")
    return _save(fig, path)
