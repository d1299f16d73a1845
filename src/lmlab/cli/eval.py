"""`lmlab eval ckpt=RUN [text_file=PATH] [data=...] [split=val]`: score a checkpoint, print a table, write JSON.

Scoring runs the training task's own validation (`Trainer.validate`), so loss, perplexity and bits per byte are
computed by the same code as during training: evaluating a checkpoint's validation split reproduces its `val/`
metrics. Each kind of task has an evaluation function in `EVALUATORS`, keyed by the task's class name.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from lmlab.cli.runner import reports_errors
from lmlab.config.groups import config_dir
from lmlab.errors import LmlabError

if TYPE_CHECKING:
    import torch
    from torch.utils.data import DataLoader

    from lmlab.checkpoints.load import LoadedCheckpoint
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
    """Tokens in the scored windows."""


def build_eval_task(loaded: LoadedCheckpoint) -> ModelTask:
    """The task that trained the checkpoint (its validation settings from the run config), holding its model."""
    from hydra.utils import get_class, instantiate

    task_config = loaded.run_config.get("task")
    if not task_config or "_target_" not in task_config:
        raise LmlabError(f"{loaded.path} records no task config; evaluate a checkpoint written by `lmlab train`")
    arguments = get_class(task_config["_target_"]).tokenizer_arguments(loaded.tokenizer)
    task = instantiate(OmegaConf.create(task_config), _partial_=True)(model=loaded.model_config, **arguments)
    task.model = loaded.model  # the trained weights
    return task


def validate(task: ModelTask, loader: DataLoader, device: torch.device) -> dict[str, float]:
    """Run the task's validation loop over `loader` on `device`; return its logged metrics."""
    import pytorch_lightning as pl

    accelerator, devices = ("gpu", [device.index or 0]) if device.type == "cuda" else ("cpu", 1)
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=devices,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with warnings.catch_warnings():  # Lightning's advice about workers and its own deprecations are noise here
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        (metrics,) = trainer.validate(task, dataloaders=loader, verbose=False)
    return {name: float(value) for name, value in metrics.items()}


def text_file_windows(path: str, loaded: LoadedCheckpoint, batch_size: int, max_tokens: int | None) -> DataLoader:
    """Windows of `block_size` tokens over a whole UTF-8 file, tokenized with the checkpoint's tokenizer."""
    import numpy as np
    from torch.utils.data import DataLoader

    from lmlab.data import TokenWindows
    from lmlab.data.corpora import read_utf8

    file = Path(path).expanduser()
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
    return DataLoader(TokenWindows(ids, block_size, max_windows=max_windows), batch_size=batch_size)


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


def data_config(cfg: DictConfig, loaded: LoadedCheckpoint) -> DictConfig:
    """The data config to rebuild: `data=...` from the command line, else the one the checkpoint trained with."""
    if cfg.get("data") is not None:
        node = cfg.data
    else:
        saved = loaded.run_config.get("data")
        if not saved or "_target_" not in saved:
            raise LmlabError(f"{loaded.path} records no data config; give text_file=PATH or data=...")
        node = OmegaConf.create(saved)
    with open_dict(node):
        node.block_size = loaded.model_config.block_size  # the model's context, whatever the data config says
        node.cache_dir = cfg.cache_dir
        node.seed = 0  # only shuffles training windows, which eval does not use
        if cfg.batch_size is not None:
            node.eval_batch_size = cfg.batch_size
        if cfg.max_tokens is not None:
            node.max_val_tokens = cfg.max_tokens
    return node


def split_windows(cfg: DictConfig, loaded: LoadedCheckpoint) -> tuple[DataLoader, dict[str, Any]]:
    """Windows of a split of the data config, its text tokenized with the checkpoint's tokenizer (token cache)."""
    from hydra.utils import instantiate
    from torch.utils.data import DataLoader

    from lmlab.data import TokenWindows
    from lmlab.tokenizers import FixedTokenizerConfig

    if cfg.split not in ("val", "train"):
        raise LmlabError(f"split={cfg.split!r} is unknown; choose val or train")
    node = data_config(cfg, loaded)
    datamodule = instantiate(node, _partial_=True)(tokenizer=FixedTokenizerConfig(loaded.tokenizer))
    datamodule.setup()
    source = {"data": datamodule.corpus.name, "split": cfg.split}
    if cfg.split == "val":
        return datamodule.val_dataloader(), source
    max_tokens = datamodule.max_val_tokens
    max_windows = None if max_tokens is None else max(1, max_tokens // datamodule.block_size)
    windows = TokenWindows(datamodule.train_ids(), datamodule.block_size, max_windows=max_windows)
    return DataLoader(windows, batch_size=datamodule.eval_batch_size), source


def evaluate_language_model(cfg: DictConfig, loaded: LoadedCheckpoint, device: torch.device) -> Evaluation:
    """Causal LM: loss, perplexity, bits per byte; masked LM: masked-token loss and accuracy."""
    if cfg.text_file is not None:
        loader = text_file_windows(cfg.text_file, loaded, cfg.batch_size or 64, cfg.max_tokens)
        source: dict[str, Any] = {"text_file": str(Path(cfg.text_file).expanduser())}
    else:
        loader, source = split_windows(cfg, loaded)
    tokens = len(loader.dataset) * loaded.model_config.block_size
    if tokens == 0:
        raise LmlabError(f"nothing to evaluate in {source}; give more text")
    metrics = validate(build_eval_task(loaded), loader, device)
    return Evaluation(source=source, metrics=metrics, tokens=tokens)


def evaluate_classifier(cfg: DictConfig, loaded: LoadedCheckpoint, device: torch.device) -> Evaluation:
    """Classifier: accuracy, macro F1 and loss on a labeled CSV/JSONL `text_file`, or on `split` (train, val or test)
    of its data (the one it trained on unless `data=...` is given)."""
    from hydra.utils import instantiate

    from lmlab.inference.classifier import classifier_from_checkpoint, evaluate_texts, read_labeled

    classifier = classifier_from_checkpoint(loaded)
    if cfg.text_file is not None:
        texts, labels = read_labeled(cfg.text_file, classifier.label_names)
        source: dict[str, Any] = {"text_file": str(Path(cfg.text_file).expanduser())}
    else:
        node = cfg.data if cfg.get("data") is not None else OmegaConf.create(loaded.run_config.get("data") or {})
        if "source" not in node or cfg.split not in ("train", "val", "test"):
            raise LmlabError("a classifier is scored on a labeled text_file=PATH or split=train|val|test of its data")
        data = instantiate(node.source)
        examples = getattr(data.load(), cfg.split)
        texts, labels, source = examples.texts, examples.labels, {"data": data.name, "split": cfg.split}
    metrics, tokens = evaluate_texts(classifier, texts, labels, cfg.batch_size or 64)
    prefix = cfg.split if cfg.text_file is None else "file"
    return Evaluation(source | {"examples": len(texts)}, {f"{prefix}/{k}": v for k, v in metrics.items()}, tokens)


Evaluator = Callable[[DictConfig, "LoadedCheckpoint", "torch.device"], Evaluation]

EVALUATORS: dict[str, Evaluator] = {
    "CausalLMTask": evaluate_language_model,
    "MaskedLMTask": evaluate_language_model,
    "ClassificationTask": evaluate_classifier,
}
"""Evaluation function per task class name (the last part of the checkpoint's task `_target_`)."""


def evaluator_for(loaded: LoadedCheckpoint) -> Evaluator:
    """The evaluation function of the checkpoint's task."""
    name = loaded.task_target.rsplit(".", 1)[-1]
    if name not in EVALUATORS:
        known = ", ".join(sorted(EVALUATORS))
        raise LmlabError(f"lmlab eval cannot score a checkpoint of task {name or '?'}; it knows: {known}")
    return EVALUATORS[name]


def report(loaded: LoadedCheckpoint, evaluation: Evaluation) -> Path:
    """Print the metrics as a table; write them to `<checkpoint stem>.eval.json` beside the checkpoint."""
    from rich.console import Console
    from rich.table import Table

    from lmlab.io import atomic_write_text

    where = " ".join(f"{k}={v}" for k, v in evaluation.source.items())
    table = Table(show_header=False)
    for name, value in sorted(evaluation.metrics.items()):
        table.add_row(name, f"{value:.4f}")
    table.add_row("tokens", f"{evaluation.tokens:,}")
    out = loaded.path.with_name(f"{loaded.path.stem}.eval.json")
    result = {
        "checkpoint": str(loaded.path),
        "step": loaded.global_step,
        "model": loaded.model_config.family,
        "task": loaded.task_target,
        "source": evaluation.source,
        "tokens": evaluation.tokens,
        "metrics": evaluation.metrics,
    }
    try:
        atomic_write_text(out, json.dumps(result, indent=2))
    except OSError as err:
        raise LmlabError(f"cannot write {out} ({err.strerror}); make the checkpoint's folder writable") from err
    console = Console(soft_wrap=True)
    console.print(f"{loaded.path} on {where}", markup=False, highlight=False)
    console.print(table)
    console.print(f"written: {out}", markup=False, highlight=False)
    return out


def evaluate(cfg: DictConfig) -> Evaluation:
    """Load the checkpoint, score it as its task says, report; return the evaluation."""
    from lmlab.checkpoints.load import load_checkpoint
    from lmlab.compute.hardware import pick_device

    for key in ("batch_size", "max_tokens"):
        if cfg[key] is not None and int(cfg[key]) < 1:
            raise LmlabError(f"{key}={cfg[key]} must be a positive integer (or null for the default)")
    device = pick_device(str(cfg.device))
    loaded = load_checkpoint(cfg.ckpt, device)
    evaluator = evaluator_for(loaded)
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.WARNING)  # no "GPU available" banner around the table
    evaluation = evaluator(cfg, loaded, device)
    report(loaded, evaluation)
    return evaluation


@reports_errors
def run(cfg: DictConfig) -> None:
    evaluate(cfg)


def main() -> None:
    hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="eval")(run)()
