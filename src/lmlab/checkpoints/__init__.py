"""Checkpoints: find them in a run folder, load them safely (weights only), write them atomically."""

from __future__ import annotations

from lmlab.checkpoints.find import checkpoints_of, latest_checkpoint
from lmlab.checkpoints.load import LoadedCheckpoint, load_checkpoint, read_checkpoint, resolve_checkpoint

__all__ = [
    "LoadedCheckpoint",
    "checkpoints_of",
    "latest_checkpoint",
    "load_checkpoint",
    "read_checkpoint",
    "resolve_checkpoint",
]
