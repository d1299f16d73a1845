"""LightningDataModule for language modelling: corpus -> tokenizer -> token cache -> (x, y) batches."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from pytorch_lightning.trainer.states import TrainerFn
from torch.utils.data import DataLoader, Dataset, Subset

from lmlab.data.cache import TokenSplits, build_token_cache, load_token_cache
from lmlab.data.corpora import Corpus
from lmlab.data.resumable import TrainingDataModule, fixed_generator
from lmlab.data.sharding import EvalShardSampler, process_place
from lmlab.data.windows import TokenWindows, spread_sample
from lmlab.errors import LmlabError
from lmlab.tokenizers import Tokenizer, TokenizerConfig

log = logging.getLogger(__name__)

VAL_SAMPLE_SEED = 0
"""Seed of the validation sample: fixed, not the run's seed, so runs of a sweep over seeds score the same windows."""


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
        val_sample_tokens: validations *during fit* score only a fixed sample of about this many tokens (whole
            validation windows, spread over the split, the same every time), logged as `val_sample/...`; the final
            weights, `trainer.validate` and `lmlab eval` always score the whole split (`val/...`). `None`: every
            validation scores the whole split. A 2,000-step run validating every 500 steps otherwise spends more
            forward passes on validation than on training.
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
        val_sample_tokens: int | None = None,
        train_stride: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(tokenizer, block_size, batch_size, eval_batch_size, max_val_tokens, num_workers, seed)
        if val_sample_tokens is not None and val_sample_tokens < 1:
            raise LmlabError(f"data.val_sample_tokens={val_sample_tokens} must be positive, or null for the whole "
                             "validation split at every validation; e.g. data.val_sample_tokens=65536")  # fmt: skip
        self.val_sample_tokens = val_sample_tokens
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

    def val_windows(self) -> TokenWindows:
        """The whole validation split as windows (up to `max_val_tokens`): what the final validation scores."""
        self.setup()
        max_windows = None if self.max_val_tokens is None else max(1, self.max_val_tokens // self.block_size)
        return TokenWindows(self.splits.val, self.block_size, max_windows=max_windows)

    def val_sample(self, windows: TokenWindows) -> list[int] | None:
        """Indices of the windows a validation during fit scores (`val_sample_tokens` of them, spread over the split
        by a fixed seed, so every run and every validation scores the same ones), or None when that is all of them."""
        if self.val_sample_tokens is None:
            return None
        wanted = -(-self.val_sample_tokens // self.block_size)  # whole windows covering at least that many tokens
        return spread_sample(len(windows), wanted, seed=VAL_SAMPLE_SEED) if wanted < len(windows) else None

    def validation_is_sampled(self) -> bool:
        """Whether the validation the trainer runs now scores the sample (fitting, with a sample smaller than the
        split) rather than the whole split: the task then logs `val_sample/...` instead of `val/...`."""
        trainer = self.trainer
        fitting = trainer is not None and trainer.state.fn == TrainerFn.FITTING
        return fitting and self.val_sample(self.val_windows()) is not None

    def val_dataloader(self) -> DataLoader:
        windows: Dataset = self.val_windows()
        if self.validation_is_sampled():  # Lightning asks once per fit, and again for each `trainer.validate`
            windows = Subset(windows, self.val_sample(windows))
        world_size, rank, _ = process_place(self.trainer)
        return DataLoader(
            windows,
            batch_size=self.eval_batch_size,
            sampler=EvalShardSampler(windows, world_size, rank),
            generator=fixed_generator(),
            num_workers=self.num_workers,
        )
