"""Linear probes: one logistic-regression head per layer, trained together on frozen activations.

The heads share nothing (each sees only its own layer's features and the loss is a sum), so training them in one
module is the same as training each alone, with one Trainer, one data pass and one set of logged curves.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from lmlab.errors import LmlabError

Batch = tuple[torch.Tensor, torch.Tensor]
"""features (B, L, C): one activation per probed layer, labels (B,)."""


class LinearProbeTask(pl.LightningModule):
    """One linear classifier per layer on standardized activations; logs `<split>/acc/<layer>` for val and test.

    Args:
        layers: names of the probed layers (e.g. `embed`, `0`, `1`), in the order of the features' L axis.
        width: activation width C.
        num_classes: number of labels.
        mean, std: per-layer feature statistics of the training set (L, C): features are standardized with them, so
            one learning rate suits every layer although the residual stream's scale grows with depth.
        lr, weight_decay: AdamW settings (weight decay is the probes' L2 regularization).
    """

    def __init__(
        self,
        layers: Sequence[str],
        width: int,
        num_classes: int,
        mean: torch.Tensor | None = None,
        std: torch.Tensor | None = None,
        lr: float = 1e-2,
        weight_decay: float = 1e-3,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise LmlabError(f"a probe needs at least two classes in its training labels, got {num_classes}")
        self.layers = list(layers)
        L = len(self.layers)
        self.weight = nn.Parameter(torch.zeros(L, width, num_classes))  # (L, C, K)
        self.bias = nn.Parameter(torch.zeros(L, num_classes))  # (L, K)
        self.register_buffer("mean", torch.zeros(L, width) if mean is None else mean.float().clone())
        self.register_buffer("std", torch.ones(L, width) if std is None else std.float().clamp(min=1e-6).clone())
        self.lr, self.weight_decay = lr, weight_decay
        self.save_hyperparameters(ignore=["mean", "std"])
        self.correct: dict[str, torch.Tensor] = {}
        self.seen: dict[str, int] = {}

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Class logits (B, L, K) of features (B, L, C), each layer through its own head."""
        x = (features.float() - self.mean) / self.std  # (B, L, C)
        return torch.einsum("blc,lck->blk", x, self.weight) + self.bias

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        features, labels = batch
        logits = self(features)  # (B, L, K)
        L = logits.size(1)
        per_layer = F.cross_entropy(logits.flatten(0, 1), labels.repeat_interleave(L), reduction="none")
        loss = per_layer.view(-1, L).mean(0).sum()  # each head's mean loss; summed, so heads train independently
        self.log("train/loss", loss / L, prog_bar=True)
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self.count("val", batch)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self.count("test", batch)

    def count(self, split: str, batch: Batch) -> None:
        """Add the batch's correct predictions per layer to the split's tally."""
        features, labels = batch
        right = (self(features).argmax(-1) == labels[:, None]).sum(0)  # (L,)
        self.correct[split] = self.correct.get(split, torch.zeros_like(right)) + right
        self.seen[split] = self.seen.get(split, 0) + labels.numel()

    def accuracies(self, split: str) -> dict[str, float]:
        """Accuracy per layer name on the split's last evaluation."""
        right = self.correct.get(split)
        if right is None or not self.seen.get(split):
            return {}
        return {name: float(c) / self.seen[split] for name, c in zip(self.layers, right.tolist(), strict=True)}

    def on_validation_epoch_start(self) -> None:
        self.correct.pop("val", None), self.seen.pop("val", None)

    def on_test_epoch_start(self) -> None:
        self.correct.pop("test", None), self.seen.pop("test", None)

    def on_validation_epoch_end(self) -> None:
        self.log_accuracies("val")

    def on_test_epoch_end(self) -> None:
        self.log_accuracies("test")

    def log_accuracies(self, split: str) -> None:
        accuracies = self.accuracies(split)
        for name, value in accuracies.items():
            self.log(f"{split}/acc/{name}", value)
        if accuracies:
            self.log(f"{split}/acc/best", max(accuracies.values()), prog_bar=split == "val")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
