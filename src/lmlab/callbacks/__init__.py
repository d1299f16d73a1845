"""Lightning callbacks."""

from __future__ import annotations

from lmlab.callbacks.metadata import CheckpointMetadata
from lmlab.callbacks.progress import LMProgressBar
from lmlab.callbacks.throughput import Throughput, TokensPerSecond

__all__ = ["CheckpointMetadata", "LMProgressBar", "Throughput", "TokensPerSecond"]
