"""Results of many runs side by side: find run folders, read their metrics and configs, rank them, write a table.

Reads only files a run leaves behind (`config.yaml`, `.hydra/overrides.yaml`, `csv/metrics.csv`, `summary.json`,
and the `*.eval.json` that `lmlab eval` writes beside a checkpoint), so a report needs no torch or Lightning.
`lmlab report` (cli/report.py) prints and writes what `build_report` returns.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lmlab.errors import LmlabError

MAXIMIZED = {"acc", "accuracy", "f1", "precision", "recall", "auc", "mcc", "mfu", "bleu", "chrf"}
"""Parts of a metric name (split at `/` and `_`) that mean higher is better; anything else is minimized."""
SKIPPED_DIRS = {"checkpoints", "csv", "wandb", "tensorboard", "__pycache__"}
"""Folders inside a run that never hold another run (searching them would be slow on big sweeps)."""
RESUMED_FROM = re.compile(r"\(this invocation's Hydra folder: (.+)\)$")
"""A line of a run's `resumes.log` (lmlab.config.resume.note_resume) naming the resuming invocation's folder."""


@dataclass
class Run:
    """What one run folder holds."""

    path: Path
    name: str
    """The folder relative to the report's root ("." for the root itself)."""
    overrides: dict[str, str]
    """`key=value` overrides it was started with (`.hydra/overrides.yaml`), keys without `+`/`~`."""
    config: dict[str, Any]
    """The resolved run config (`config.yaml`); empty when the run stopped before writing it."""
    summary: dict[str, Any] | None
    """`summary.json` (final metrics, parameters, time): None when the run did not finish."""
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    """Each logged metric of `csv/metrics.csv` as (step, value) pairs."""
    evaluations: dict[str, float] = field(default_factory=dict)
    """Metrics of `lmlab eval` on the run's checkpoints (`*.eval.json`; the newest file wins a name twice)."""

    @property
    def finished(self) -> bool:
        return self.summary is not None

    def final(self, metric: str) -> float | None:
        """The metric at the end of training (`summary.json`), else its last logged value, else what `lmlab eval`
        measured on the run's checkpoint (e.g. test/chrf)."""
        metrics = (self.summary or {}).get("metrics")
        value = metrics.get(metric) if isinstance(metrics, dict) else None
        if not isinstance(value, int | float) and self.history.get(metric):
            value = self.history[metric][-1][1]
        if not isinstance(value, int | float):
            value = self.evaluations.get(metric)
        return float(value) if isinstance(value, int | float) and math.isfinite(value) else None

    def best(self, metric: str, maximize: bool) -> tuple[float, int | None] | None:
        """The best logged value of the metric and its step (the final value when nothing was logged)."""
        points = [(v, s) for s, v in self.history.get(metric, []) if math.isfinite(v)]
        if not points:
            final = self.final(metric)
            return None if final is None else (final, (self.summary or {}).get("steps"))
        return max(points, key=lambda p: (p[0], -p[1])) if maximize else min(points)  # earliest step on ties

    def value_of(self, key: str) -> str:
        """The run's setting `key`: its override, else the resolved config's value, else Hydra's group choice."""
        if key in self.overrides:
            return self.overrides[key]
        node: Any = self.config
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None and not isinstance(node, (dict, list)):
            return str(node)
        return str(self.choices.get(key) or "-")

    @functools.cached_property
    def choices(self) -> dict[str, Any]:
        """The config-group choices Hydra recorded (`.hydra/hydra.yaml`), e.g. {"model": "gpt"}."""
        data = _read_yaml(self.path / ".hydra/hydra.yaml")
        choices = data.get("hydra", {}).get("runtime", {}).get("choices") if isinstance(data, dict) else None
        return choices if isinstance(choices, dict) else {}


@dataclass
class Report:
    """Runs ranked by one metric, with the settings that differ between them."""

    root: Path
    metric: str
    maximize: bool
    rank_by: str
    runs: list[Run]
    """Best first; runs without the metric, then failed runs, last."""
    swept: list[str]
    """Setting keys whose values differ between runs: the table's columns and one plot each."""
    extra_metrics: list[str]

    def label(self, run: Run) -> str:
        """A run's name in plots: its swept settings, else its folder."""
        return ", ".join(f"{k}={short_number(run.value_of(k))}" for k in self.swept) or run.name

    def rows(self) -> list[dict[str, Any]]:
        """One dict per run (raw values, None where unknown), in rank order."""
        rows = []
        for rank, run in enumerate(self.runs, start=1):
            best = run.best(self.metric, self.maximize)
            summary = run.summary or {}
            row: dict[str, Any] = {"rank": rank, "run": run.name}
            row |= {key: run.value_of(key) for key in self.swept}
            row[f"{self.metric} final"] = run.final(self.metric)
            row[f"{self.metric} best"] = None if best is None else best[0]
            row["best step"] = None if best is None else best[1]
            row |= {name: run.final(name) for name in self.extra_metrics}
            row["steps"] = summary.get("steps")
            row["fit time (s)"] = summary.get("fit_seconds")
            row["tokens/s"] = summary.get("tokens_per_s")
            row["parameters"] = summary.get("parameters")
            row["status"] = "ok" if run.finished else "failed"
            rows.append(row)
        return rows

    def title(self) -> str:
        better = "higher" if self.maximize else "lower"
        return f"{len(self.runs)} runs in {self.root}, ranked by {self.rank_by} {self.metric} ({better} is better)"


def find_runs(root: Path) -> list[Path]:
    """Run folders at or below `root`: those holding `config.yaml`, `summary.json` or `.hydra/overrides.yaml`, except
    the folders of invocations that resumed one of them."""
    root = Path(root)
    if not root.exists():
        raise LmlabError(f"{root} does not exist; give a run folder (outputs/...) or a sweep folder (multirun/...)")
    if not root.is_dir():
        raise LmlabError(f"{root} is not a folder; give a run folder (outputs/...) or a sweep folder (multirun/...)")
    runs = list(_walk(root))
    attempts = resumed_attempts(runs, root)
    return sorted((r for r in runs if r not in attempts), key=lambda p: natural_key(str(p.relative_to(root))))


def _walk(folder: Path) -> Iterator[Path]:
    if is_run(folder):
        yield folder  # runs do not nest; what is inside (e.g. wandb/*/files/config.yaml) is not another run
        return
    try:
        children = sorted(p for p in folder.iterdir() if p.is_dir())
    except OSError:
        return
    for child in children:
        if not child.name.startswith(".") and child.name not in SKIPPED_DIRS:
            yield from _walk(child)


def is_run(folder: Path) -> bool:
    return any((folder / name).is_file() for name in ("config.yaml", "summary.json", ".hydra/overrides.yaml"))


def resumed_attempts(runs: Sequence[Path], root: Path) -> set[Path]:
    """The Hydra folders among `runs` of later invocations that resumed a run (`lmlab train resume=...`): they hold
    only that invocation's `.hydra/` and log, while the run itself lives, and counts, in its first folder, whose
    `resumes.log` names them. A folder also matches by its path below the report's parent (a copied or moved tree)."""
    named: set[tuple[str, ...]] = set()
    for run in runs:
        try:
            lines = (run / "resumes.log").read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            continue
        named |= {Path(m[1]).parts for line in lines if (m := RESUMED_FROM.search(line))}
    attempts = set()
    for folder in runs:
        if (folder / "config.yaml").is_file() or (folder / "summary.json").is_file():
            continue  # a run of its own (e.g. resume=auto that found nothing to resume)
        full = folder.resolve().parts
        tail = folder.resolve().relative_to(root.resolve().parent).parts
        if any(parts == full or parts[-len(tail) :] == tail for parts in named):
            attempts.add(folder)
    return attempts


def natural_key(text: str) -> list[Any]:
    """Sort key that puts job 10 after job 9."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def load_run(path: Path, root: Path) -> Run:
    """Read one run folder; missing or damaged files leave their part empty instead of failing."""
    name = str(path.relative_to(root)) if path != root else "."
    overrides_file = next((f for f in (path / ".hydra/overrides.yaml", path / "overrides.yaml") if f.is_file()), None)
    overrides = parse_overrides(_read_yaml(overrides_file) or []) if overrides_file else {}
    config = _read_yaml(path / "config.yaml")
    summary = _read_json(path / "summary.json")
    metrics_csv = next(iter([path / "csv/metrics.csv", *sorted(path.glob("*/metrics.csv"))]), None)
    history = read_history(metrics_csv) if metrics_csv and metrics_csv.is_file() else {}
    config = config if isinstance(config, dict) else {}
    return Run(path, name, overrides, config, summary, history, read_evaluations(path))


def read_evaluations(path: Path) -> dict[str, float]:
    """The numeric metrics of the run's `*.eval.json` files (in the run folder and `checkpoints/`), oldest first so
    a newer evaluation of a metric replaces an older one."""
    files = sorted([*path.glob("*.eval.json"), *path.glob("checkpoints/*.eval.json")], key=lambda f: f.stat().st_mtime)
    metrics: dict[str, float] = {}
    for file in files:
        found = (_read_json(file) or {}).get("metrics")
        if isinstance(found, dict):
            metrics |= {str(k): float(v) for k, v in found.items() if isinstance(v, int | float)}
    return metrics


def parse_overrides(lines: Sequence[Any]) -> dict[str, str]:
    """Hydra override strings -> {key: value}; `hydra.*` settings (output folders) are left out."""
    overrides = {}
    for line in map(str, lines):
        key, _, value = line.partition("=")
        key = key.lstrip("+~")
        if key and not key.startswith(("hydra.", "hydra/")):
            overrides[key] = value if "=" in line else "(deleted)"
    return overrides


def read_history(path: Path) -> dict[str, list[tuple[int, float]]]:
    """Columns of a Lightning `CSVLogger` file as (step, value) series; blank cells (other metrics' rows) skipped."""
    history: dict[str, list[tuple[int, float]]] = {}
    try:
        with path.open(newline="", encoding="utf-8") as file:
            for row in csv.DictReader(file):
                step = _number(row.get("step"))
                for name, cell in row.items():
                    value = _number(cell)
                    if name not in ("epoch", "step") and name and value is not None and step is not None:
                        history.setdefault(name, []).append((int(step), value))
    except (OSError, csv.Error, UnicodeDecodeError):
        return {}
    return history


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def maximized(metric: str) -> bool:
    """Whether higher is better for a metric, from its name: accuracy and F1 yes, loss, ppl and bpb no."""
    return any(part in MAXIMIZED for part in re.split(r"[/_]", metric.lower()))


def chosen_metric(runs: Sequence[Run]) -> str:
    """The `optimized_metric` most runs were configured with (val/loss when none says)."""
    named = [str(r.config["optimized_metric"]) for r in runs if r.config.get("optimized_metric")]
    return max(set(named), key=named.count) if named else "val/loss"


def swept_keys(runs: Sequence[Run]) -> list[str]:
    """Override keys whose values differ between runs; without overrides, the config values that differ."""
    keys = list(dict.fromkeys(k for run in runs for k in run.overrides))
    differing = [k for k in keys if len({_canonical(run.value_of(k)) for run in runs}) > 1]
    if differing or len(runs) < 2:
        return differing
    flat = [dict(_flatten(run.config)) for run in runs]
    keys = [k for k in dict.fromkeys(k for f in flat for k in f) if not _is_location(k)]
    return [k for k in keys if len({_canonical(str(f.get(k, "-"))) for f in flat}) > 1]


def _canonical(value: str) -> str:
    """1e-3 and 0.001 are the same setting."""
    number = _number(value)
    return repr(number) if number is not None else value


def _flatten(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, child in node.items():
            yield from _flatten(child, f"{prefix}{key}.")
    else:
        yield prefix[:-1], node


def _is_location(key: str) -> bool:
    """Settings that differ between any two runs without being a choice (their own folders)."""
    return key.startswith("paths.") or key.endswith(("_dir", ".dirpath", ".save_dir"))


def build_report(
    root: str | Path,
    metric: str | None = None,
    maximize: bool | None = None,
    rank_by: str = "final",
    extra_metrics: Sequence[str] = (),
) -> Report:
    """Find and read the runs under `root` and rank them by `metric` (default: the runs' `optimized_metric`)."""
    root = Path(root).expanduser()
    paths = find_runs(root)
    if not paths:
        raise LmlabError(
            f"no runs under {root} (no folder with config.yaml, summary.json or .hydra/overrides.yaml); give a run "
            "folder (outputs/<task>/<date>/<time>) or a sweep folder (multirun/<date>/<time>)"
        )
    if rank_by not in ("final", "best"):
        raise LmlabError(f"rank_by={rank_by!r} is unknown; choose final or best")
    runs = [load_run(path, root) for path in paths]
    metric = metric or chosen_metric(runs)
    maximize = maximized(metric) if maximize is None else maximize

    def key(run: Run) -> tuple[int, float]:
        """Finished runs with the metric first, then finished runs without it, then failed ones (by what they
        logged before they stopped)."""
        best = run.best(metric, maximize)
        value = run.final(metric) if rank_by == "final" else (best[0] if best else None)
        group = 2 if not run.finished else 0 if value is not None else 1
        return (group, math.inf if value is None else -value if maximize else value)

    runs.sort(key=key)  # stable: ties keep folder order
    return Report(root, metric, maximize, rank_by, runs, swept_keys(runs), list(extra_metrics))


def format_cell(name: str, value: Any) -> str:
    """A table cell for people: metrics with 4 decimals, swept numbers with 4 significant digits, times in seconds,
    thousands separated."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value if name in ("run", "status") else short_number(value)
    if name == "parameters":
        return f"{value / 1e6:.2f} M" if value >= 1e5 else f"{value:,}"
    if name == "tokens/s":
        return f"{value:,.0f}"
    if name == "fit time (s)":
        return f"{value:.1f}"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def short_number(text: str) -> str:
    """A setting's value as written, unless it is a fraction with more than 4 significant digits (a sampled
    `optimizer.lr=0.0015291934777093281` -> `0.001529`); whole numbers stay exact, and the CSV keeps every digit."""
    number = _number(text)
    if number is None or not math.isfinite(number) or number.is_integer():
        return text
    short = f"{number:.4g}"
    return short if float(short) != number else text


def markdown(report: Report, images: Sequence[Path] = ()) -> str:
    """The ranked table in Markdown, followed by links to the plots."""
    rows = report.rows()
    columns = list(rows[0])
    cell = lambda text: text.replace("|", "\\|")  # noqa: E731 - a pipe inside a cell would split it
    lines = [f"# {report.title()}", "", "| " + " | ".join(map(cell, columns)) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(format_cell(c, row[c])) for c in columns) + " |" for row in rows]
    lines += ["", *[f"![{image.stem}]({image.name})" for image in images]]
    return "\n".join(lines).rstrip() + "\n"


def write_csv(report: Report, path: Path) -> None:
    """The ranked table with raw numbers (empty cells where unknown)."""
    rows = report.rows()
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)


def safe_name(text: str) -> str:
    """A setting key as part of a file name: `optimizer.lr` -> `optimizer.lr`, `model/x` -> `model_x`."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "value"


def write_plots(report: Report, out: Path) -> list[Path]:
    """`report_curves.png` (the metric against step, one line per run) and `report_vs_<key>.png` per swept
    setting (final metric against its value). Plots with nothing to draw are not written."""
    from lmlab.analysis.plots import plot_curves, plot_metric_vs_setting

    written = []
    curves: dict[str, list[tuple[int, float]]] = {}
    for run in (r for r in report.runs if r.history.get(report.metric)):
        label = report.label(run)
        curves[f"{label} ({run.name})" if label in curves else label] = run.history[report.metric]
    if curves:
        written.append(plot_curves(curves, report.metric, out / "report_curves.png", title=str(report.root)))
    finished = [run for run in report.runs if run.finished]
    for key in report.swept:
        points = [(r.value_of(key), v) for r in finished if (v := r.final(report.metric)) is not None]
        if points:
            path = out / f"report_vs_{safe_name(key)}.png"
            written.append(plot_metric_vs_setting(points, key, report.metric, path, report.maximize))
    return written


def write_report(report: Report, out: Path, plots: bool = True) -> list[Path]:
    """Write report.md, report.csv and the plots into `out`; return the written paths."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        images = write_plots(report, out) if plots else []
        (out / "report.md").write_text(markdown(report, images), encoding="utf-8")
        write_csv(report, out / "report.csv")
    except OSError as err:
        raise LmlabError(f"cannot write the report into {out} ({err.strerror}); give a writable out=DIR") from err
    return [out / "report.md", out / "report.csv", *images]
