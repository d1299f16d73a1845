"""lmlab: config-driven training, fine-tuning, evaluation and sampling of language models.

The entry points for use from Python are named in `__all__` and imported on first use, so `import lmlab` (and
`lmlab --help`) stays light; the command line is `lmlab.cli`.
"""

from __future__ import annotations

import importlib
from typing import Any

from lmlab.errors import LmlabError

__version__ = "0.1.0"

_PUBLIC = {
    "load_checkpoint": "lmlab.checkpoints",
    "LoadedCheckpoint": "lmlab.checkpoints",
    "generate_text": "lmlab.generation",
    "GenerationConfig": "lmlab.generation",
    "SamplingOptions": "lmlab.generation",
    "evaluate_file": "lmlab.inference.evaluate",
    "Evaluation": "lmlab.inference.evaluate",
    "load_classifier": "lmlab.inference",
    "predict_probs": "lmlab.inference",
    "export_checkpoint": "lmlab.hf",
    "build_report": "lmlab.analysis.report",
    "build_model": "lmlab.models",
    "register_family": "lmlab.models",
}
"""Public name -> the module that defines it."""

__all__ = ["LmlabError", "__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'lmlab' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)
