"""Fixed-length training windows over a flat array of token ids."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

IGNORE_INDEX = -100
"""Target id that the losses skip (PyTorch's cross-entropy default)."""


class TokenWindows(Dataset):
    """Window `i` is `x = ids[i*stride : i*stride+T]` and `y = x` shifted left by one token.

    `cover_tail`: when the windows stop short of the end, one more window ends at the last token; its targets that
    the windows before it already predicted are `IGNORE_INDEX`, so every token after the first is scored once.
    """

    def __init__(
        self,
        ids: np.ndarray,
        block_size: int,
        stride: int | None = None,
        max_windows: int | None = None,
        cover_tail: bool = False,
    ):
        self.ids = ids
        self.block_size = block_size
        self.stride = stride or block_size
        n = max(0, (len(ids) - 1 - block_size) // self.stride + 1)
        self.length = n if max_windows is None else min(n, max_windows)
        covered = (self.length - 1) * self.stride + block_size + 1 if self.length else 0  # ids the windows span
        self.tail = len(ids) - covered if cover_tail and self.length == n and n > 0 else 0
        """Targets of the extra last window (0: none)."""

    def __len__(self) -> int:
        return self.length + (self.tail > 0)

    @property
    def scored_tokens(self) -> int:
        """Targets predicted over all windows (each counted once)."""
        return self.length * self.block_size + self.tail

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if index == self.length and self.tail:
            chunk = torch.from_numpy(self.ids[-(self.block_size + 1) :].astype(np.int64))  # (T+1,)
            targets = chunk[1:].clone()
            targets[: self.block_size - self.tail] = IGNORE_INDEX  # predicted by the window before
            return chunk[:-1], targets
        start = index * self.stride
        chunk = torch.from_numpy(self.ids[start : start + self.block_size + 1].astype(np.int64))  # (T+1,)
        return chunk[:-1], chunk[1:]


def spread_sample(population: int, size: int, seed: int = 0) -> list[int]:
    """`size` distinct indices of `range(population)`, one drawn at random from each of `size` equal strata, sorted.

    Stratified rather than uniform: every part of a split that drifts in topic (one play after another) is
    represented, so the sample's loss varies less around the whole split's. The same arguments give the same indices
    on every process and run. All indices when `size >= population`.
    """
    if size >= population:
        return list(range(population))
    rng = np.random.default_rng(seed)
    bounds = np.linspace(0, population, size + 1).astype(np.int64)  # stratum i: [bounds[i], bounds[i+1])
    return rng.integers(bounds[:-1], bounds[1:]).tolist()  # ascending: the strata are
