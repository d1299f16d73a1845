"""LightningDataModule for language modelling: corpus -> tokenizer -> token cache -> (x, y) batches."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from lmlab.data.cache import TokenSplits, build_token_cache, load_token_cache
from lmlab.data.corpora import Corpus
from lmlab.data.resumable import TrainingDataModule, fixed_generator
from lmlab.data.sharding import EvalShardSampler, process_place
from lmlab.data.windows import TokenWindows
from lmlab.errors import LmlabError
from lmlab.tokenizers import Tokenizer, TokenizerConfig

log = logging.getLogger(__name__)


class LMDataModule(TrainingDataModule):
    """Serves shuffled training windows and a fixed, ordered set of validation windows.

    The shuffle of epoch `e` is seeded by `seed + e`, and checkpoints remember the position inside the epoch, so a
    resumed run continues with exactly the windows it had not trained on.

    Args:
        corpus: where the text comes from.
        tokenizer: how to train the tokenizer on the training split.
        block_size: tokens per window (the model's context length).
        batch_size: training windows per micro-batch of one process (the global batch: `batch.global_size`).
        eval_batch_size: windows per validation batch; defaults to `batch_size`.
        val_fraction: share of the text, taken from its end, held out for validation.
        max_val_tokens: cap on validation tokens evaluated (the first ones, so the set is fixed); `None` = all.
        train_stride: tokens between the starts of consecutive training windows; 1 samples every offset (as
            nanoGPT's random crops do), `None` means `block_size` (non-overlapping windows).
        cache_dir: root folder of the token cache.
        num_workers: DataLoader worker processes.
        seed: seed of the training shuffle.
    """

    def __init__(
        self,
        corpus: Corpus,
        tokenizer: TokenizerConfig,
        block_size: int,
        batch_size: int,
        cache_dir: str | Path,
        eval_batch_size: int | None = None,
        val_fraction: float = 0.1,
        max_val_tokens: int | None = None,
        train_stride: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(tokenizer, block_size, batch_size, eval_batch_size, max_val_tokens, num_workers, seed)
        self.corpus = corpus
        self.val_fraction = val_fraction
        self.train_stride = train_stride
        self.cache_dir = Path(cache_dir)
        self._entry: Path | None = None
        self.splits: TokenSplits | None = None

    def prepare_data(self) -> None:
        """Build (or find) the token cache entry; cheap on a cache hit."""
        if self._entry is None:
            self._entry = build_token_cache(self.corpus, self.tokenizer_config, self.val_fraction, self.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        self.prepare_data()
        splits = load_token_cache(self._entry)
        for name, ids in (("training", splits.train), ("validation", splits.val)):
            if len(ids) < self.block_size + 1:
                raise LmlabError(
                    f"the {name} split of {self.corpus.name} has {len(ids)} tokens, fewer than block_size+1="
                    f"{self.block_size + 1}; use more text or a smaller model.block_size"
                )
        self.splits = splits
        log.info(
            "data: %s, %d train / %d val tokens, vocab %d",
            self.corpus.name,
            len(splits.train),
            len(splits.val),
            splits.tokenizer.vocab_size,
        )

    @property
    def tokenizer(self) -> Tokenizer:
        self.setup()
        return self.splits.tokenizer

    def train_ids(self) -> np.ndarray:
        """The whole training split as one id array (counting models fit on it directly)."""
        self.setup()
        return self.splits.train

    def train_dataloader(self) -> DataLoader:
        self.setup()
        windows = TokenWindows(self.splits.train, self.block_size, stride=self.train_stride)
        return DataLoader(
            windows,
            batch_size=self.batch_size,
            sampler=self.train_sampler(windows),
            drop_last=True,
            generator=fixed_generator(),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        self.setup()
        max_windows = None if self.max_val_tokens is None else max(1, self.max_val_tokens // self.block_size)
        windows = TokenWindows(self.splits.val, self.block_size, max_windows=max_windows)
        world_size, rank, _ = process_place(self.trainer)
        return DataLoader(
            windows,
            batch_size=self.eval_batch_size,
            sampler=EvalShardSampler(windows, world_size, rank),
            generator=fixed_generator(),
            num_workers=self.num_workers,
        )
