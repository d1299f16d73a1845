"""Finding a run's checkpoints: newest first, the damaged ones skipped, a run folder or a file accepted."""

from __future__ import annotations

import logging
from pathlib import Path

from lmlab.errors import LmlabError

log = logging.getLogger("lmlab")

RUN_CONFIG = "config.yaml"
"""The resolved config a training run writes at its start; its presence marks an lmlab run folder."""


def locate(path: Path) -> tuple[Path, Path]:
    """`resume=<run dir>` or `resume=<checkpoint>` -> (run directory, checkpoint to load)."""
    if path.is_dir():
        return path, latest_checkpoint(path)
    if path.is_file():
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        if not (run_dir / RUN_CONFIG).is_file():
            raise LmlabError(
                f"resume={path}: the checkpoint is not inside an lmlab run folder (no {RUN_CONFIG} beside it); "
                f"to continue training from it in a new run, give ckpt_path={path} instead of resume"
            )
        return run_dir, path
    raise LmlabError(f"resume={path} does not exist; give a run folder, a .ckpt file, or resume=auto")


def checkpoints_of(run_dir: Path) -> list[Path]:
    """A run's checkpoints, newest first (`last.ckpt` first among equally new ones); SLURM's `hpc_ckpt_*` too."""
    files = [*(run_dir / "checkpoints").glob("*.ckpt"), *run_dir.glob("hpc_ckpt_*.ckpt")]
    return sorted(files, key=lambda p: (p.stat().st_mtime, p.name == "last.ckpt"), reverse=True)


def checkpoint_step(path: Path) -> int:
    """The global step a checkpoint was saved at (loading it safely, so a damaged file is an `LmlabError`)."""
    from lmlab.checkpoints.load import read_checkpoint

    return int(read_checkpoint(path).get("global_step", 0))


def latest_checkpoint(run_dir: Path) -> Path:
    """The newest checkpoint of a run that loads (a damaged newest one is skipped with a warning)."""
    for path in checkpoints_of(run_dir):
        try:
            checkpoint_step(path)
        except LmlabError as err:
            log.warning("resume: skipping %s (%s)", path, err)
            continue
        return path
    raise LmlabError(f"resume: {run_dir} holds no loadable checkpoint; start a new run (leave out resume)")
