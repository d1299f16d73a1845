"""Lightning callbacks."""

from __future__ import annotations

from lmlab.callbacks.checkpointing import BestAndLastCheckpoint
from lmlab.callbacks.metadata import CheckpointMetadata
from lmlab.callbacks.progress import LMModelSummary, LMProgressBar
from lmlab.callbacks.reliability import FiniteLoss, GracefulInterrupt, RNGState, safety_callbacks
from lmlab.callbacks.samples import GeneratedSamples
from lmlab.callbacks.throughput import Throughput, TokensPerSecond
from lmlab.callbacks.timing import WallClock

__all__ = [
    "BestAndLastCheckpoint",
    "CheckpointMetadata",
    "FiniteLoss",
    "GeneratedSamples",
    "GracefulInterrupt",
    "LMModelSummary",
    "LMProgressBar",
    "RNGState",
    "Throughput",
    "TokensPerSecond",
    "WallClock",
    "safety_callbacks",
]
