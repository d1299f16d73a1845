"""Figures written into run directories (matplotlib's object API on the Agg canvas: no display, no pyplot state)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def plot_confusion_matrix(matrix: np.ndarray, label_names: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Save a confusion matrix (rows: true label, columns: predicted) as a PNG with counts in the cells."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    matrix = np.asarray(matrix)
    k = len(label_names)
    size = 2.5 + 0.6 * k
    fig = Figure(figsize=(size, size), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(k), labels=list(label_names), rotation=45, ha="right")
    ax.set_yticks(range(k), labels=list(label_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(k):
        for j in range(k):
            color = "white" if matrix[i, j] > threshold else "black"
            ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", color=color)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def new_figure(width: float = 7.0, height: float = 4.5) -> tuple[Any, Any]:
    """A figure on the Agg canvas and its one axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def save_figure(fig: Any, path: str | Path) -> Path:
    """Lay out and write `fig` as a PNG at `path` (folders made); returns the path."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def plot_curves(curves: dict[str, Sequence[tuple[int, float]]], metric: str, path: str | Path, title: str = "") -> Path:
    """One line per run of a metric against the training step (e.g. val/loss of every job of a sweep)."""
    fig, ax = new_figure()
    for label, points in curves.items():
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if len(curves) <= 20:  # past that a legend hides the lines
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_metric_vs_setting(
    points: Sequence[tuple[str, float]], setting: str, metric: str, path: str | Path, maximize: bool = False
) -> Path:
    """A metric against the values of one setting: numbers on a numeric axis (logarithmic when they span a decade
    or more) with a line through the best run per value, anything else as categories. Several runs per value (a
    grid over other settings) give several points."""
    fig, ax = new_figure(6.0, 4.0)
    numbers = [_as_float(x) for x, _ in points]
    ys = [y for _, y in points]
    if all(n is not None for n in numbers):
        xs = [float(n) for n in numbers]  # type: ignore[arg-type]
        ax.scatter(xs, ys, zorder=3)
        if min(xs) > 0 and max(xs) / min(xs) >= 10:
            ax.set_xscale("log")
        pick = max if maximize else min
        best = {x: pick(y for x2, y in zip(xs, ys, strict=True) if x2 == x) for x in sorted(set(xs))}
        ax.plot(list(best), list(best.values()), alpha=0.4)
    else:
        categories = list(dict.fromkeys(x for x, _ in points))
        ax.scatter([categories.index(x) for x, _ in points], ys, zorder=3)
        ax.set_xticks(range(len(categories)), labels=categories, rotation=30 if len(categories) > 4 else 0)
        ax.set_xlim(-0.5, len(categories) - 0.5)
    ax.set_xlabel(setting)
    ax.set_ylabel(f"{metric} (final)")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def _as_float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if np.isfinite(value) else None


def plot_scaling(points: Sequence[Any], fit: Any, path: str | Path, title: str = "") -> Path:
    """Two panels of a scaling-law fit (`lmlab.analysis.scaling`): loss against compute C = 6·N·D, one colour per
    model size, with the fitted compute frontier; and iso-loss contours of the fit in the (N, D) plane with the runs
    and the compute-optimal path N*(C), D*(C)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12.0, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    compute = np.array([p.compute for p in points])
    grid = np.geomspace(compute.min() / 3, compute.max() * 30, 200)
    for n in sorted({p.n for p in points}):
        mine = sorted((p for p in points if p.n == n), key=lambda p: p.compute)
        left.plot([p.compute for p in mine], [p.loss for p in mine], marker="o", label=f"N={n:.3g}")
    left.plot(grid, fit.frontier(grid), "k--", label="fitted frontier")
    left.set(xscale="log", xlabel="compute C = 6·N·D (FLOPs)", ylabel="validation loss", title=title)
    left.legend(fontsize=7)
    left.grid(alpha=0.3)
    ns = np.geomspace(min(p.n for p in points) / 3, max(p.n for p in points) * 10, 120)
    ds = np.geomspace(min(p.d for p in points) / 3, max(p.d for p in points) * 10, 120)
    nn, dd = np.meshgrid(ns, ds)
    contours = right.contour(nn, dd, fit.predict(nn, dd), levels=12, cmap="viridis")
    right.clabel(contours, fontsize=7, fmt="%.2f")
    right.scatter([p.n for p in points], [p.d for p in points], c="k", s=12, zorder=3, label="runs")
    n_opt, d_opt = fit.optimal(grid)
    right.plot(n_opt, d_opt, "r-", label="compute-optimal N*, D*")
    right.set(xscale="log", yscale="log", xlim=(ns[0], ns[-1]), ylim=(ds[0], ds[-1]), xlabel="parameters N",
              ylabel="training tokens D", title="iso-loss contours of the fit")  # fmt: skip
    right.legend(fontsize=7)
    return save_figure(fig, path)
