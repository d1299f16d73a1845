"""`python -m lmlab.benchmark --model lmlab --model_args ckpt=RUN --tasks shakespeare_speaker`: lm-eval's own command
line, with the `lmlab` model registered and lmlab's tasks on its include path.

lm-eval 0.4 finds models only in its registry (it reads no plugin entry points), so a bare `lm_eval --model lmlab`
cannot see lmlab's model; this entry imports it first, then hands every argument to lm-eval.
"""

from __future__ import annotations

import sys

from lmlab.benchmark.model import LmlabLM
from lmlab.benchmark.run import TASKS_DIR


def main(argv: list[str] | None = None) -> None:
    """Run lm-eval's command line on `argv` (default: this process's arguments)."""
    from lm_eval.__main__ import cli_evaluate

    args = list(sys.argv[1:] if argv is None else argv)
    if "--model" in args and "--include_path" not in args:
        args += ["--include_path", str(TASKS_DIR)]
    sys.argv = ["lm_eval", *args]
    assert LmlabLM  # imported for its registration as lm-eval's model `lmlab`
    cli_evaluate()


if __name__ == "__main__":
    main()
