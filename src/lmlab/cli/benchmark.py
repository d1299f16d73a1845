"""`lmlab benchmark ckpt=RUN [tasks=[...]] [limit=N]`: lm-evaluation-harness tasks on a checkpoint, offline.

The model and the tasks are `lmlab.benchmark`; this command loads the checkpoint, runs the tasks, prints a table and
writes `results.json` into the run folder, then sends the metrics to TensorBoard and W&B.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from lmlab.cli.runner import hydra_entry
from lmlab.errors import LmlabError

if TYPE_CHECKING:
    from lmlab.benchmark.run import BenchmarkResult

log = logging.getLogger("lmlab")


def number(value: float) -> str:
    """Four decimals, or four significant digits for the large values perplexities reach."""
    return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"


def print_result(result: BenchmarkResult, written: Path, where: list[str]) -> None:
    """One row per task and metric, and where the results went."""
    from rich.console import Console
    from rich.table import Table

    table = Table("task", "metric", "value", "± stderr", "docs")
    for row in result.rows():
        stderr = "" if row["stderr"] is None else number(row["stderr"])
        docs = str(result.samples.get(row["task"], ""))
        table.add_row(row["task"], row["metric"], number(row["value"]), stderr, docs)
    console = Console(soft_wrap=True)
    console.print(table)
    console.print(f"written: {written}; logged to {', '.join(where) or 'nothing'}", markup=False, highlight=False)


def benchmark(cfg: DictConfig) -> BenchmarkResult:
    """Load the checkpoint as lm-eval's `lmlab` model, run the tasks, write and log the results."""
    from lmlab.benchmark import LmlabLM
    from lmlab.benchmark.run import run_benchmark, write_result
    from lmlab.runs.dashboards import Findings, log_findings
    from lmlab.runs.quiet import quiet_third_party

    quiet_third_party()
    if int(cfg.batch_size) < 1:
        raise LmlabError(f"batch_size={cfg.batch_size} must be a positive integer, e.g. batch_size=16")
    tasks = [str(t) for t in OmegaConf.to_container(cfg.tasks, resolve=True)] if cfg.tasks else []
    lm = LmlabLM(ckpt=str(cfg.ckpt), device=str(cfg.device), batch_size=int(cfg.batch_size), seed=int(cfg.seed))
    result = run_benchmark(lm, tasks, cfg.limit, bool(cfg.lm_eval_tasks), int(cfg.seed))
    run_dir = Path(cfg.output_dir)
    written = write_result(run_dir, result, {"checkpoint": str(lm.loaded.path), "step": lm.loaded.global_step})
    findings = Findings(summary=result.flat(), tables={"benchmark/results": result.rows()})
    where = log_findings(run_dir, "benchmark", findings, bool(cfg.tensorboard), bool(cfg.wandb))
    print_result(result, written, where)
    return result


main = hydra_entry("benchmark", benchmark)
