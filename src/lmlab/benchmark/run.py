"""Run lm-eval tasks on an lmlab model and keep what they measured: the library behind `lmlab benchmark`."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmlab.errors import LmlabError
from lmlab.io import atomic_write_text

log = logging.getLogger("lmlab")

TASKS_DIR = Path(__file__).with_name("tasks")
"""lmlab's own lm-eval tasks (YAML + the hook that builds their documents), given to lm-eval as `include_path`."""
SHIPPED_TASKS = tuple(sorted(p.stem for p in TASKS_DIR.glob("*.yaml")))


@dataclass
class BenchmarkResult:
    """What `lmlab benchmark` measured: per task, lm-eval's metrics (`acc`, `acc_stderr`, `word_perplexity`...)."""

    metrics: dict[str, dict[str, float]]
    samples: dict[str, int]
    """Documents scored per task."""
    config: dict[str, Any] = field(default_factory=dict)
    """The settings of the run (checkpoint, tasks, limit, lm-eval version)."""

    def flat(self) -> dict[str, float]:
        """Metrics as `benchmark/<task>/<metric>` (the loggers' names)."""
        metrics = self.metrics.items()
        return {f"benchmark/{task}/{name}": value for task, named in metrics for name, value in named.items()}

    def rows(self) -> list[dict[str, Any]]:
        """One row per task and metric: task, metric, value, stderr."""
        rows = []
        for task, named in self.metrics.items():
            for name, value in named.items():
                if not name.endswith("_stderr"):
                    rows.append({"task": task, "metric": name, "value": value, "stderr": named.get(f"{name}_stderr")})
        return rows


def task_manager(lm_eval_tasks: bool = False) -> Any:
    """lm-eval's task index over lmlab's tasks (and lm-eval's own when asked: their datasets must be cached offline)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR), include_defaults=lm_eval_tasks)


def check_tasks(tasks: list[str], manager: Any) -> None:
    """Refuse an empty task list or a task lm-eval does not know, naming the shipped ones."""
    if not tasks:
        raise LmlabError(f"tasks is empty; name some, e.g. tasks=[{','.join(SHIPPED_TASKS)}]")
    known = set(manager.all_tasks)
    if unknown := [t for t in tasks if t not in known]:
        raise LmlabError(f"unknown task {unknown[0]!r}; choose from {', '.join(SHIPPED_TASKS)} (lmlab's own) or set "
                         "lm_eval_tasks=true for lm-eval's (their datasets must be available offline)")  # fmt: skip


def run_benchmark(
    lm: Any, tasks: list[str], limit: int | None = None, lm_eval_tasks: bool = False, seed: int = 0
) -> BenchmarkResult:
    """Evaluate `lm` (an lm-eval model, e.g. `LmlabLM`) on `tasks`; `limit` documents per task at most."""
    import lm_eval
    from lm_eval.evaluator import simple_evaluate

    if limit is not None and limit < 1:
        raise LmlabError(f"limit={limit} must be a positive integer (or null for every document)")
    manager = task_manager(lm_eval_tasks)
    check_tasks(tasks, manager)
    with quiet_lm_eval():
        out = simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit, log_samples=False,
                              random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                              fewshot_random_seed=seed)  # fmt: skip
    metrics = {task: numbers(values) for task, values in out["results"].items()}
    samples = {task: int(n["effective"]) for task, n in out.get("n-samples", {}).items()}
    config = {"tasks": list(tasks), "limit": limit, "lm_eval": lm_eval.__version__, "seed": seed}
    return BenchmarkResult(metrics, samples, config)


@contextlib.contextmanager
def quiet_lm_eval() -> Iterator[None]:
    """lm-eval's info lines and its advice on task metadata held back while it runs: the table is the output."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def numbers(values: dict[str, Any]) -> dict[str, float]:
    """lm-eval's per-task entries as `metric: value`, its `acc,none` keys read as `acc` (filters other than none
    kept as `acc/<filter>`); entries that are not numbers (names, 'N/A' stderrs) left out."""
    found = {}
    for key, value in values.items():
        if "," not in key or not isinstance(value, int | float) or isinstance(value, bool):
            continue
        name, filter_name = key.split(",", 1)
        found[name if filter_name == "none" else f"{name}/{filter_name}"] = float(value)
    return found


def write_result(folder: Path, result: BenchmarkResult, extra: dict[str, Any]) -> Path:
    """`results.json` in `folder`: the settings, documents per task and metrics; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "results.json"
    body = {**extra, **result.config, "samples": result.samples, "results": result.metrics}
    atomic_write_text(path, json.dumps(body, indent=2) + "\n")
    return path
