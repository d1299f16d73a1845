"""Scaling laws from a grid of runs: the Chinchilla fit L(N, D) = E + A/N^α + B/D^β and the compute-optimal split.

The fit is Hoffmann et al. (2022), approach 3: minimise a Huber loss of log-space residuals
LSE(a - α·log N, b - β·log D, e) - log L (with A = exp a, B = exp b, E = exp e) by L-BFGS-B from a grid of starting
points, keeping the best. The Huber loss makes one diverged or undertrained run pull the constants less than a
squared loss would. Uncertainty is the spread of the constants refitted on runs resampled with replacement.
With C = 6·N·D the optimal split has a closed form (`ChinchillaFit.optimal`). Pure numpy/scipy, no torch.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmlab.errors import LmlabError

MIN_RUNS = 5
"""Five constants need at least five runs (and more to say anything about their uncertainty)."""
HUBER_DELTA = 1e-3
"""Hoffmann et al.'s δ: residuals of log-loss past 0.1 % count linearly."""
CONSTANTS = ("E", "A", "B", "alpha", "beta")
FULL_GRID = {
    "a": (0.0, 5.0, 10.0, 15.0),
    "b": (0.0, 5.0, 10.0, 15.0),
    "e": (-0.5, 0.5),
    "alpha": (0.25, 0.75),
    "beta": (0.25, 0.75),
}
"""Starting points (a, b, e, α, β) of the main fit: a coarser version of the paper's grid (128 starts, ~20 ms each)."""


@dataclass(frozen=True)
class ScalingPoint:
    """One finished run of the grid."""

    name: str
    n: float
    """Parameters N the fit uses."""
    d: float
    """Training tokens D."""
    loss: float
    """Final validation loss."""

    @property
    def compute(self) -> float:
        """C = 6·N·D, the convention of the fit and of the allocation."""
        return 6.0 * self.n * self.d


@dataclass(frozen=True)
class ChinchillaFit:
    """Fitted constants of L(N, D) = E + A/N^alpha + B/D^beta."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float = float("nan")
    """Mean Huber loss at the optimum."""

    def predict(self, n: Any, d: Any) -> Any:
        """Predicted loss at N parameters and D tokens (scalars or arrays)."""
        return self.E + self.A / np.power(n, self.alpha) + self.B / np.power(d, self.beta)

    def optimal(self, compute: Any) -> tuple[Any, Any]:
        """(N*, D*) minimising the loss at C = 6·N·D:
        N* = G·(C/6)^(β/(α+β)), D* = (C/6)^(α/(α+β)) / G with G = (αA / (βB))^(1/(α+β))."""
        s = self.alpha + self.beta
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / s)
        c6 = np.asarray(compute, dtype=float) / 6.0
        return g * c6 ** (self.beta / s), c6 ** (self.alpha / s) / g

    def frontier(self, compute: Any) -> Any:
        """The lowest loss reachable with compute C (the loss at the optimal split)."""
        n, d = self.optimal(compute)
        return self.predict(n, d)

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def _objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean Huber loss (divided by δ, which leaves the optimum alone and keeps gradients of order one) and its
    gradient in θ = (a, b, e, α, β)."""
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])  # (3, runs)
    top = terms.max(axis=0)
    weights = np.exp(terms - top)
    total = weights.sum(axis=0)
    residual = top + np.log(total) - log_l
    weights /= total  # softmax: d LSE / d term
    small = np.abs(residual) <= HUBER_DELTA
    loss = np.where(small, 0.5 * residual**2 / HUBER_DELTA, np.abs(residual) - 0.5 * HUBER_DELTA)
    slope = np.clip(residual / HUBER_DELTA, -1.0, 1.0)  # d loss / d residual
    grad = np.array([
        (slope * weights[0]).sum(),
        (slope * weights[1]).sum(),
        (slope * weights[2]).sum(),
        -(slope * weights[0] * log_n).sum(),
        -(slope * weights[1] * log_d).sum(),
    ])  # fmt: skip
    return float(loss.mean()), grad / len(log_n)


def fit_chinchilla(points: Sequence[ScalingPoint], starts: Iterable[Sequence[float]] | None = None) -> ChinchillaFit:
    """The constants with the lowest Huber objective over L-BFGS-B runs from `starts` ((a, b, e, α, β) tuples;
    default the grid `FULL_GRID`)."""
    from scipy.optimize import minimize

    log_n, log_d, log_l = (np.log([getattr(p, k) for p in points]) for k in ("n", "d", "loss"))
    starts = starts if starts is not None else itertools.product(*FULL_GRID.values())
    bounds = [(None, None), (None, None), (None, None), (0.0, 5.0), (0.0, 5.0)]
    options = {"maxiter": 500, "ftol": 1e-12, "gtol": 1e-8}
    best = None
    for start in starts:
        x0 = np.asarray(start, dtype=float)
        result = minimize(_objective, x0, (log_n, log_d, log_l), "L-BFGS-B", True, bounds=bounds, options=options)
        if np.all(np.isfinite(result.x)) and (best is None or result.fun < best.fun):
            best = result
    if best is None:
        raise LmlabError("the scaling fit did not converge from any starting point; check the runs' losses")
    a, b, e, alpha, beta = best.x
    return ChinchillaFit(math.exp(e), math.exp(a), math.exp(b), float(alpha), float(beta), float(best.fun))


def local_starts(fit: ChinchillaFit) -> list[tuple[float, ...]]:
    """The earlier optimum and one generic point: enough for a refit on resampled runs, far cheaper than the grid."""
    return [(math.log(fit.A), math.log(fit.B), math.log(fit.E), fit.alpha, fit.beta), (5.0, 5.0, 0.0, 0.5, 0.5)]


def bootstrap(
    points: Sequence[ScalingPoint], fit: ChinchillaFit, samples: int = 100, seed: int = 0
) -> list[ChinchillaFit]:
    """Refits on `samples` resamplings of the runs (with replacement), each started near `fit`."""
    rng = np.random.default_rng(seed)
    starts = local_starts(fit)
    fits = []
    for _ in range(samples):
        picked = rng.integers(0, len(points), size=len(points))
        fits.append(fit_chinchilla([points[i] for i in picked], starts))
    return fits


def spread(fits: Sequence[ChinchillaFit]) -> dict[str, float]:
    """Standard deviation of each constant over bootstrap fits (A and B vary over decades: their std is of log10)."""
    std = {}
    for name in CONSTANTS:
        values = np.array([getattr(f, name) for f in fits])
        std[name] = float(np.std(np.log10(values) if name in ("A", "B") else values, ddof=1)) if len(fits) > 1 else 0.0
    return std


def held_out_check(points: Sequence[ScalingPoint], fraction: float = 0.25) -> dict[str, Any]:
    """Fit on runs with C <= fraction·C_max and predict the run with the largest C: how far the law extrapolates."""
    target = max(points, key=lambda p: p.compute)
    train = [p for p in points if p.compute <= fraction * target.compute]
    if len(train) < MIN_RUNS:
        return {"skipped": f"only {len(train)} runs with C <= {fraction:g}·C_max (need {MIN_RUNS})"}
    predicted = float(fit_chinchilla(train).predict(target.n, target.d))
    return {"run": target.name, "compute": target.compute, "fit_runs": len(train), "predicted": predicted,
            "actual": target.loss, "relative_error": abs(predicted - target.loss) / target.loss}  # fmt: skip


def scaling_points(runs: Sequence[Any], metric: str, parameters: str = "total") -> list[ScalingPoint]:
    """(N, D, loss) of each finished run (`lmlab.analysis.report.Run`) from its summary.json: N = `parameters`
    (total, or non_embedding), D = train_tokens. Raises LmlabError naming the fix when fewer than MIN_RUNS have them."""
    if parameters not in ("total", "non_embedding"):
        raise LmlabError(f"parameters={parameters!r} is unknown; choose total or non_embedding")
    key = "parameters" if parameters == "total" else "non_embedding_parameters"
    points, lacking = [], []
    for run in runs:
        summary = run.summary or {}
        n, d, loss = summary.get(key), summary.get("train_tokens"), run.final(metric)
        if all(isinstance(v, int | float) and v > 0 for v in (n, d, loss)):
            points.append(ScalingPoint(run.name, float(n), float(d), float(loss)))
        else:
            lacking.append(run.name)
    if len(points) < MIN_RUNS:
        raise LmlabError(
            f"fit=scaling needs at least {MIN_RUNS} finished runs with {key}, train_tokens (summary.json) and "
            f"{metric}; found {len(points)} ({len(lacking)} lack them): run a grid, lmlab train -m experiment=scaling"
        )
    return points


def scaling_result(points: Sequence[ScalingPoint], compute: float | None, samples: int, seed: int) -> dict[str, Any]:
    """Everything `lmlab report fit=scaling` prints and writes to scaling.json."""
    fit = fit_chinchilla(points)
    fits = bootstrap(points, fit, samples, seed)
    budget = float(compute) if compute else max(p.compute for p in points)
    n_opt, d_opt = fit.optimal(budget)
    boot_n = [float(f.optimal(budget)[0]) for f in fits]
    return {
        "fit": fit.as_dict(),
        "bootstrap": {"samples": samples, "std": spread(fits), "std_of_A_B": "log10"},
        "allocation": {"compute": budget, "N": float(n_opt), "D": float(d_opt), "loss": float(fit.frontier(budget)),
                       "N_log10_std": float(np.std(np.log10(boot_n), ddof=1)) if len(fits) > 1 else 0.0},
        "held_out": held_out_check(points),
        "runs": [asdict(p) | {"compute": p.compute, "predicted": float(fit.predict(p.n, p.d))} for p in points],
    }  # fmt: skip


def write_scaling(result: dict[str, Any], points: Sequence[ScalingPoint], out: Path, title: str = "") -> list[Path]:
    """`scaling.json` (the result) and `scaling.png` (`lmlab.analysis.plots.plot_scaling`) in `out`."""
    import json

    from lmlab.analysis.plots import plot_scaling

    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "scaling.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
        image = plot_scaling(points, ChinchillaFit(**result["fit"]), out / "scaling.png", title)
    except OSError as err:
        raise LmlabError(f"cannot write the scaling fit into {out} ({err.strerror}); give a writable out=DIR") from err
    return [out / "scaling.json", image]


def describe(result: dict[str, Any]) -> list[str]:
    """The lines `lmlab report fit=scaling` prints: constants ± bootstrap std, the allocation, the held-out check."""
    fit, std = result["fit"], result["bootstrap"]["std"]
    alloc, held = result["allocation"], result["held_out"]
    lines = [
        f"L(N, D) = E + A/N^alpha + B/D^beta, fitted on {len(result['runs'])} runs "
        f"(± std over {result['bootstrap']['samples']} bootstrap refits; for A and B, of log10):",
        f"  E = {fit['E']:.4f} ± {std['E']:.4f}   alpha = {fit['alpha']:.4f} ± {std['alpha']:.4f}   "
        f"beta = {fit['beta']:.4f} ± {std['beta']:.4f}",
        f"  A = {fit['A']:.4g} (log10 ± {std['A']:.3f})   B = {fit['B']:.4g} (log10 ± {std['B']:.3f})",
        f"for compute C = {alloc['compute']:.3g} FLOPs (C = 6·N·D), use N* = {alloc['N']:.3g} params and "
        f"D* = {alloc['D']:.3g} tokens (predicted loss {alloc['loss']:.4f}; N* log10 ± {alloc['N_log10_std']:.3f})",
    ]
    if "skipped" in held:
        lines.append(f"held-out check skipped: {held['skipped']}")
    else:
        error = 100 * held["relative_error"]
        lines.append(f"held-out check: fit on {held['fit_runs']} runs with C <= C_max/4 predicts {held['run']} at "
                     f"{held['predicted']:.4f} vs {held['actual']:.4f} measured ({error:.2f} %)")  # fmt: skip
    return lines
