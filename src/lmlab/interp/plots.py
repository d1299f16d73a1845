"""Pictures of what the interpretability commands measure: attention grids, the lens's layers, probe accuracy
over layers and activation-patching heat maps."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lmlab.analysis.plots import new_figure, save_figure

MAX_LABELED = 48
"""Longest sequence whose tokens are written along the axes (beyond it, only positions)."""


def shown(token: str) -> str:
    """A token as a tick label: whitespace made visible, long ones cut."""
    text = token.replace("\n", "\\n").replace("\t", "\\t").replace(" ", "·")
    return text if len(text) <= 12 else text[:11] + "…"


def plot_attention(pattern: np.ndarray, tokens: Sequence[str], path: str | Path, title: str) -> Path:
    """One layer's attention pattern (H, T, T) as a grid of heads: row = query token, column = key token."""
    heads, T = pattern.shape[0], pattern.shape[-1]
    columns = min(heads, 4)
    rows = math.ceil(heads / columns)
    side = 2.2 + 0.09 * min(T, 96)
    fig, _ = new_figure(columns * side, rows * side + 0.4)
    fig.clf()
    labels = [shown(t) for t in tokens] if T <= MAX_LABELED else None
    for h in range(heads):
        ax = fig.add_subplot(rows, columns, h + 1)
        ax.imshow(pattern[h], cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(f"head {h}", fontsize=9)
        if labels is not None:
            ax.set_xticks(range(T), labels=labels, rotation=90, fontsize=6)
            ax.set_yticks(range(T), labels=labels, fontsize=6)
        else:
            ax.tick_params(labelsize=6)
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_lens_curves(curves: dict[str, Sequence[float]], labels: Sequence[str], path: str | Path, ylabel: str,
                     title: str) -> Path:  # fmt: skip
    """One line per lens (logit, tuned) of a per-layer quantity (e.g. loss in nats)."""
    fig, ax = new_figure(6.5, 4.0)
    for name, values in curves.items():
        ax.plot(range(len(values)), list(values), marker="o", label=name)
    ax.set_xticks(range(len(labels)), labels=list(labels))
    ax.set_xlabel("layer (residual stream after it)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def plot_lens_tokens(inputs: Sequence[str], labels: Sequence[str], tokens: Sequence[Sequence[str]],
                     probs: Sequence[Sequence[float]], path: str | Path, title: str) -> Path:  # fmt: skip
    """The classic logit-lens picture: layers (rows) x positions (columns), each cell the layer's top next-token
    prediction coloured by its probability."""
    grid = np.asarray(probs)  # (L+1, T)
    L1, T = grid.shape
    fig, ax = new_figure(1.6 + 0.62 * T, 1.8 + 0.45 * L1)
    ax.imshow(grid, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    for layer in range(L1):
        for position in range(T):
            color = "white" if grid[layer, position] > 0.6 else "black"
            ax.text(position, layer, shown(tokens[layer][position]), ha="center", va="center", fontsize=7,
                    color=color)  # fmt: skip
    ax.set_xticks(range(T), labels=[shown(t) for t in inputs], rotation=90, fontsize=7)
    ax.set_yticks(range(L1), labels=list(labels), fontsize=8)
    ax.set_xlabel("input token (the cell predicts the token after it)")
    ax.set_ylabel("layer")
    ax.set_title(title)
    return save_figure(fig, path)


def plot_probe_accuracy(
    layers: Sequence[str], accuracy: Sequence[float], majority: float, path: str | Path, title: str = ""
) -> Path:
    """Held-out probe accuracy per layer (a line over `embed`, 0, 1, ...) with the majority baseline dashed."""
    fig, ax = new_figure(max(5.0, 1.5 + 0.45 * len(layers)), 3.8)
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
    return save_figure(fig, path)


def plot_patch_heatmap(
    values: np.ndarray, rows: Sequence[str], columns: Sequence[str], path: str | Path, xlabel: str, title: str = ""
) -> Path:
    """A (rows, columns) grid of normalised recovery: red where patching restores the clean metric (1), blue
    where it pushes the other way, white at 0; the values are written in the cells when the grid is small."""
    values = np.asarray(values, dtype=float)
    fig, ax = new_figure(max(4.0, 1.8 + 0.5 * len(columns)), max(2.5, 1.2 + 0.4 * len(rows)))
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
    return save_figure(fig, path)
