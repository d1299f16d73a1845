"""Masked language modelling for bidirectional encoders (BERT's objective)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics import SumMetric

from lmlab.errors import LmlabError
from lmlab.models import ModelConfig
from lmlab.tasks.base import ModelTask, OptimizerFactory, SchedulerFactory
from lmlab.tokenizers import Tokenizer

IGNORE = -100
"""Label of positions that are not predicted (cross-entropy's ignore_index)."""


def mask_tokens(
    ids: torch.Tensor,
    mask_id: int,
    replacement_ids: torch.Tensor,
    select_prob: float = 0.15,
    mask_prob: float = 0.8,
    random_prob: float = 0.1,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of ids (B, T): select round(`select_prob` * T) positions of every row (at least one), as BERT's
    own data pipeline does; of those, `mask_prob` become `mask_id`, `random_prob` a random id from
    `replacement_ids`, the rest stay. Returns (inputs, labels), labels = IGNORE where a token was not selected.

    Every row predicting the same number of tokens makes the loss of a batch the mean of its rows' losses, so the mean
    over micro-batches (gradient accumulation, data-parallel processes) equals the mean over the global batch."""
    num_selected = max(1, round(select_prob * ids.size(-1)))
    u = torch.rand(ids.shape, generator=generator, device=ids.device)
    chosen = u.topk(num_selected, dim=-1, largest=False).indices  # (B, num_selected): uniform random positions
    selected = torch.zeros_like(ids, dtype=torch.bool).scatter_(-1, chosen, True)  # (B, T)
    action = torch.rand(ids.shape, generator=generator, device=ids.device)
    to_mask = selected & (action < mask_prob)
    to_random = selected & (action >= mask_prob) & (action < mask_prob + random_prob)
    pick = torch.randint(len(replacement_ids), ids.shape, generator=generator, device=ids.device)
    inputs = torch.where(to_mask, torch.full_like(ids, mask_id), ids)
    inputs = torch.where(to_random, replacement_ids.to(ids.device)[pick], inputs)
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE))
    return inputs, labels


class MaskedLMTask(ModelTask):
    """Pretrains an encoder by predicting masked tokens; logs `val/mlm_loss`, `val/mlm_acc` (and `val/loss`).

    Args:
        model, optimizer, scheduler, weight_decay: see `ModelTask`.
        mask_id: id of the mask token (from the tokenizer's special tokens).
        special_ids: ids never drawn as random replacements.
        select_prob, mask_prob, random_prob: BERT's 15 % / 80 % / 10 % (the last 10 % stay unchanged).
        seed: validation masks are drawn from this seed, so every evaluation scores the same positions.
    """

    def __init__(
        self,
        model: ModelConfig | dict[str, Any],
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        weight_decay: float = 0.01,
        mask_id: int | None = None,
        special_ids: Sequence[int] = (),
        select_prob: float = 0.15,
        mask_prob: float = 0.8,
        random_prob: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__(model, optimizer, scheduler, weight_decay)
        vocab_size = self.model_config.vocab_size
        if mask_id is None or not 0 <= mask_id < vocab_size:
            raise LmlabError(
                "task=masked_lm needs a mask token in the tokenizer; add one, "
                "e.g. \"tokenizer.special_tokens=['<mask>']\""
            )
        if not (0 < select_prob < 1 and mask_prob >= 0 and random_prob >= 0 and mask_prob + random_prob <= 1):
            raise LmlabError("task.select_prob must lie in (0, 1) and task.mask_prob + task.random_prob <= 1")
        self.hparams.update(mask_id=mask_id, select_prob=select_prob, mask_prob=mask_prob, random_prob=random_prob)
        self.mask_id = mask_id
        specials = set(special_ids) | {mask_id}
        self.register_buffer("replacement_ids", torch.tensor([i for i in range(vocab_size) if i not in specials]))
        self.probs = (select_prob, mask_prob, random_prob)
        self.seed = seed
        self.val_nats, self.val_correct, self.val_count = SumMetric(), SumMetric(), SumMetric()

    def check_model(self, config: ModelConfig) -> None:
        if config.causal:
            raise LmlabError(
                f"task=masked_lm needs a bidirectional encoder, but model={config.family} is causal; "
                "use model=bert (or task=causal_lm to train this model)"
            )

    @staticmethod
    def tokenizer_arguments(tokenizer: Tokenizer) -> dict[str, Any]:
        specials = tokenizer.special_ids() if hasattr(tokenizer, "special_ids") else {}
        return {"mask_id": specials.get("mask"), "special_ids": sorted(specials.values())}

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)

    def masked(self, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return mask_tokens(x, self.mask_id, self.replacement_ids, *self.probs, generator=generator)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, labels = self.masked(batch[0])
        logits = self(inputs)  # (B, T, V)
        loss = self.token_loss(logits, labels, ignore_index=IGNORE)
        self.log_train_loss(loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x = batch[0]
        generator = torch.Generator(device=x.device).manual_seed(self.seed + batch_idx)
        inputs, labels = self.masked(x, generator)
        logits = self(inputs).flatten(0, 1)  # (B*T, V)
        labels = labels.flatten()
        chosen = labels != IGNORE
        self.val_nats.update(self.token_loss(logits, labels, "sum", IGNORE))
        self.val_correct.update((logits[chosen].argmax(-1) == labels[chosen]).sum().float())
        self.val_count.update(chosen.sum().float())

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        nats, correct, count = self.val_nats.compute(), self.val_correct.compute(), self.val_count.compute()
        for metric in (self.val_nats, self.val_correct, self.val_count):
            metric.reset()
        if count <= 0:
            return
        loss = nats / count
        self.log("val/mlm_loss", loss)
        self.log("val/mlm_acc", correct / count, prog_bar=True)
        self.log("val/loss", loss, prog_bar=True)  # the task's main loss, which checkpoints and sweeps compare
