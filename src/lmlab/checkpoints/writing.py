"""How every lmlab Trainer writes checkpoints, and which cluster plugins it gets.

`AtomicCheckpointIO` writes a checkpoint to a temporary file in the target's folder, flushes it to the disk, then
renames it over the target: a process killed at any moment leaves the previous checkpoint whole and loadable.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins.io import CheckpointIO, TorchCheckpointIO

from lmlab.io import atomic_write

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose local writes are atomic and durable (temp file, fsync, `os.replace`, fsync folder).

    Remote paths (`s3://…`) keep Lightning's own transactional write.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or ("://" in str(path) and not str(path).startswith("file://")):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = Path(str(path).removeprefix("file://"))

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())

        atomic_write(target, write)
        sync_folder(target.parent)


def sync_folder(folder: Path) -> None:
    """Flush a folder's entry list, so a rename inside it survives a power cut (best effort; not on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def trainer_plugins(configured: list[Any] | None = None) -> list[Any]:
    """The plugins of a configured Trainer plus lmlab's defaults: atomic checkpoint writes (unless a `CheckpointIO`
    is configured) and, under SLURM, `SLURMEnvironment(auto_requeue=True)`: on SIGUSR1 Lightning saves
    `hpc_ckpt_N.ckpt` in the run directory and requeues the job; the requeued job continues with `resume=auto`."""
    from lightning_fabric.plugins.environments import ClusterEnvironment, SLURMEnvironment

    plugins = list(configured or [])
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    if not any(isinstance(p, ClusterEnvironment) for p in plugins) and SLURMEnvironment.detect():
        log.info("SLURM job: a checkpoint and a requeue on SIGUSR1 (sbatch --signal=SIGUSR1@90)")
        plugins.append(SLURMEnvironment(auto_requeue=True, requeue_signal=signal.SIGUSR1))
    return plugins
