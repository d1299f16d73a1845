"""Which examples each process sees: one shuffle of the whole split, cut into global batches, dealt to the ranks.

The set of examples in optimizer step `k` is the same for every way of splitting a global batch of `G` examples
into processes × accumulation micro-steps × micro-batch, so 1 process × accumulation 2 and 2 processes ×
accumulation 1 take the same optimizer steps (the test of `tests/test_batching.py`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import Dataset, DistributedSampler

from lmlab.errors import LmlabError


def process_place(trainer: Any) -> tuple[int, int, int]:
    """(world size, this process's rank, gradient accumulation) of the Trainer a DataModule is attached to."""
    if trainer is None:
        return 1, 0, 1
    accumulation = trainer.accumulate_grad_batches
    return trainer.world_size, trainer.global_rank, accumulation if isinstance(accumulation, int) else 1


class GlobalBatchSampler(DistributedSampler):
    """Training indices of one rank: each epoch a permutation of all examples (seeded by `seed + epoch`, the same on
    every rank), cut to whole global batches (`micro_batch × accumulation × world_size` examples), rank `r` taking
    every `world_size`-th example from `r` on.

    Rank `r`'s `i`-th micro-batch then holds permutation entries `(i·m + j)·W + r` (`j < m`), so the `W` ranks' micro-
    batches `k·a … k·a + a - 1` together are exactly the global batch `k` — independent of how `G` is split.
    Lightning leaves a `DistributedSampler` in place and calls its `set_epoch` every epoch.
    """

    def __init__(
        self,
        dataset: Dataset,
        micro_batch: int,
        world_size: int = 1,
        rank: int = 0,
        accumulation: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)
        per_rank = micro_batch * accumulation  # examples per rank per optimizer step
        global_batch = per_rank * world_size
        steps = len(dataset) // global_batch  # type: ignore[arg-type]
        if steps < 1:
            raise LmlabError(
                f"the training split has {len(dataset)} examples, fewer than one global batch of {global_batch} "  # type: ignore[arg-type]
                f"(micro-batch {micro_batch} × accumulation {accumulation} × {world_size} processes); use more "
                "text, a smaller data.batch_size or batch.global_size, or fewer processes"
            )
        self.num_samples = steps * per_rank  # what the parent's __iter__ yields per rank
        self.total_size = self.num_samples * world_size
        self.skip = 0
        """This rank's indices of `self.epoch` to leave out on the next iteration only (what a resumed run already
        trained on)."""

    def start_at(self, epoch: int, samples: int) -> None:
        """Make the next iteration yield epoch `epoch` from this rank's `samples`-th index on."""
        self.set_epoch(epoch)
        self.skip = samples

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())  # a pure function of (seed, epoch, rank)
        skip, self.skip = self.skip, 0
        return iter(indices[skip:])


class EvalShardSampler(DistributedSampler):
    """Evaluation indices of one rank, in order and without the padding `DistributedSampler` adds: every example is
    evaluated exactly once across the ranks, so summed metrics equal a single process's."""

    def __init__(self, dataset: Dataset, world_size: int = 1, rank: int = 0) -> None:
        if 0 < len(dataset) < world_size:  # type: ignore[arg-type]
            raise LmlabError(  # a rank without a batch would skip the metric sync the others wait in
                f"the evaluation split has {len(dataset)} examples, fewer than the {world_size} processes; "  # type: ignore[arg-type]
                "use more validation data (data.max_val_tokens, data.val_fraction) or fewer processes"
            )
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=False, drop_last=False)
        self.num_samples = len(range(rank, len(dataset), world_size))  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, len(self.dataset), self.num_replicas))  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.num_samples
