"""Resumable training order: the shuffle is a pure function of (seed, epoch), and a DataModule remembers how many
batches of the current epoch were trained, so a run resumed mid-epoch draws exactly the batches it had not seen.

Lightning 2.6 restores a DataLoader's position only if the loader itself is stateful; a map-style loader restarts its
epoch. Here the position travels in the DataModule's own `state_dict` (which Lightning saves in every checkpoint and
loads before it builds the dataloaders) and the sampler skips what was consumed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import Dataset, DistributedSampler


class ResumableSampler(DistributedSampler):
    """`DistributedSampler` (seeded by `seed + epoch`, sharded by rank) that can start inside an epoch.

    Subclassing `DistributedSampler` also keeps Lightning from swapping it for its own under DDP.

    Args:
        dataset: what is sampled.
        seed: seed of the shuffle; epoch `e` uses `seed + e`.
        num_replicas, rank: the process group's size and this process's rank (1 and 0 on one device).
        drop_last: drop the tail that does not divide evenly across ranks.
        shuffle: shuffle each epoch (else the dataset order).
    """

    def __init__(
        self,
        dataset: Dataset,
        seed: int,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = True,
        shuffle: bool = True,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.skip = 0
        """Samples of `self.epoch` to leave out on the next iteration only (what a resumed run already trained on)."""

    def start_at(self, epoch: int, samples: int) -> None:
        """Make the next iteration yield epoch `epoch` from its `samples`-th index on."""
        self.set_epoch(epoch)
        self.skip = samples

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())  # a pure function of (seed, epoch, rank)
        skip, self.skip = self.skip, 0
        return iter(indices[skip:])


class ResumableTrainingData:
    """Mixin for a LightningDataModule: counts trained batches per epoch and restores the count from a checkpoint.

    Call `self.train_sampler(dataset)` when building the training DataLoader (with `batch_size=self.batch_size`).
    """

    batch_size: int
    seed: int
    trainer: pl.Trainer | None

    _position: tuple[int, int] = (0, 0)  # (epoch, batches of that epoch already trained)

    def train_sampler(self, dataset: Dataset, drop_last: bool = True) -> ResumableSampler:
        """The training sampler, sharded for the trainer's processes and starting where a resumed run stopped."""
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = ResumableSampler(dataset, self.seed, num_replicas=world, rank=rank, drop_last=drop_last)
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


def fixed_generator() -> torch.Generator:
    """A generator for a DataLoader whose order is fixed, so making its iterator never draws from the global RNG."""
    return torch.Generator().manual_seed(0)
