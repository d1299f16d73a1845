"""LightningDataModule for supervised fine-tuning: conversations -> chat template -> batches whose targets are the
assistant's tokens only (response-only loss), one example per row or several packed into each row.

A batch is a dict: `ids` (B, T) and `targets` (B, T) with `IGNORE_INDEX` wherever the model is not trained (prompt
tokens, padding, the first token of each packed example), plus `segments` (B, T) when packing: the number of the
example each position belongs to, so attention stays inside an example and positions restart at each; and `n_tokens`
(an int): the positions that hold a real token, not padding, which throughput counts.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging

import torch
from torch.utils.data import Dataset

from lmlab.data.conversations import Conversation, ConversationSource, ConversationSplits
from lmlab.data.examples import ExampleDataModule
from lmlab.data.windows import IGNORE_INDEX
from lmlab.errors import LmlabError
from lmlab.tokenizers import Tokenizer, TokenizerConfig
from lmlab.tokenizers.templates import (
    END_OF_TURN,
    TEMPLATE_TOKENS,
    Rendered,
    has_chat_template,
    render,
    template_token_ids,
)

log = logging.getLogger(__name__)

Row = list[Rendered]
"""The examples of one batch row: one, or several when packing."""


def with_template_tokens(config: TokenizerConfig) -> TokenizerConfig:
    """A char/BPE tokenizer recipe with lmlab's template tokens added to its special tokens (others unchanged)."""
    specials = getattr(config, "special_tokens", None)
    if not dataclasses.is_dataclass(config) or specials is None:
        return config
    missing = [t for t in TEMPLATE_TOKENS if t not in specials]
    return dataclasses.replace(config, special_tokens=[*specials, *missing]) if missing else config


def conversation_texts(conversations: list[Conversation]) -> list[str]:
    """The message texts of the conversations, to train a tokenizer on."""
    return [m.content for c in conversations for m in c]


def encode_examples(
    conversations: list[Conversation], tokenizer: Tokenizer, block_size: int, train_on_prompt: bool, split: str
) -> list[Rendered]:
    """Render each conversation, cut it to `block_size + 1` tokens, and drop those left with nothing to train."""
    examples, cut, dropped = [], 0, 0
    for conversation in conversations:
        rendered = render(tokenizer, conversation)
        ids, trained = rendered.ids[: block_size + 1], rendered.trained[: block_size + 1]
        cut += len(ids) < len(rendered.ids)
        trained = [True] * len(ids) if train_on_prompt else trained
        if not any(trained[1:]):  # token 0 is never a target
            dropped += 1
            continue
        examples.append(Rendered(ids, trained))
    if cut or dropped:
        log.warning(
            "data: %s: %d of %d conversations cut to block_size+1=%d tokens, %d dropped (no reply token left); "
            "raise model.block_size to keep more", split, cut, len(conversations), block_size + 1, dropped,
        )  # fmt: skip
    return examples


def pack_rows(examples: list[Rendered], capacity: int, packing: bool) -> list[Row]:
    """Rows of examples: one each, or (packing) whole examples packed into rows of `capacity` tokens by best-fit
    decreasing (longest first, each into the fullest row it fits), as TRL's `bfd` strategy does: on English
    ChatterBot in SmolLM2's template, 10.7 % padding at 129 tokens where filling rows in data order left 24 %.
    Rows come back ordered by their first example, so a split's leading rows hold its leading examples."""
    if not packing:
        return [[e] for e in examples]
    rows: list[list[int]] = []  # example indices per row
    free: list[tuple[int, int]] = []  # (free tokens, row), sorted: the best fit is the first with room enough
    for index in sorted(range(len(examples)), key=lambda i: -len(examples[i].ids)):
        size = len(examples[index].ids)
        slot = bisect.bisect_left(free, (size, -1))
        if slot < len(free):
            room, row = free.pop(slot)
        else:
            room, row = capacity, len(rows)
            rows.append([])
        rows[row].append(index)
        bisect.insort(free, (room - size, row))
    return [[examples[i] for i in sorted(row)] for row in sorted(rows, key=min)]


def row_tokens(row: Row) -> int:
    """Input positions a row fills: its tokens less the last (which is only a target)."""
    return sum(len(e.ids) for e in row) - 1


def collate_rows(rows: list[Row], block_size: int, pad_id: int, packing: bool) -> dict[str, torch.Tensor]:
    """Batch rows into `ids`, `targets` (and `segments` when packing), each (B, block_size), right-padded."""
    B = len(rows)
    ids = torch.full((B, block_size), pad_id, dtype=torch.long)  # (B, T)
    targets = torch.full((B, block_size), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    segments = torch.full((B, block_size), len(max(rows, key=len)), dtype=torch.long)  # (B, T); padding: its own
    for b, row in enumerate(rows):
        tokens = torch.tensor([t for e in row for t in e.ids], dtype=torch.long)  # (n,)
        trained = torch.tensor([f for e in row for f in e.trained], dtype=torch.bool)  # (n,)
        segment = torch.cat([torch.full((len(e.ids),), i, dtype=torch.long) for i, e in enumerate(row)])  # (n,)
        n = len(tokens) - 1
        scored = trained[1:] & (segment[1:] == segment[:-1])  # (n,): never across an example boundary
        ids[b, :n] = tokens[:-1]
        targets[b, :n] = torch.where(scored, tokens[1:], IGNORE_INDEX)
        segments[b, :n] = segment[:-1]
    batch = {"ids": ids, "targets": targets, "n_tokens": sum(row_tokens(row) for row in rows)}
    return batch | {"segments": segments} if packing else batch


class PackedRows(Dataset):
    """The rows of one split; an item is a row (a list of rendered examples)."""

    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Row:
        return self.rows[index]

    def first(self, max_tokens: int | None) -> PackedRows:
        """The leading rows whose tokens sum to at most `max_tokens` (at least one); None keeps all."""
        if max_tokens is None:
            return self
        total, n = 0, 0
        while n < len(self.rows) and (n == 0 or total + row_tokens(self.rows[n]) <= max_tokens):
            total += row_tokens(self.rows[n])
            n += 1
        return PackedRows(self.rows[:n])


class SFTDataModule(ExampleDataModule):
    """Serves supervised fine-tuning batches of conversations: shuffled (resumably) for training, in order for
    validation and test.

    Args:
        source: where the conversations come from, and their fixed split.
        tokenizer: how to get the tokenizer (char/BPE: trained on the training texts, with lmlab's template tokens
            added; `hf` with a chat template, or a checkpoint's, used as is).
        block_size: input tokens per row; longer conversations are cut to `block_size + 1` tokens.
        batch_size: training rows per step.
        eval_batch_size: rows per validation / test batch; defaults to `batch_size`.
        packing: several conversations per row (with `segments` keeping them apart) instead of one plus padding.
        train_on_prompt: train on every token (prompts too), not only the assistant's replies.
        max_train_examples: use only the first training conversations (of the fixed split order); None = all.
        max_val_tokens: evaluate only the leading validation rows holding this many tokens; None = all.
        num_workers: DataLoader worker processes.
        seed: seed of the training shuffle.
    """

    def __init__(
        self,
        source: ConversationSource,
        tokenizer: TokenizerConfig,
        block_size: int,
        batch_size: int,
        eval_batch_size: int | None = None,
        packing: bool = False,
        train_on_prompt: bool = False,
        max_train_examples: int | None = None,
        max_val_tokens: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        tokenizer = with_template_tokens(tokenizer)
        super().__init__(tokenizer, block_size, batch_size, eval_batch_size, max_val_tokens, num_workers, seed)
        self.source = source
        self.packing = packing
        self.train_on_prompt = train_on_prompt
        self.max_train_examples = max_train_examples
        self.splits: ConversationSplits | None = None
        self.datasets: dict[str, PackedRows] = {}
        self.padding_fraction = 0.0
        """Padding tokens / all input positions of the training split, with the chosen `packing`."""
        self._tokenizer: Tokenizer | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        splits = self.source.load()
        if self.max_train_examples is not None:
            splits.train = splits.train[: self.max_train_examples]
        if not splits.train:
            raise LmlabError(f"{self.source.name} has no training conversations; check data.source")
        tokenizer = self.tokenizer_config.train(conversation_texts(splits.train))
        for name, conversations in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
            examples = encode_examples(conversations, tokenizer, self.block_size, self.train_on_prompt, name)
            self.datasets[name] = PackedRows(pack_rows(examples, self.block_size + 1, self.packing))
        if not len(self.datasets["train"]):
            raise LmlabError(f"no training conversation of {self.source.name} has a reply token within "
                             f"block_size={self.block_size}; raise model.block_size")  # fmt: skip
        self.datasets["val"] = self.datasets["val"].first(self.max_val_tokens)
        self.splits, self._tokenizer, self.pad_id = splits, tokenizer, pad_id_for_sft(tokenizer)
        rows = self.datasets["train"].rows
        self.padding_fraction = 1 - sum(row_tokens(r) for r in rows) / (len(rows) * self.block_size)
        sizes = ", ".join(f"{len(d)} {name}" for name, d in self.datasets.items())
        log.info("data: %s, %s rows (packing=%s), training padding %.1f %%, vocab %d", self.source.name, sizes,
                 self.packing, 100 * self.padding_fraction, tokenizer.vocab_size)  # fmt: skip

    @property
    def tokenizer(self) -> Tokenizer:
        self.setup()
        return self._tokenizer

    def collate(self, rows: list[Row]) -> dict[str, torch.Tensor]:
        return collate_rows(rows, block_size=self.block_size, pad_id=self.pad_id, packing=self.packing)


def pad_id_for_sft(tokenizer: Tokenizer) -> int:
    """The id padding positions hold (no real token attends to them, none is a target): the pad token, else
    end-of-text, else lmlab's `<|end|>` (a tokenizer with a chat template has one of the first two, or 0)."""
    specials = tokenizer.special_ids() if hasattr(tokenizer, "special_ids") else {}
    for role in ("pad", "eos"):
        if role in specials:
            return specials[role]
    return 0 if has_chat_template(tokenizer) else template_token_ids(tokenizer)[END_OF_TURN]
