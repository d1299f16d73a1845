"""LightningDataModule for text classification: labeled source -> tokenizer -> padded `(ids, mask, label)` batches."""

from __future__ import annotations

import logging
from collections import Counter

import torch
from torch.utils.data import Dataset

from lmlab.data.examples import ExampleDataModule
from lmlab.data.labeled import LabeledExamples, LabeledSource, LabeledSplits
from lmlab.errors import LmlabError
from lmlab.tokenizers import Tokenizer, TokenizerConfig

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""ids (B, T), attention mask (B, T) with 1 for real tokens, labels (B,)."""


def pad_id_of(tokenizer: Tokenizer) -> int:
    """The id batches are padded with: the tokenizer's pad token, else its end-of-text token (GPT-2's habit)."""
    specials = tokenizer.special_ids() if hasattr(tokenizer, "special_ids") else {}
    for role in ("pad", "eos"):
        if role in specials:
            return specials[role]
    raise LmlabError(
        "task=classification pads batches and needs a pad token in the tokenizer; add one, e.g. "
        "\"tokenizer.special_tokens=['<pad>']\" (tokenizer=bpe and tokenizer=hf usually have one)"
    )


def encode_text(tokenizer: Tokenizer, text: str, block_size: int) -> list[int]:
    """Token ids of one text, truncated to `block_size`; wrapped in [CLS] ... [SEP] when the tokenizer has both."""
    specials = tokenizer.special_ids() if hasattr(tokenizer, "special_ids") else {}
    if "cls" in specials and "sep" in specials and block_size > 2:
        return [specials["cls"], *tokenizer.encode(text)[: block_size - 2], specials["sep"]]
    return tokenizer.encode(text)[:block_size]


class EncodedExamples(Dataset):
    """Token ids and label of each example, encoded once."""

    def __init__(self, ids: list[list[int]], labels: list[int]) -> None:
        self.ids = ids
        self.labels = labels

    @classmethod
    def encode(cls, examples: LabeledExamples, tokenizer: Tokenizer, block_size: int, pad_id: int) -> EncodedExamples:
        """Encode every text (an empty one becomes a single pad token, so no row is all padding)."""
        return cls([encode_text(tokenizer, t, block_size) or [pad_id] for t in examples.texts], list(examples.labels))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[list[int], int]:
        return self.ids[index], self.labels[index]

    def first(self, max_tokens: int | None) -> EncodedExamples:
        """The leading examples whose tokens sum to at most `max_tokens` (at least one); None keeps all."""
        if max_tokens is None:
            return self
        total, n = 0, 0
        while n < len(self.ids) and (n == 0 or total + len(self.ids[n]) <= max_tokens):
            total += len(self.ids[n])
            n += 1
        return EncodedExamples(self.ids[:n], self.labels[:n])


def pad_batch(examples: list[tuple[list[int], int]], pad_id: int) -> Batch:
    """Right-pad a list of (ids, label) to the longest in the batch."""
    T = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(examples), T), dtype=torch.long)  # (B, T)
    for row, (tokens, _) in enumerate(examples):
        ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[row, : len(tokens)] = 1
    return ids, mask, torch.tensor([label for _, label in examples], dtype=torch.long)


class ClassificationDataModule(ExampleDataModule):
    """Serves shuffled training batches and ordered validation / test batches of labeled text.

    Args:
        source: where the labeled text comes from, and its fixed split.
        tokenizer: how to get the tokenizer (trained on the training texts, or loaded: `hf`, a checkpoint's).
        block_size: longest input in tokens (longer texts are truncated).
        batch_size: training examples per step.
        eval_batch_size: examples per validation / test batch; defaults to `batch_size`.
        max_train_examples: use only the first training examples (of the fixed split order); None = all.
        max_val_tokens: evaluate only the leading validation examples holding this many tokens; None = all.
        num_workers: DataLoader worker processes.
        seed: seed of the training shuffle.
    """

    def __init__(
        self,
        source: LabeledSource,
        tokenizer: TokenizerConfig,
        block_size: int,
        batch_size: int,
        eval_batch_size: int | None = None,
        max_train_examples: int | None = None,
        max_val_tokens: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(tokenizer, block_size, batch_size, eval_batch_size, max_val_tokens, num_workers, seed)
        self.source = source
        self.max_train_examples = max_train_examples
        self.splits: LabeledSplits | None = None
        self.datasets: dict[str, EncodedExamples] = {}
        self._tokenizer: Tokenizer | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        splits = self.source.load()
        if self.max_train_examples is not None:
            splits.train = splits.train.subset(range(min(self.max_train_examples, len(splits.train))))
        tokenizer = self.tokenizer_config.train(splits.train.texts)
        pad_id = pad_id_of(tokenizer)
        self.datasets = {
            name: EncodedExamples.encode(examples, tokenizer, self.block_size, pad_id)
            for name, examples in (("train", splits.train), ("val", splits.val), ("test", splits.test))
        }
        self.datasets["val"] = self.datasets["val"].first(self.max_val_tokens)
        self.splits, self._tokenizer, self.pad_id = splits, tokenizer, pad_id
        sizes = ", ".join(f"{len(d)} {name}" for name, d in self.datasets.items())
        log.info("data: %s, %s examples, classes %s, vocab %d", self.source.name, sizes, splits.label_names,
                 tokenizer.vocab_size)  # fmt: skip

    @property
    def tokenizer(self) -> Tokenizer:
        self.setup()
        return self._tokenizer

    @property
    def label_names(self) -> list[str]:
        self.setup()
        return list(self.splits.label_names)

    def class_counts(self) -> list[int]:
        """Training examples per class, in label order."""
        self.setup()
        counts = Counter(self.datasets["train"].labels)
        return [counts.get(i, 0) for i in range(len(self.splits.label_names))]

    def collate(self, rows: list[tuple[list[int], int]]) -> Batch:
        return pad_batch(rows, pad_id=self.pad_id)
