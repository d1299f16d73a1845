"""Text generation: sampling functions and decoding loops."""

from __future__ import annotations

from lmlab.generation.sampling import apply_temperature, apply_top_k, generate, sample_next

__all__ = ["apply_temperature", "apply_top_k", "generate", "sample_next"]
