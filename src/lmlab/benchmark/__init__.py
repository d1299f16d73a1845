"""Benchmarks through lm-evaluation-harness: lmlab checkpoints as an lm-eval model, and small offline tasks built
from the corpora lmlab reads (`lmlab benchmark ckpt=RUN tasks=[...]`)."""

from __future__ import annotations

from lmlab.benchmark.model import LmlabLM, rolling_windows, score_rows

__all__ = ["LmlabLM", "rolling_windows", "score_rows"]
