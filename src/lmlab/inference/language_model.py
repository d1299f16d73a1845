"""What makes a checkpoint a language model: the check `lmlab generate` and the lm-eval model share."""

from __future__ import annotations

from lmlab.checkpoints.load import LoadedCheckpoint, import_target
from lmlab.errors import LmlabError
from lmlab.generation import require_causal


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
