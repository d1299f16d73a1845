"""lmlab: config-driven training, fine-tuning, evaluation and sampling of language models."""

from __future__ import annotations

from lmlab.errors import LmlabError

__version__ = "0.1.0"
__all__ = ["LmlabError", "__version__"]
