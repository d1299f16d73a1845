"""What makes a checkpoint a language model: the check `lmlab generate` and the lm-eval model share."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lmlab.checkpoints.load import LoadedCheckpoint, import_target, load_checkpoint
from lmlab.errors import LmlabError
from lmlab.generation import require_causal

if TYPE_CHECKING:
    import torch


def load_language_model(ckpt: str | Path, device: torch.device) -> LoadedCheckpoint:
    """The checkpoint at `ckpt` (a file or a run folder) on `device`, refused unless it is a causal language model."""
    loaded = load_checkpoint(ckpt, device)
    require_language_model(loaded)
    return loaded


def require_language_model(loaded: LoadedCheckpoint) -> None:
    """Refuse a checkpoint that cannot score or generate text: a bidirectional encoder, or a model trained by a task
    other than causal language modelling (a classifier), naming the fix."""
    from lmlab.tasks import CausalLMTask

    require_causal(loaded.model_config)
    task_class = import_target(loaded.task_target) if loaded.task_target else None
    if loaded.task_target and not (isinstance(task_class, type) and issubclass(task_class, CausalLMTask)):
        task = loaded.task_target.rsplit(".", 1)[-1]
        raise LmlabError(
            f"{loaded.path} was trained by {task}, not as a language model, so it cannot generate text; "
            "give a checkpoint of task=causal_lm (a classifier predicts with: lmlab predict)"
        )
