"""Run the command line: in a subprocess, or a command's task function in-process expecting a one-line error."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import pytest
from omegaconf import DictConfig

from lmlab.cli.runner import reports_errors


def run_cli(
    *args: str, cwd=None, env=None, timeout: int = 120, input: str | None = None
) -> subprocess.CompletedProcess:
    """Run `python -m lmlab ARGS` (`input`: its standard input); `env` entries set to None are removed from the
    environment."""
    full_env = {**os.environ, "WANDB_MODE": "offline", "LMLAB_COMMAND": None, **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v is not None}
    return subprocess.run(
        [sys.executable, "-m", "lmlab", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=timeout,
        input=input,
    )


def one_line_error(command: Callable[[DictConfig], object], cfg: DictConfig, capsys) -> str:
    """Run a command's function as `lmlab` runs it (`reports_errors`); it must exit 1 with exactly one `error: ...`
    line."""
    with pytest.raises(SystemExit) as exit_:
        reports_errors(command)(cfg)
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    return err
