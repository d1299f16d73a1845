"""`custom_dataset` hooks of the YAML tasks beside this file: lm-eval imports this file by path (`!function
utils.NAME`), and each hook builds its task's documents from the Shakespeare corpus (`lmlab.benchmark.docs`)."""

from __future__ import annotations

from typing import Any

from lmlab.benchmark.docs import task_dataset


def shakespeare_speaker(**settings: Any) -> dict[str, Any]:
    return task_dataset("shakespeare_speaker", **settings)


def shakespeare_cloze(**settings: Any) -> dict[str, Any]:
    return task_dataset("shakespeare_cloze", **settings)


def shakespeare_ppl(**settings: Any) -> dict[str, Any]:
    return task_dataset("shakespeare_ppl", **settings)
