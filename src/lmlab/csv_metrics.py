"""A CSV metrics logger that survives a resume: the run's `csv/metrics.csv` keeps the rows of its earlier parts."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from pytorch_lightning import loggers
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment

from lmlab.io import atomic_write_text


class CSVLogger(loggers.CSVLogger):
    """Lightning's `CSVLogger`, except that it appends to a `metrics.csv` it finds instead of deleting it."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is not None:
            return self._experiment
        path = Path(self.log_dir) / ExperimentWriter.NAME_METRICS_FILE
        earlier = path.read_text(encoding="utf-8") if path.is_file() else ""
        writer = super().experiment  # removes the file
        if earlier.strip():
            path.write_text(earlier, encoding="utf-8")
            writer.metrics_keys = sorted(next(csv.reader(io.StringIO(earlier))))  # new columns are merged in
        return writer


def trim_metrics(path: Path, step: int) -> None:
    """Drop the rows of a `metrics.csv` logged at `step` or later (a resumed run logs them again)."""
    if not path.is_file():
        return
    rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    if not rows or "step" not in rows[0]:
        return
    kept = [row for row in rows if row["step"] and int(float(row["step"])) < step]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(kept)
    atomic_write_text(path, out.getvalue())
