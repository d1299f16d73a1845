"""`lmlab eval ckpt=RUN [text_file=PATH] [data=...] [split=val] [generate=true]`: score a checkpoint, print a table,
write JSON.

The scoring is `lmlab.inference.evaluate`; this command only rebuilds the data a config names and prints the result.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf, open_dict

from lmlab.cli.runner import hydra_entry
from lmlab.errors import LmlabError

if TYPE_CHECKING:
    import torch

    from lmlab.checkpoints.load import LoadedCheckpoint
    from lmlab.inference.evaluate import Evaluation


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
        if "cache_dir" in node:  # token caches (LM data); SFT data renders its conversations in memory
            node.cache_dir = cfg.cache_dir
        node.seed = 0  # only shuffles training windows, which eval does not use
        if cfg.batch_size is not None:
            node.eval_batch_size = cfg.batch_size
        if cfg.max_tokens is not None:
            node.max_val_tokens = cfg.max_tokens
    return node


def evaluate_split(cfg: DictConfig, loaded: LoadedCheckpoint, device: torch.device) -> Evaluation:
    """A language model on a split of its data config, the text tokenized with the checkpoint's tokenizer; with
    `generate=true`, also its greedy replies to the split's conversations (SFT data), scored by BLEU and chrF."""
    from hydra.utils import instantiate

    from lmlab.data.conversations import ConversationSplits
    from lmlab.inference.evaluate import evaluate_windows, split_loader, with_generation
    from lmlab.tokenizers import FixedTokenizerConfig

    if cfg.split not in ("val", "test", "train"):
        raise LmlabError(f"split={cfg.split!r} is unknown; choose val, test or train")
    datamodule = instantiate(data_config(cfg, loaded), _partial_=True)(tokenizer=FixedTokenizerConfig(loaded.tokenizer))
    datamodule.setup()
    if cfg.generate and not isinstance(getattr(datamodule, "splits", None), ConversationSplits):
        raise LmlabError("generate=true replies to conversations; evaluate a checkpoint trained with task=sft (or give "
                         "SFT data=...), or drop generate=true")  # fmt: skip
    named = getattr(datamodule, "corpus", None) or datamodule.source
    source = {"data": named.name, "split": cfg.split}
    evaluation = evaluate_windows(loaded, split_loader(datamodule, cfg.split), source, device).on_split(cfg.split)
    if not cfg.generate:
        return evaluation
    from lmlab.inference.generation_metrics import evaluate_generation

    scores = evaluate_generation(
        loaded.model.to(device),  # Lightning's validation hands the model back on the CPU
        loaded.tokenizer,
        getattr(datamodule.splits, cfg.split),
        loaded.model_config.block_size,
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.batch_size or datamodule.eval_batch_size,
        max_examples=cfg.max_examples,
    )
    return with_generation(evaluation, scores, cfg.split)


def evaluate_labeled_split(cfg: DictConfig, loaded: LoadedCheckpoint) -> Evaluation:
    """A classifier on split train, val or test of its labeled data (the one it trained on unless `data=...`)."""
    from hydra.utils import instantiate

    from lmlab.inference.evaluate import evaluate_labeled

    node = cfg.data if cfg.get("data") is not None else OmegaConf.create(loaded.run_config.get("data") or {})
    if "source" not in node or cfg.split not in ("train", "val", "test"):
        raise LmlabError("a classifier is scored on a labeled text_file=PATH or split=train|val|test of its data")
    data = instantiate(node.source)
    examples = getattr(data.load(), cfg.split)
    source = {"data": data.name, "split": cfg.split}
    return evaluate_labeled(loaded, examples.texts, examples.labels, source, cfg.batch_size or 64, prefix=cfg.split)


def print_evaluation(loaded: LoadedCheckpoint, evaluation: Evaluation, written: Path) -> None:
    """The metrics as a table, with what was scored and where the JSON went."""
    from rich.console import Console
    from rich.table import Table

    where = " ".join(f"{k}={v}" for k, v in evaluation.source.items())
    table = Table(show_header=False)
    for name, value in sorted(evaluation.metrics.items()):
        table.add_row(name, f"{value:.4f}")
    table.add_row("tokens", f"{evaluation.tokens:,}")
    console = Console(soft_wrap=True)
    console.print(f"{loaded.path} on {where}", markup=False, highlight=False)
    console.print(table)
    if evaluation.generation is not None:
        for name, signature in evaluation.generation.signatures.items():
            console.print(f"{name} signature: {signature}", markup=False, highlight=False)
    console.print(f"written: {written}", markup=False, highlight=False)


def wandb_settings(loaded: LoadedCheckpoint) -> dict[str, Any] | None:
    """The `logger.wandb` config of the run that trained the checkpoint; None when it logged without W&B."""
    return (loaded.run_config.get("logger") or {}).get("wandb")


def evaluate(cfg: DictConfig) -> Evaluation:
    """Load the checkpoint, score it as its task says, report; return the evaluation."""
    from lmlab.checkpoints.load import load_checkpoint
    from lmlab.compute.hardware import pick_device
    from lmlab.inference.evaluate import evaluate_file, is_classifier, write_evaluation

    for key in ("batch_size", "max_tokens", "max_examples", "max_new_tokens"):
        if cfg[key] is not None and int(cfg[key]) < 1:
            raise LmlabError(f"{key}={cfg[key]} must be a positive integer (or null for the default)")
    if cfg.generate and cfg.text_file is not None:
        raise LmlabError("generate=true replies to a split's conversations, not a text_file; drop one of the two")
    device = pick_device(str(cfg.device))
    loaded = load_checkpoint(cfg.ckpt, device)
    classifier = is_classifier(loaded)
    evaluation: Any
    if cfg.text_file is not None:
        evaluation = evaluate_file(loaded, cfg.text_file, device, cfg.batch_size or 64, cfg.max_tokens)
    elif classifier:
        if cfg.generate:
            raise LmlabError("a classifier generates no text; drop generate=true")
        evaluation = evaluate_labeled_split(cfg, loaded)
    else:
        evaluation = evaluate_split(cfg, loaded, device)
    print_evaluation(loaded, evaluation, write_evaluation(loaded, evaluation))
    if cfg.wandb:
        from lmlab.runs.loggers import log_evaluation_to_wandb

        replies = [] if evaluation.generation is None else [asdict(e) for e in evaluation.generation.examples]
        log_evaluation_to_wandb(loaded.path, wandb_settings(loaded), evaluation.metrics, replies)
    return evaluation


main = hydra_entry("eval", evaluate)
