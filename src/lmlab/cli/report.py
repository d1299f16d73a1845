"""`lmlab report DIR [metric=val/bpb] [out=DIR]`: rank the runs of a sweep (or of any folder of runs).

The work happens in `lmlab.analysis.report`; this module only composes the config, prints the table and lists the files.
Neither imports torch or Lightning, so a report takes about as long as reading the files and drawing the plots.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from lmlab.cli.runner import hydra_entry
from lmlab.errors import LmlabError

if TYPE_CHECKING:
    from lmlab.analysis.report import Report

VALUE_OPTIONS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn", "--config-dir",
                 "-cd", "--experimental-rerun"}  # fmt: skip
"""Hydra options followed by a value (which is not the folder)."""


def folder_argument(args: list[str]) -> list[str]:
    """`lmlab report multirun/x` -> `lmlab report dir='multirun/x'`: a bare argument is the folder to report on."""
    out = []
    for i, arg in enumerate(args):
        after_option = i > 0 and args[i - 1] in VALUE_OPTIONS
        if "=" not in arg and not arg.startswith("-") and not after_option:
            arg = "dir='" + arg.replace("\\", "\\\\").replace("'", "\\'") + "'"
        out.append(arg)
    return out


def print_report(report: Report, written: list[Path]) -> None:
    """The ranked table on the terminal, then the files written."""
    from rich.console import Console
    from rich.measure import Measurement
    from rich.table import Table
    from rich.text import Text

    from lmlab.analysis.report import format_cell

    rows = report.rows()
    table = Table(title=Text(report.title()))  # Text: brackets in paths and settings are not markup
    for column in rows[0]:
        numeric = column not in ("run", "status", *report.swept)
        table.add_column(Text(column), justify="right" if numeric else "left")
    for row in rows:
        style = "dim" if row["status"] != "ok" else None
        table.add_row(*(Text(format_cell(c, v)) for c, v in row.items()), style=style)
    console = Console(soft_wrap=True)
    if not console.is_terminal:  # piped or captured: print the whole table rather than squeeze it into 80 columns
        console.width = Measurement.get(console, console.options.update(width=10_000), table).maximum
    console.print(table)
    for path in written:
        console.print(f"written: {path}", markup=False, highlight=False)


def report(cfg: DictConfig) -> None:
    """Rank the runs under `cfg.dir`, print the table, write the report files."""
    from lmlab.analysis.report import build_report, write_report

    if OmegaConf.is_missing(cfg, "dir"):
        raise LmlabError("give the folder to report on: lmlab report multirun/<date>/<time> (or outputs/...)")
    check_fit_options(cfg)
    metrics = [cfg.metrics] if isinstance(cfg.metrics, str) else list(cfg.metrics or [])  # metrics=val/ppl: one
    report = build_report(cfg.dir, cfg.metric, cfg.maximize, cfg.rank_by, metrics)
    out = Path(cfg.out).expanduser() if cfg.out else report.root
    print_report(report, write_report(report, out, plots=cfg.plots))
    if cfg.get("fit") is not None:
        fit_scaling(report, out, cfg)


def check_fit_options(cfg: DictConfig) -> None:
    """`fit=` and `compute=` refused before any file is written."""
    if cfg.get("fit") not in (None, "scaling"):
        raise LmlabError(f"fit={cfg.fit!r} is unknown; choose fit=scaling (or leave fit out)")
    compute = cfg.get("compute")
    if compute is not None and (isinstance(compute, bool) or not isinstance(compute, int | float) or compute <= 0):
        raise LmlabError(f"compute={compute!r} is not a positive number of FLOPs; give e.g. compute=1e15")


def fit_scaling(report: Report, out: Path, cfg: DictConfig) -> None:
    """`fit=scaling`: the Chinchilla fit of the runs' final metric against parameters and tokens, printed and
    written as scaling.json and scaling.png."""
    from lmlab.analysis.scaling import describe, scaling_points, scaling_result, write_scaling

    if report.maximize:
        raise LmlabError(f"fit=scaling fits a loss; {report.metric} is maximized: give metric=val/loss")
    points = scaling_points(report.runs, report.metric, cfg.scaling.parameters)
    result = scaling_result(points, cfg.compute, cfg.scaling.bootstrap, cfg.scaling.seed)
    for line in describe(result):
        print(line)
    for path in write_scaling(result, points, out, title=str(report.root)):
        print(f"written: {path}")


_report_main = hydra_entry("report", report)


def main() -> None:
    sys.argv = [sys.argv[0], *folder_argument(sys.argv[1:])]
    _report_main()
