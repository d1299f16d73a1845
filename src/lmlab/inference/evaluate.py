"""Scoring a checkpoint as a library: language models on token windows, classifiers on labeled texts.

Language models are scored by the training task's own validation (`Trainer.validate`), so loss, perplexity and bits
per byte come from the same code as during training: scoring a checkpoint's validation split reproduces its `val/`
metrics. Which scorer applies follows from the checkpoint's task class, so a new model family needs nothing here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from lmlab.checkpoints.load import LoadedCheckpoint, import_target
from lmlab.data.windows import TokenWindows
from lmlab.errors import LmlabError
from lmlab.io import atomic_write_text

if TYPE_CHECKING:
    from lmlab.inference.generation_metrics import GenerationScores
    from lmlab.tasks import ModelTask
    from lmlab.tokenizers import Tokenizer

log = logging.getLogger("lmlab")


@dataclass
class Evaluation:
    """What one evaluation measured, and on what."""

    source: dict[str, Any]
    """What was scored, e.g. {"data": "shakespeare", "split": "val"} or {"text_file": "notes.txt"}."""
    metrics: dict[str, float]
    tokens: int
    """Tokens scored (language models: predicted targets, SFT data: the replies' only; classifiers: tokens read)."""
    generation: GenerationScores | None = None
    """Replies generated to the split's conversations and their BLEU/chrF (`lmlab eval generate=true`)."""

    def on_split(self, split: str) -> Evaluation:
        """The metrics named after the split they were measured on: the validation loop logs `val/loss`, which on
        the test split is `test/loss`."""
        metrics = {f"{split}/{name.split('/', 1)[-1]}": value for name, value in self.metrics.items()}
        return replace(self, metrics=metrics)


EXAMPLE_ROWS = 5
"""Generated replies (prompt, hypothesis, reference) written into the eval JSON, to read beside the numbers."""


def task_class(loaded: LoadedCheckpoint) -> type:
    """The LightningModule class that trained the checkpoint (its `task._target_`)."""
    from lmlab.tasks import ModelTask

    cls = import_target(loaded.task_target) if loaded.task_target else None
    if not isinstance(cls, type) or not issubclass(cls, ModelTask):
        raise LmlabError(
            f"{loaded.path} records no lmlab task (task {loaded.task_target or '?'}); evaluate a checkpoint written by "
            "`lmlab train`"
        )
    return cls


def is_classifier(loaded: LoadedCheckpoint) -> bool:
    """Whether the checkpoint's task predicts classes (scored on labeled texts) rather than tokens."""
    from lmlab.tasks import ClassificationTask

    return issubclass(task_class(loaded), ClassificationTask)


def build_eval_task(loaded: LoadedCheckpoint) -> ModelTask:
    """The task that trained the checkpoint (its validation settings from the run config), holding its model."""
    cls = task_class(loaded)
    settings = {k: v for k, v in (loaded.run_config.get("task") or {}).items() if not str(k).startswith("_")}
    task = cls(model=loaded.model_config, **settings, **cls.tokenizer_arguments(loaded.tokenizer))
    task.model = loaded.model  # the trained weights
    return task


def validate(task: ModelTask, loader: DataLoader, device: torch.device) -> dict[str, float]:
    """Run the task's validation loop over `loader` on `device`; return its logged metrics."""
    import pytorch_lightning as pl

    accelerator, devices = ("gpu", [device.index or 0]) if device.type == "cuda" else ("cpu", 1)
    with lightning_quiet(), warnings.catch_warnings():  # Lightning's advice about workers and its deprecations
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        trainer = pl.Trainer(
            accelerator=accelerator,
            devices=devices,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        (metrics,) = trainer.validate(task, dataloaders=loader, verbose=False)
    return {name: float(value) for name, value in metrics.items()}


@contextlib.contextmanager
def lightning_quiet() -> Iterator[None]:
    """Lightning's info lines ("GPU available", tips) held back while it scores: the result is the output."""
    logger = logging.getLogger("pytorch_lightning")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def evaluate_windows(
    loaded: LoadedCheckpoint, loader: DataLoader, source: dict[str, Any], device: torch.device
) -> Evaluation:
    """A language model's metrics on the token windows of `loader` (causal: loss, perplexity, bits per byte; masked:
    masked-token loss and accuracy)."""
    tokens = getattr(loader.dataset, "scored_tokens", None)
    tokens = count_targets(loader) if tokens is None else tokens
    if tokens == 0:
        raise LmlabError(f"nothing to evaluate in {source}; give more text")
    return Evaluation(source=source, metrics=validate(build_eval_task(loaded), loader, device), tokens=tokens)


def count_targets(loader: DataLoader) -> int:
    """Targets the loader's batches score (>= 0; `IGNORE_INDEX` marks the rest): batches are `(x, y)` or dicts with
    `targets` (SFT rows, where only the replies count)."""
    total = 0
    for batch in loader:
        targets = batch["targets"] if isinstance(batch, dict) else batch[1]  # (B, T)
        total += int((targets >= 0).sum())
    return total


def text_file_windows(
    path: str | Path, loaded: LoadedCheckpoint, batch_size: int = 64, max_tokens: int | None = None
) -> DataLoader:
    """Windows of `block_size` tokens over a whole UTF-8 file, tokenized with the checkpoint's tokenizer.

    A causal model scores every token after the first: the last window ends at the end of the file and scores only
    the tokens the windows before it did not (`TokenWindows(cover_tail=True)`). `max_tokens` scores the first
    windows only.
    """
    from lmlab.data.corpora import read_utf8
    from lmlab.tasks import CausalLMTask

    file = Path(path).expanduser()
    if file.is_dir():
        raise LmlabError(f"text_file {file} is a folder; give one UTF-8 text file")
    if not file.is_file():
        raise LmlabError(f"text_file {file} does not exist; give a UTF-8 text file")
    text = read_utf8(file)
    warn_unknown_characters(file, text, loaded.tokenizer)
    encode = getattr(loaded.tokenizer, "encode_array", loaded.tokenizer.encode)
    ids = np.asarray(encode(text), dtype=np.int64)
    block_size = loaded.model_config.block_size
    if len(ids) < block_size + 1:
        raise LmlabError(
            f"text_file {file} has {len(ids)} tokens, fewer than block_size+1={block_size + 1}; give a longer text"
        )
    max_windows = None if max_tokens is None else max(1, max_tokens // block_size)
    whole = max_windows is None and issubclass(task_class(loaded), CausalLMTask)
    windows = TokenWindows(ids, block_size, max_windows=max_windows, cover_tail=whole)
    return DataLoader(windows, batch_size=batch_size)


def warn_unknown_characters(file: Path, text: str, tokenizer: Tokenizer) -> None:
    """Log one warning when a char tokenizer does not know some characters of `text`: they are scored, as U+FFFD
    (as in training data), rather than refused, since a few stray characters should not stop a long file."""
    from lmlab.tokenizers.char import list_characters

    unknown = getattr(tokenizer, "unknown_characters", None)
    if unknown is not None and (chars := unknown(text)):
        log.warning(
            "text_file %s has %d characters the checkpoint's tokenizer does not know (%s); they are scored as the "
            "unknown character U+FFFD",
            file,
            sum(chars.values()),
            list_characters(chars),
        )


def eval_splits(datamodule: Any) -> list[str]:
    """The splits of a DataModule that eval can score: val, test when it has its own test loader (SFT data), train
    when it serves the training tokens (LM data)."""
    import pytorch_lightning as pl

    has_test = type(datamodule).test_dataloader is not pl.LightningDataModule.test_dataloader
    return ["val", *(["test"] if has_test else []), *(["train"] if hasattr(datamodule, "train_ids") else [])]


def split_loader(datamodule: Any, split: str) -> DataLoader:
    """The `val`, `test` or `train` batches of a set-up DataModule (train: LM windows capped at `max_val_tokens`)."""
    if split not in (splits := eval_splits(datamodule)):
        raise LmlabError(f"split={split!r} is unknown; choose {' or '.join(splits)}")
    if split == "val":
        return datamodule.val_dataloader()
    if split == "test":
        return datamodule.test_dataloader()
    max_tokens = datamodule.max_val_tokens
    max_windows = None if max_tokens is None else max(1, max_tokens // datamodule.block_size)
    windows = TokenWindows(datamodule.train_ids(), datamodule.block_size, max_windows=max_windows)
    return DataLoader(windows, batch_size=datamodule.eval_batch_size)


def with_generation(evaluation: Evaluation, scores: GenerationScores, split: str) -> Evaluation:
    """`evaluation` with the replies' BLEU and chrF added as `<split>/bleu` and `<split>/chrf`."""
    metrics = evaluation.metrics | {f"{split}/bleu": scores.bleu, f"{split}/chrf": scores.chrf}
    return Evaluation(evaluation.source, metrics, evaluation.tokens, scores)


def evaluate_labeled(
    loaded: LoadedCheckpoint,
    texts: list[str],
    labels: list[int],
    source: dict[str, Any],
    batch_size: int = 64,
    prefix: str = "file",
) -> Evaluation:
    """A classifier's accuracy, macro F1 and loss on labeled texts, as `<prefix>/acc` etc."""
    from lmlab.inference.classifier import classifier_from_checkpoint, evaluate_texts

    metrics, tokens = evaluate_texts(classifier_from_checkpoint(loaded), texts, labels, batch_size)
    return Evaluation(source | {"examples": len(texts)}, {f"{prefix}/{k}": v for k, v in metrics.items()}, tokens)


def evaluate_file(
    loaded: LoadedCheckpoint,
    path: str | Path,
    device: torch.device,
    batch_size: int = 64,
    max_tokens: int | None = None,
) -> Evaluation:
    """Score a file as the checkpoint's task reads one: plain text for a language model, a labeled CSV/JSONL file
    for a classifier."""
    source: dict[str, Any] = {"text_file": str(Path(path).expanduser())}
    if is_classifier(loaded):
        from lmlab.inference.classifier import read_labeled

        texts, labels = read_labeled(path, loaded.hyper_parameters["label_names"])
        return evaluate_labeled(loaded, texts, labels, source, batch_size)
    return evaluate_windows(loaded, text_file_windows(path, loaded, batch_size, max_tokens), source, device)


def write_evaluation(loaded: LoadedCheckpoint, evaluation: Evaluation) -> Path:
    """Write the evaluation to `<checkpoint stem>.eval.json` beside the checkpoint; return its path."""
    out = loaded.path.with_name(f"{loaded.path.stem}.eval.json")
    result: dict[str, Any] = {
        "checkpoint": str(loaded.path),
        "step": loaded.global_step,
        "model": loaded.model_config.family,
        "task": loaded.task_target,
        "source": evaluation.source,
        "tokens": evaluation.tokens,
        "metrics": evaluation.metrics,
    }
    if (scores := evaluation.generation) is not None:
        result["generation"] = {
            "replies": len(scores.examples),
            "signatures": scores.signatures,
            "examples": [asdict(e) for e in scores.examples[:EXAMPLE_ROWS]],
        }
    try:
        atomic_write_text(out, json.dumps(result, indent=2))
    except OSError as err:
        raise LmlabError(f"cannot write {out} ({err.strerror}); make the checkpoint's folder writable") from err
    return out
