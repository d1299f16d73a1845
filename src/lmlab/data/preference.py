"""Preference pairs for direct preference optimisation (`task=dpo`): a prompt, the completion preferred for it
(`chosen`) and one dispreferred (`rejected`).

Each pair is rendered twice, once per completion, either as plain text (`encode(prompt) + encode(completion)`, no
template and no special tokens: what a plain language model such as a BPE GPT pretrained on reviews has seen) or as
a chat (the prompt a user turn, the completion the assistant's reply, through the chat template exactly as SFT
renders it). A batch is SFT's batch of `2B` rows, the `B` chosen renderings first and then the `B` rejected ones in
the same order, so one forward pass scores both (as TRL's concatenated forward does):

- `ids` (2B, T), `targets` (2B, T): `IGNORE_INDEX` wherever the completion is not (prompt tokens, padding);
- `pairs`: B, the number of pairs; `n_tokens`: the positions that hold a real token, which throughput counts.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from lmlab.data.conversation_files import read_records
from lmlab.data.conversation_files import text as string_field
from lmlab.data.conversations import conversation
from lmlab.data.examples import ExampleDataModule
from lmlab.data.labeled import split_indices
from lmlab.data.sft import PackedRows, Row, collate_rows, pad_id_for_sft, row_tokens, with_template_tokens
from lmlab.errors import LmlabError
from lmlab.tokenizers import Tokenizer, TokenizerConfig
from lmlab.tokenizers.templates import TEMPLATE_TOKENS, Rendered, has_chat_template, render, special_token_id

log = logging.getLogger(__name__)

TEMPLATES = ("auto", "chat", "none")
"""How a pair is rendered: `chat` (a user turn and the assistant's reply), `none` (plain text), or `auto` (chat when
the tokenizer has a chat template or lmlab's template tokens, else plain text)."""
FIELDS = ("prompt", "chosen", "rejected")
"""The string fields of every record."""


@dataclass(frozen=True)
class Preference:
    """One preference pair: for `prompt`, `chosen` is the better completion and `rejected` the worse."""

    prompt: str
    chosen: str
    rejected: str


@dataclass
class PreferenceSplits:
    """The pairs of a source, split into train, validation and test."""

    train: list[Preference]
    val: list[Preference]
    test: list[Preference]


def read_preferences(path: str | Path, key: str = "data.source.train") -> list[Preference]:
    """The pairs of one JSON Lines file (or JSON array) of `{"prompt", "chosen", "rejected"}` string records, in file
    order; a bad record is a one-line error naming the file, the line (or item) and the fix."""
    path = Path(path).expanduser()
    records = read_records(path, key)
    if not records:
        raise LmlabError(f"{path} holds no preference pairs; give one {{prompt, chosen, rejected}} object per line")
    return [Preference(*(string_field(where, record, name) for name in FIELDS)) for where, record in records]


@dataclass
class PreferenceFiles:
    """The user's preference files: a training file, optionally validation and test files; a split without its own
    file is held out of the training file (`val_fraction`, `test_fraction`, fixed `seed`)."""

    train: str
    val: str | None = None
    test: str | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    """Seed of the split; keep it fixed so the held-out pairs stay the same across runs and machines."""

    @property
    def name(self) -> str:
        return Path(self.train).stem

    def load(self) -> PreferenceSplits:
        pairs = read_preferences(self.train, "data.source.train")
        val_fraction = 0.0 if self.val else self.val_fraction
        test_fraction = 0.0 if self.test else self.test_fraction
        train, val, test = split_indices(len(pairs), val_fraction, test_fraction, self.seed)
        splits = PreferenceSplits(*([pairs[i] for i in part] for part in (train, val, test)))
        if self.val:
            splits.val = read_preferences(self.val, "data.source.val")
        if self.test:
            splits.test = read_preferences(self.test, "data.source.test")
        if not splits.val:
            raise LmlabError("no validation pairs; give data.source.val or a data.source.val_fraction above 0")
        return splits


def uses_chat(tokenizer: Tokenizer, template: str) -> bool:
    """Whether pairs are rendered as a chat (`template`: auto, chat or none; see `TEMPLATES`)."""
    if template != "auto":
        return template == "chat"
    return has_chat_template(tokenizer) or all(special_token_id(tokenizer, t) is not None for t in TEMPLATE_TOKENS)


def render_completion(tokenizer: Tokenizer, prompt: str, completion: str, chat: bool) -> Rendered:
    """The ids of prompt + completion, the completion's marked trained (in chat, with its end-of-turn token)."""
    if chat:
        return render(tokenizer, conversation(("user", prompt), ("assistant", completion)))
    before, after = tokenizer.encode(prompt), tokenizer.encode(completion)
    return Rendered([*before, *after], [False] * len(before) + [True] * len(after))


def encode_pairs(pairs: list[Preference], tokenizer: Tokenizer, block_size: int, chat: bool, split: str) -> list[Row]:
    """Each pair as a row `[chosen, rejected]`, each rendering cut to `block_size + 1` tokens; a pair is dropped when
    either completion keeps no trained token (nothing to compare)."""
    rows, cut, dropped = [], 0, 0
    for pair in pairs:
        row = []
        for completion in (pair.chosen, pair.rejected):
            rendered = render_completion(tokenizer, pair.prompt, completion, chat)
            kept = Rendered(rendered.ids[: block_size + 1], rendered.trained[: block_size + 1])
            cut += len(kept.ids) < len(rendered.ids)
            row.append(kept)
        if all(any(r.trained[1:]) for r in row):  # token 0 is never a target
            rows.append(row)
        else:
            dropped += 1
    if cut or dropped:
        log.warning(
            "data: %s: %d of %d completions cut to block_size+1=%d tokens, %d pairs dropped (a completion with no "
            "token left); raise model.block_size to keep more", split, cut, 2 * len(pairs), block_size + 1, dropped,
        )  # fmt: skip
    return rows


def collate_pairs(rows: list[Row], block_size: int, pad_id: int) -> dict[str, torch.Tensor | int]:
    """Batch pair rows `[chosen, rejected]` into SFT rows (2B, block_size): the chosen renderings, then the rejected."""
    batch = collate_rows([[c] for c, _ in rows] + [[r] for _, r in rows], block_size, pad_id, packing=False)
    return batch | {"pairs": len(rows)}


class PreferenceDataModule(ExampleDataModule):
    """Serves preference batches (see the module docstring): shuffled (resumably) for training, in order for
    validation and test.

    Args:
        source: where the pairs come from, and their fixed split.
        tokenizer: how to get the tokenizer (a checkpoint's with `task.init_from`, `hf` for a pretrained model;
            char/BPE are trained on the training texts, with lmlab's template tokens added when `template=chat`).
        block_size: input tokens per rendering; longer ones are cut to `block_size + 1` tokens.
        batch_size: training pairs per step (each pair is two rows).
        eval_batch_size: pairs per validation / test batch; defaults to `batch_size`.
        template: `auto`, `chat` or `none` (plain text); see `TEMPLATES`.
        max_train_examples: use only the first training pairs (of the fixed split order); None = all.
        max_val_tokens: evaluate only the leading validation pairs holding this many tokens; None = all.
        num_workers: DataLoader worker processes.
        seed: seed of the training shuffle.
    """

    def __init__(
        self,
        source: PreferenceFiles,
        tokenizer: TokenizerConfig,
        block_size: int,
        batch_size: int,
        eval_batch_size: int | None = None,
        template: str = "auto",
        max_train_examples: int | None = None,
        max_val_tokens: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        if template not in TEMPLATES:
            raise LmlabError(f"data.template={template!r} is unknown; choose one of: {', '.join(TEMPLATES)}")
        tokenizer = with_template_tokens(tokenizer) if template == "chat" else tokenizer
        super().__init__(tokenizer, block_size, batch_size, eval_batch_size, max_val_tokens, num_workers, seed)
        self.source = source
        self.template = template
        self.max_train_examples = max_train_examples
        self.splits: PreferenceSplits | None = None
        self.datasets: dict[str, PackedRows] = {}
        self.chat = False
        """Whether the pairs were rendered as chats (`template`, resolved against the tokenizer)."""
        self._tokenizer: Tokenizer | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        splits = self.source.load()
        if self.max_train_examples is not None:
            splits.train = splits.train[: self.max_train_examples]
        if not splits.train:
            raise LmlabError(f"{self.source.name} has no training pairs; check data.source")
        texts = [t for pair in splits.train for t in dataclasses.astuple(pair)]
        tokenizer = self.tokenizer_config.train(texts)
        self.chat = uses_chat(tokenizer, self.template)
        for name in ("train", "val", "test"):
            rows = encode_pairs(getattr(splits, name), tokenizer, self.block_size, self.chat, name)
            self.datasets[name] = PackedRows(rows)
        if not len(self.datasets["train"]):
            raise LmlabError(f"no training pair of {self.source.name} keeps a completion token within "
                             f"block_size={self.block_size}; raise model.block_size")  # fmt: skip
        self.datasets["val"] = self.datasets["val"].first(self.max_val_tokens)
        self.splits, self._tokenizer, self.pad_id = splits, tokenizer, padding_id(tokenizer, self.chat)
        sizes = ", ".join(f"{len(d)} {name}" for name, d in self.datasets.items())
        tokens = sum(row_tokens(row) for row in self.datasets["train"].rows)
        log.info("data: %s, %s pairs (%s), %d training tokens, vocab %d", self.source.name, sizes,
                 "chat template" if self.chat else "plain text", tokens, tokenizer.vocab_size)  # fmt: skip

    @property
    def tokenizer(self) -> Tokenizer:
        self.setup()
        return self._tokenizer

    def collate(self, rows: list[Row]) -> dict[str, torch.Tensor | int]:
        return collate_pairs(rows, self.block_size, self.pad_id)


def padding_id(tokenizer: Tokenizer, chat: bool) -> int:
    """The id padding holds (never attended to by a real token, never a target): as SFT's in a chat; in plain text
    the pad or end-of-text token, else 0 (a plain tokenizer may have no special token at all)."""
    if chat:
        return pad_id_for_sft(tokenizer)
    specials = tokenizer.special_ids() if hasattr(tokenizer, "special_ids") else {}
    return specials.get("pad", specials.get("eos", 0))
