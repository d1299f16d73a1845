"""`lmlab <command> [hydra overrides]`: dispatch to one small module per command."""

from __future__ import annotations

import gc
import importlib
import os
import sys

from lmlab.errors import LmlabError

COMMANDS = {
    "train": ("lmlab.cli.train", "train a model (default: char-level GPT on Shakespeare)"),
    "generate": ("lmlab.cli.generate", "sample text from a checkpoint: lmlab generate ckpt=RUN prompt='...'"),
    "chat": ("lmlab.cli.chat", "chat with a model in the terminal (default: SmolLM2-135M-Instruct): lmlab chat"),
    "serve": ("lmlab.cli.serve", "OpenAI-compatible server and chat page (default: SmolLM2): lmlab serve port=8000"),
    "eval": ("lmlab.cli.eval", "evaluate a checkpoint: loss, perplexity, bits per byte (accuracy/F1 for classifiers)"),
    "predict": ("lmlab.cli.predict", "classify texts with a checkpoint: lmlab predict ckpt=RUN input=FILE output=FILE"),
    "export": ("lmlab.cli.export", "export a checkpoint to Hugging Face format: lmlab export ckpt=RUN out=DIR"),
    "inspect": ("lmlab.cli.inspect", "look inside a checkpoint on a text: per-token loss page, attention maps, cache"),
    "lens": ("lmlab.cli.lens", "the logit lens (and tuned lens): what each layer predicts, loss per layer"),
    "probe": ("lmlab.cli.probe", "linear probes of each layer's residual stream: lmlab probe ckpt=RUN data=..."),
    "patch": ("lmlab.cli.patch", "activation patching, layer x position: lmlab patch ckpt=RUN clean=... corrupted=..."),
    "steer": ("lmlab.cli.steer", "a steering vector from two sets of texts, for generate's steer.vector=..."),
    "benchmark": ("lmlab.cli.benchmark", "lm-evaluation-harness tasks on a checkpoint: lmlab benchmark ckpt=RUN"),
    "report": ("lmlab.cli.report", "rank the runs of a sweep, write report.md/.csv and plots: lmlab report DIR"),
}
UNTYPED_COMMANDS = {"report"}  # read run folders only: no schemas, whose model dataclasses would import torch
COMMAND_ENV = "LMLAB_COMMAND"  # lets re-executed worker processes (e.g. DDP ranks) find their command

USAGE = "usage: lmlab <command> [overrides ...] [-m] [--cfg job] [--help]\n\ncommands:\n" + "\n".join(
    f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()
)


def _is_option(arg: str) -> bool:
    """An override (`key=value`) or a flag, as opposed to a (mistyped) command name."""
    return "=" in arg or arg.startswith("-")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `lmlab` script and `python -m lmlab` (`argv` None), or of a caller that passes `argv`.

    Where the process is the command, its objects are frozen when the command ends (`gc.freeze`): the interpreter's
    exit then skips collecting the millions of objects torch, Lightning and W&B imported, which took 1.3 s after
    every `lmlab train` (0.2 s now). `atexit` handlers (logging, W&B) still run; a caller's process is left alone."""
    from lmlab.runs.timing import mark_process_start

    mark_process_start()  # this process runs a command: its first run times start-up from the process start
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in COMMANDS:
        command = args.pop(0)
    elif os.environ.get(COMMAND_ENV) in COMMANDS and (not args or _is_option(args[0])):
        command = os.environ[COMMAND_ENV]  # a re-executed worker: its argv holds only the overrides
    elif not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    else:
        print(f"error: unknown command {args[0]!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    from lmlab.config.groups import check_group_choices, null_choices_as_deletions
    from lmlab.config.validate import check_override_syntax, check_overrides, typed_run

    try:
        args = null_choices_as_deletions(command, args)
        check_override_syntax(args)
        typed = command not in UNTYPED_COMMANDS and typed_run(args)  # registers the schemas: choices to check
        check_group_choices(command, args)
        if typed:
            check_overrides(command, args)
    except LmlabError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    os.environ[COMMAND_ENV] = command
    sys.argv = [sys.argv[0], *args, *worker_overrides(command, args)]
    try:
        importlib.import_module(COMMANDS[command][0]).main()
    finally:
        if argv is None:
            gc.freeze()


def worker_overrides(command: str, args: list[str]) -> list[str]:
    """Hydra settings for a process that is not the run's first (under torchrun, srun, or on node 1.. of Lightning's
    NODE_RANK launch), the ones Lightning gives the processes it starts itself: no `.hydra/` record (the first process
    writes the run's) and a log file of its own, so processes that share one run folder never write the same file."""
    from lmlab.compute.ranks import is_first_process, process_name

    if is_first_process():
        return []
    given = {arg.split("=", 1)[0] for arg in args}
    wanted = {"hydra.output_subdir": "null", "hydra.job.name": f"{command}_{process_name()}"}
    return [f"{key}={value}" for key, value in wanted.items() if key not in given]


if __name__ == "__main__":
    main()
