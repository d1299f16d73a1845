"""Lightning callbacks."""

from __future__ import annotations

from lmlab.callbacks.metadata import CheckpointMetadata
from lmlab.callbacks.progress import LMProgressBar
from lmlab.callbacks.samples import GeneratedSamples
from lmlab.callbacks.throughput import TokensPerSecond

__all__ = ["CheckpointMetadata", "GeneratedSamples", "LMProgressBar", "TokensPerSecond"]
