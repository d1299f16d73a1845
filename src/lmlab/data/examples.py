"""A DataModule over examples of different lengths (labeled texts, conversations), batched by a collate function."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils.data import DataLoader, Dataset

from lmlab.data.resumable import TrainingDataModule, fixed_generator
from lmlab.data.sharding import EvalShardSampler, process_place
from lmlab.errors import LmlabError


class ExampleDataModule(TrainingDataModule):
    """Train, validation and test datasets of whole examples: a resumable shuffled order for training, each process's
    share of the evaluation examples, and batches made by `collate`.

    Subclasses fill `self.datasets` ({"train", "val", "test"}) in `setup` and name their `source`.
    """

    datasets: dict[str, Dataset]
    source: Any

    def collate(self, rows: list[Any]) -> Any:
        """Rows of a dataset -> one batch."""
        raise NotImplementedError

    def _loader(self, name: str, batch_size: int, shuffle: bool) -> DataLoader:
        self.setup()
        dataset = self.datasets[name]
        world_size, rank, _ = process_place(self.trainer)
        collate: Callable[[list[Any]], Any] = self.collate
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self.train_sampler(dataset) if shuffle else EvalShardSampler(dataset, world_size, rank),
            drop_last=shuffle,
            generator=fixed_generator(),
            collate_fn=collate,
            num_workers=self.num_workers,
            persistent_workers=shuffle and self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        self.setup()
        if not len(self.datasets["test"]):  # type: ignore[arg-type]
            raise LmlabError(f"{self.source.name} has no test split; set data.source.test_fraction above 0")
        return self._loader("test", self.eval_batch_size, shuffle=False)
