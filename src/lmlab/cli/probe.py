"""`lmlab probe ckpt=RUN [data=...] [probe.layer=...] [probe.label=...]`: linear probes on a checkpoint's frozen
residual stream, one per layer; accuracy per layer vs the majority class, as CSV, JSON, a plot and logged metrics.

The probing is `lmlab.interp.probe`; this command only builds the labeled examples a data config names (labeled
text: one example per text; plain text: one per token, labeled from the text) and writes the results.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf, open_dict

from lmlab.cli.runner import build_group, hydra_entry
from lmlab.errors import LmlabError

if TYPE_CHECKING:
    from torch import nn

    from lmlab.checkpoints.load import LoadedCheckpoint
    from lmlab.interp.probe import ProbeData, ProbeResult

log = logging.getLogger("lmlab")

SPLITS = ("train", "val", "test")


def data_node(cfg: DictConfig, loaded: LoadedCheckpoint) -> DictConfig:
    """`data=...` from the command line, else the data config the checkpoint trained with."""
    node = cfg.data if cfg.get("data") is not None else OmegaConf.create(loaded.run_config.get("data") or {})
    if "source" not in node and "corpus" not in node:
        raise LmlabError(f"{loaded.path} records no data config to probe on; give data=rotten_tomatoes, imdb, "
                         "text_classification (labeled texts) or shakespeare (with probe.label=...)")  # fmt: skip
    with open_dict(node):
        node.block_size = loaded.model_config.block_size  # resolvable without a `model` key
    return node


def sizes(cfg: DictConfig) -> dict[str, int]:
    """Examples per split: `max_examples` to train on, a quarter of it to validate and test on."""
    n = int(cfg.probe.max_examples)
    if n < 4:
        raise LmlabError(f"probe.max_examples={n} is too few; give at least 4 (e.g. 4000)")
    return {"train": n, "val": max(1, n // 4), "test": max(1, n // 4)}


def pad_id(loaded: LoadedCheckpoint) -> int:
    """The id to pad texts with (never read: padding is masked or comes after every real token)."""
    from lmlab.data.classification import pad_id_of

    try:
        return pad_id_of(loaded.tokenizer)
    except LmlabError:
        return 0


def labeled_splits(
    cfg: DictConfig, node: DictConfig, model: nn.Module, loaded: LoadedCheckpoint, layers: list[str]
) -> tuple[dict[str, ProbeData], list[str], str]:
    """Pooled features of the labeled source's train/val/test texts; the label names and the data's name."""
    from hydra.utils import instantiate

    from lmlab.data.classification import encode_text
    from lmlab.interp.probe import sequence_features

    if cfg.probe.label is not None:
        raise LmlabError(f"probe.label={cfg.probe.label} labels plain text; labeled data brings its own labels: "
                         "drop probe.label")  # fmt: skip
    source = instantiate(node.source)
    splits, block_size, limits = source.load(), loaded.model_config.block_size, sizes(cfg)
    data = {}
    for split in SPLITS:
        examples = getattr(splits, split).subset(range(min(limits[split], len(getattr(splits, split)))))
        ids = [encode_text(loaded.tokenizer, text, block_size) or [pad_id(loaded)] for text in examples.texts]
        full = sum(len(row) >= block_size for row in ids)  # cut to the context, or exactly as long
        log.info("%s: %d %s texts (%d filling the context of %d tokens)", source.name, len(ids), split, full,
                 block_size)  # fmt: skip
        data[split] = sequence_features(model, ids, examples.labels, layers, pad_id(loaded), cfg.probe.pooling,
                                        cfg.batch_size)  # fmt: skip
    return data, list(splits.label_names), source.name


def text_splits(
    cfg: DictConfig, node: DictConfig, model: nn.Module, loaded: LoadedCheckpoint, layers: list[str]
) -> tuple[dict[str, ProbeData], list[str], str]:
    """Per-token features of windows of the corpus, labeled from the text: training windows from its first 80 %,
    validation from the next 10 %, test from the last 10 %."""
    from hydra.utils import instantiate

    from lmlab.interp.probe import TOKEN_LABELS, token_features

    label = cfg.probe.label
    if label is None or label not in TOKEN_LABELS:
        raise LmlabError(f"data {node.corpus.get('_target_', '')} is plain text; choose what to probe for: "
                         f"probe.label={' or '.join(TOKEN_LABELS)}")  # fmt: skip
    corpus = instantiate(node.corpus)
    text = "".join(corpus.documents())
    regions = {"train": (0.0, 0.8), "val": (0.8, 0.9), "test": (0.9, 1.0)}
    block_size, limits, data = loaded.model_config.block_size, sizes(cfg), {}
    for split, (start, end) in regions.items():
        windows, labels = windows_of(text[int(start * len(text)) : int(end * len(text))], loaded, limits[split], label)
        log.info("%s: %d %s windows of %d tokens, label %s", corpus.name, len(windows), split, block_size, label)
        data[split] = token_features(model, windows, labels, layers, cfg.batch_size)
    return data, TOKEN_LABELS[label][1], corpus.name


def windows_of(text: str, loaded: LoadedCheckpoint, tokens: int, label: str) -> tuple[Any, Any]:
    """Evenly spaced windows (N, T) of `text`, T = the model's block_size, holding about `tokens` tokens, and their
    token labels (N, T). A window is tokenized with one extra token, so the last token's label sees what follows."""
    import torch

    from lmlab.interp.probe import token_labels

    T, tokenizer = loaded.model_config.block_size, loaded.tokenizer
    n = max(1, -(-tokens // T))
    chars = 8 * (T + 1)  # enough characters for T + 1 tokens of any tokenizer but a byte-per-token one
    starts = [round(i * max(len(text) - chars, 0) / max(n - 1, 1)) for i in range(n)]
    windows, labels = [], []
    for start in starts:
        ids = tokenizer.encode(text[start : start + chars])[: T + 1]
        if len(ids) < T + 1:
            continue
        windows.append(ids[:T])
        labels.append(token_labels([tokenizer.decode([i]) for i in ids], label)[:T])
    if not windows:
        raise LmlabError(f"the text is too short for a window of {T + 1} tokens; give more text")
    return torch.tensor(windows), torch.tensor(labels)


def write_results(run_dir: Path, result: ProbeResult, meta: dict[str, Any]) -> list[Path]:
    """probe.csv (a row per layer), probe.json (the rows and what was probed) and probe.png (the curve)."""
    from lmlab.interp.plots import plot_probe_accuracy
    from lmlab.io import atomic_write_text

    run_dir.mkdir(parents=True, exist_ok=True)
    rows = result.rows()
    with (run_dir / "probe.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = {
        **meta, "best_layer": result.best_layer, "best_acc": result.best_acc, "majority": result.majority,
        "majority_label": meta["label_names"][result.majority_label],
        "gain_points": 100 * (result.best_acc - result.majority), "examples": result.sizes, "layers": rows,
    }  # fmt: skip
    atomic_write_text(run_dir / "probe.json", json.dumps(summary, indent=2) + "\n")
    title = f"{meta['data']} ({meta['what']}) on {Path(meta['ckpt']).name}"
    accuracy = [result.test_acc[layer] for layer in result.layers]
    plot = plot_probe_accuracy(result.layers, accuracy, result.majority, run_dir / "probe.png", title)
    return [run_dir / "probe.csv", run_dir / "probe.json", plot]


def print_result(result: ProbeResult, written: list[Path]) -> None:
    """The accuracy per layer as a table, and where the files went."""
    from rich.console import Console
    from rich.table import Table

    table = Table("layer", "test acc", "train acc", "vs majority")
    for row in result.rows():
        table.add_row(str(row["layer"]), f"{row['test_acc']:.4f}", f"{row['train_acc']:.4f}",
                      f"{row['gain_points']:+.1f} pts")  # fmt: skip
    console = Console(soft_wrap=True)
    console.print(table)
    console.print(f"majority class: {result.majority:.4f}; best layer {result.best_layer}: {result.best_acc:.4f}",
                  markup=False, highlight=False)  # fmt: skip
    console.print(f"written: {', '.join(map(str, written))}", markup=False, highlight=False)


def probe(cfg: DictConfig) -> ProbeResult:
    """Load the checkpoint, cache the probed layers' activations, train and score a probe per layer, write."""
    from lmlab.checkpoints.load import load_checkpoint
    from lmlab.cli.run_identity import name_tracking_runs
    from lmlab.compute.hardware import pick_device
    from lmlab.interp.probe import fit_probes, probe_layers
    from lmlab.runs.quiet import quiet_third_party

    quiet_third_party()
    for key in ("max_examples", "epochs", "batch_size"):
        if int(cfg.probe[key]) < 1:
            raise LmlabError(f"probe.{key}={cfg.probe[key]} must be a positive integer")
    loaded = load_checkpoint(cfg.ckpt, pick_device(str(cfg.device)))
    model = loaded.model
    layer = cfg.probe.layer
    layers = probe_layers(model, None if layer is None else str(layer))
    node = data_node(cfg, loaded)
    build = labeled_splits if "source" in node else text_splits
    data, label_names, data_name = build(cfg, node, model, loaded, layers)
    run_dir = Path(cfg.paths.output_dir)
    name_tracking_runs(cfg)
    loggers = build_group(cfg.get("logger"), "logger")
    settings = OmegaConf.to_container(cfg.probe, resolve=True)
    for logger in loggers:
        logger.log_hyperparams({"ckpt": str(loaded.path), "data": data_name, "probe": settings})
    result = fit_probes(layers, data["train"], data["val"], data["test"], cfg.probe.epochs, cfg.probe.lr,
                        cfg.probe.weight_decay, cfg.probe.batch_size, loggers, cfg.seed)  # fmt: skip
    what = f"token label {cfg.probe.label}" if "corpus" in node else f"{cfg.probe.pooling}-pooled texts"
    meta = {"ckpt": str(loaded.path), "data": data_name, "what": what, "label_names": label_names, "probe": settings}
    print_result(result, write_results(run_dir, result, meta))
    return result


def run(cfg: DictConfig) -> float:
    """Hydra task function: probe, always close the W&B run; the best held-out accuracy for sweepers."""
    from lmlab.runs.loggers import finish_wandb

    try:
        return probe(cfg).best_acc
    finally:
        finish_wandb()


main = hydra_entry("probe", run)
