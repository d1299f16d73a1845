"""Fixed-length training windows over a flat array of token ids."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


class TokenWindows(Dataset):
    """Window `i` is `x = ids[i*stride : i*stride+T]` and `y = x` shifted left by one token."""

    def __init__(self, ids: np.ndarray, block_size: int, stride: int | None = None, max_windows: int | None = None):
        self.ids = ids
        self.block_size = block_size
        self.stride = stride or block_size
        n = max(0, (len(ids) - 1 - block_size) // self.stride + 1)
        self.length = n if max_windows is None else min(n, max_windows)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = index * self.stride
        chunk = torch.from_numpy(self.ids[start : start + self.block_size + 1].astype(np.int64))  # (T+1,)
        return chunk[:-1], chunk[1:]
