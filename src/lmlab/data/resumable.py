"""Resumable training order: the shuffle is a pure function of (seed, epoch), and a DataModule remembers how many
batches of the current epoch were trained, so a run resumed mid-epoch draws exactly the batches it had not seen.

Lightning restores a DataLoader's position only if the loader itself is stateful; a map-style loader restarts its
epoch. Here the position travels in the DataModule's own `state_dict` (which Lightning saves in every checkpoint and
loads before it builds the dataloaders) and the sampler skips what was consumed.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import Dataset

from lmlab.data.sharding import GlobalBatchSampler, process_place
from lmlab.errors import LmlabError
from lmlab.tokenizers import TokenizerConfig


class ResumableTrainingData:
    """Mixin for a LightningDataModule: counts trained batches per epoch and restores the count from a checkpoint.

    Call `self.train_sampler(dataset)` when building the training DataLoader (with `batch_size=self.batch_size`).
    """

    batch_size: int
    seed: int
    trainer: pl.Trainer | None

    _position: tuple[int, int] = (0, 0)  # (epoch, batches of that epoch already trained)

    def train_sampler(self, dataset: Dataset) -> GlobalBatchSampler:
        """The training sampler, dealing global batches to the trainer's processes and starting where a resumed run
        stopped."""
        world_size, rank, accumulation = process_place(self.trainer)
        sampler = GlobalBatchSampler(dataset, self.batch_size, world_size, rank, accumulation, seed=self.seed)
        epoch, batches = self._position
        if batches * self.batch_size >= len(sampler):  # stopped after the epoch's last batch: the next epoch begins
            epoch, batches = epoch + 1, 0
        sampler.start_at(epoch, batches * self.batch_size)
        self._position = (epoch, batches)
        return sampler

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Count each batch that goes to a training step (validation batches pass through uncounted)."""
        trainer = self.trainer
        if trainer is not None and trainer.training:
            epoch, batches = self._position
            self._position = (trainer.current_epoch, batches + 1 if trainer.current_epoch == epoch else 1)
        return batch

    def state_dict(self) -> dict[str, Any]:
        epoch, batches = self._position
        return {"epoch": epoch, "batches": batches}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._position = (int(state_dict.get("epoch", 0)), int(state_dict.get("batches", 0)))


class TrainingDataModule(ResumableTrainingData, pl.LightningDataModule):
    """What lmlab's DataModules share: how to get the tokenizer, block and batch sizes (checked), the validation cap,
    DataLoader workers and the shuffle seed; plus the resumable training order of `ResumableTrainingData`."""

    def __init__(
        self,
        tokenizer: TokenizerConfig,
        block_size: int,
        batch_size: int,
        eval_batch_size: int | None = None,
        max_val_tokens: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if block_size < 1 or batch_size < 1:
            raise LmlabError(f"block_size={block_size} and batch_size={batch_size} must both be positive")
        self.tokenizer_config = tokenizer
        self.block_size = block_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.max_val_tokens = max_val_tokens
        self.num_workers = num_workers
        self.seed = seed


def fixed_generator() -> torch.Generator:
    """A generator for a DataLoader whose order is fixed, so making its iterator never draws from the global RNG."""
    return torch.Generator().manual_seed(0)
