"""Linear probes on frozen activations: what each layer's residual stream makes linearly readable.

The probed layers are the residual stream after each block (`blocks.{i}.hook_resid_post`, layer `i`) and before
the first one (`blocks.0.hook_resid_pre`, layer `embed`: token plus position embeddings, the stream the blocks
start from). A sequence label (sentiment) is probed on the mean over a text's tokens, or on its last token; a token
label (`next_vowel`, `speaker`) on every token of windows of text. Accuracy is measured on held-out examples
against the majority-class baseline (always answering the training set's most frequent label).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.interp.hooks import hook_sites, run_with_cache
from lmlab.tasks.pooling import pool

log = logging.getLogger("lmlab")

EMBED = "embed"
"""The layer name of the residual stream before the first block."""


def layer_count(model: nn.Module) -> int:
    """Number of blocks with a residual stream (`blocks.{i}.hook_resid_post`) in `model`."""
    return sum(1 for name in hook_sites(model) if re.fullmatch(r"blocks\.\d+\.hook_resid_post", name))


def probe_layers(model: nn.Module, layer: str | int | None = None) -> list[str]:
    """The layers to probe: every one (`embed`, `0` .. `L-1`) for None, else the one named; an error otherwise."""
    n = layer_count(model)
    every = [EMBED, *map(str, range(n))]
    if layer is None:
        return every
    if str(layer) not in every:
        raise LmlabError(f"probe.layer={layer} is out of range; this model has layers embed and 0..{n - 1}")
    return [str(layer)]


def hook_of(layer: str) -> str:
    """The hook name read for a probed layer."""
    return "blocks.0.hook_resid_pre" if layer == EMBED else f"blocks.{layer}.hook_resid_post"


@dataclass
class ProbeData:
    """Features (N, L, C) of the probed layers and their labels (N,)."""

    features: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


def activations(
    model: nn.Module, ids: torch.Tensor, layers: Sequence[str], mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Residual-stream activations (B, T, L, C) of ids (B, T) at `layers`; an encoder reads `mask` (B, T)."""
    device = next(model.parameters()).device
    kwargs = {"attention_mask": mask.to(device)} if mask is not None and not model.config.causal else {}
    names = [hook_of(layer) for layer in layers]
    _, cache = run_with_cache(model, ids.to(device), names=names, **kwargs)
    return torch.stack([cache[name].float().cpu() for name in names], dim=2)  # (B, T, L, C)


def padded_batches(
    ids: Sequence[list[int]], pad_id: int, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Texts' token ids in batches: right-padded ids (B, T) and a mask (B, T) that is 1 on real tokens."""
    for start in range(0, len(ids), batch_size):
        rows = ids[start : start + batch_size]
        T = max(len(row) for row in rows)
        batch = torch.full((len(rows), T), pad_id, dtype=torch.long)  # (B, T)
        mask = torch.zeros_like(batch)
        for r, row in enumerate(rows):
            batch[r, : len(row)], mask[r, : len(row)] = torch.tensor(row), 1
        yield batch, mask


def sequence_features(
    model: nn.Module,
    ids: Sequence[list[int]],
    labels: Sequence[int],
    layers: Sequence[str],
    pad_id: int,
    pooling: str = "mean",
    batch_size: int = 32,
) -> ProbeData:
    """One pooled feature per text (`mean` over its tokens or its `last` token) at each layer: (N, L, C)."""
    if pooling not in ("mean", "last"):
        raise LmlabError(f"probe.pooling={pooling!r} is unknown; choose mean or last")
    chunks = []
    for batch, mask in padded_batches(ids, pad_id, batch_size):
        acts = activations(model, batch, layers, mask)  # (B, T, L, C)
        B, _, L, C = acts.shape
        pooled = pool(acts.flatten(2), mask, pooling)  # (B, L*C): each layer pooled alike
        chunks.append(pooled.view(B, L, C))
    return ProbeData(torch.cat(chunks), torch.tensor(list(labels), dtype=torch.long))


def token_features(
    model: nn.Module, windows: torch.Tensor, labels: torch.Tensor, layers: Sequence[str], batch_size: int = 16
) -> ProbeData:
    """One feature per token of windows (N, T) with token labels (N, T): (N*T, L, C)."""
    chunks = [activations(model, windows[s : s + batch_size], layers) for s in range(0, len(windows), batch_size)]
    acts = torch.cat(chunks)  # (N, T, L, C)
    return ProbeData(acts.flatten(0, 1), labels.flatten().long())


# --- token labels derived from the text ---------------------------------------------------------------------------

VOWELS = frozenset("aeiouAEIOU")
SPEAKER_LINE = re.compile(r"(?:^|\n\n)([A-Z][^\n:]{0,40}):\n")
"""A speaker's name in the tiny-shakespeare layout: a line of its own ending in `:`, after a blank line."""


def next_vowel_labels(text: str) -> list[int]:
    """Per character: 1 when the character after it is a vowel (what a char model must predict), else 0."""
    return [int(text[i + 1] in VOWELS) if i + 1 < len(text) else 0 for i in range(len(text))]


def speaker_labels(text: str) -> list[int]:
    """Per character: 1 inside a speaker's name (`First Citizen` of `\\n\\nFirst Citizen:\\n`), else 0."""
    labels = [0] * len(text)
    for match in SPEAKER_LINE.finditer(text):
        labels[match.start(1) : match.end(1)] = [1] * (match.end(1) - match.start(1))
    return labels


TOKEN_LABELS: dict[str, tuple[Callable[[str], list[int]], list[str]]] = {
    "next_vowel": (next_vowel_labels, ["not vowel", "vowel"]),
    "speaker": (speaker_labels, ["text", "speaker"]),
}
"""Token-level labels by name: a per-character labeling of the text and the class names."""


def token_labels(pieces: Sequence[str], label: str) -> list[int]:
    """The label of each token, given each token's decoded text: the label of the token's last character (for
    `next_vowel`, whether the character after the token is a vowel). Exact for char tokenizers; for subword
    tokenizers as exact as decoding one token at a time is."""
    if label not in TOKEN_LABELS:
        raise LmlabError(f"probe.label={label!r} is unknown; choose one of: {', '.join(TOKEN_LABELS)}")
    per_char = TOKEN_LABELS[label][0]("".join(pieces))
    ends, position = [], 0
    for piece in pieces:
        position += len(piece)
        ends.append(max(position - 1, 0))
    return [per_char[end] if per_char else 0 for end in ends]


# --- training and scoring -----------------------------------------------------------------------------------------


@dataclass
class ProbeResult:
    """Accuracy per layer on held-out examples, and the majority-class baseline."""

    layers: list[str]
    test_acc: dict[str, float]
    val_acc: dict[str, float]
    train_acc: dict[str, float]
    majority: float
    majority_label: int
    sizes: dict[str, int] = field(default_factory=dict)

    @property
    def best_layer(self) -> str:
        return max(self.layers, key=lambda layer: self.test_acc[layer])

    @property
    def best_acc(self) -> float:
        return self.test_acc[self.best_layer]

    def rows(self) -> list[dict[str, object]]:
        """One row per layer, for CSV: layer, hook, accuracies, baseline, gain over it (points)."""
        return [self.row(layer) for layer in self.layers]

    def row(self, layer: str) -> dict[str, object]:
        test = self.test_acc[layer]
        return {
            "layer": layer,
            "hook": hook_of(layer),
            "test_acc": round(test, 4),
            "val_acc": round(self.val_acc.get(layer, float("nan")), 4),
            "train_acc": round(self.train_acc.get(layer, float("nan")), 4),
            "majority": round(self.majority, 4),
            "gain_points": round(100 * (test - self.majority), 2),
        }


def majority_baseline(train: torch.Tensor, test: torch.Tensor) -> tuple[int, float]:
    """(label, accuracy): the training set's most frequent label, and how often it is right on `test`."""
    label = Counter(train.tolist()).most_common(1)[0][0]
    return int(label), float((test == label).float().mean())


def fit_probes(
    layers: Sequence[str],
    train: ProbeData,
    val: ProbeData,
    test: ProbeData,
    epochs: int = 20,
    lr: float = 1e-2,
    weight_decay: float = 1e-3,
    batch_size: int = 256,
    loggers: Sequence[object] = (),
    seed: int = 0,
) -> ProbeResult:
    """Train one linear probe per layer with Lightning on the training features; score train, val and test."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    from lmlab.tasks.probe import LinearProbeTask

    for name, data in (("training", train), ("validation", val), ("test", test)):
        if len(data) == 0:
            raise LmlabError(f"the probe has no {name} examples; give more data (or raise probe.max_examples)")
    pl.seed_everything(seed, workers=True, verbose=False)
    num_classes = int(max(train.labels.max(), val.labels.max(), test.labels.max())) + 1
    if train.labels.unique().numel() < 2:
        raise LmlabError("the probe's training examples all have one label; give data with at least two classes")
    mean, std = train.features.mean(0), train.features.std(0)  # (L, C) each
    task = LinearProbeTask(layers, train.features.size(-1), num_classes, mean, std, lr, weight_decay)

    def loader(data: ProbeData, shuffle: bool = False) -> DataLoader:
        return DataLoader(TensorDataset(data.features, data.labels), batch_size=batch_size, shuffle=shuffle)

    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=epochs, logger=list(loggers) or False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        log_every_n_steps=max(1, min(10, len(train) // batch_size)),
    )  # fmt: skip
    trainer.fit(task, loader(train, shuffle=True), loader(val))
    trainer.test(task, loader(test), verbose=False)  # logs test/acc/<layer> and test/acc/best
    label, majority = majority_baseline(train.labels, test.labels)
    result = ProbeResult(
        list(layers), task.accuracies("test"), accuracy(task, loader(val)), accuracy(task, loader(train)), majority,
        label, {"train": len(train), "val": len(val), "test": len(test)},
    )  # fmt: skip
    for logger in loggers:
        logger.log_metrics({"test/majority": majority, "test/gain_points": 100 * (result.best_acc - majority)})
        logger.save()
    return result


@torch.no_grad()
def accuracy(task: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """Accuracy per layer of trained probes on a split (unlogged: train and val, beside the logged test)."""
    right, seen = None, 0
    for features, labels in batches:
        hits = (task(features).argmax(-1) == labels[:, None]).sum(0)  # (L,)
        right, seen = (hits if right is None else right + hits), seen + labels.numel()
    return {name: float(c) / seen for name, c in zip(task.layers, right.tolist(), strict=True)}
