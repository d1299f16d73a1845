"""Byte-level BPE (GPT-2 style) trained with the Hugging Face `tokenizers` library: any UTF-8 text round-trips."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from lmlab.errors import LmlabError
from lmlab.tokenizers.base import register
from lmlab.tokenizers.hf import HFTokenizer


@register
class BPETokenizer(HFTokenizer):
    """A byte-level BPE trained by `BPETokenizerConfig`; behaves as `HFTokenizer` (saved as its tokenizer.json).

    Ids 0.. are the special tokens in the order configured, then the 256 single bytes, then the merges.
    `token_bytes` is the exact number of bytes each token decodes to (0 for special tokens).
    """

    kind = "bpe"


@dataclass
class BPETokenizerConfig:
    """Train a byte-level BPE on the training split: 256 byte tokens, special tokens, then merges."""

    vocab_size: int = 1024
    """Total ids: 256 bytes + special tokens + merges (fewer if the text runs out of pairs)."""
    min_frequency: int = 2
    """A pair must occur this often to be merged."""
    special_tokens: list[str] = field(default_factory=lambda: ["<|endoftext|>", "<mask>", "<pad>"])
    """Tokens with reserved ids, never produced by `encode`; roles come from their names (see `special_role`)."""

    def __post_init__(self) -> None:
        self.special_tokens = [str(t) for t in self.special_tokens]  # Hydra passes a ListConfig
        minimum = 256 + len(self.special_tokens)
        if self.vocab_size < minimum:
            raise LmlabError(
                f"tokenizer.vocab_size={self.vocab_size} is too small for a byte-level BPE: it needs at least "
                f"{minimum} (256 bytes + {len(self.special_tokens)} special tokens); set e.g. tokenizer.vocab_size=1024"
            )
        if len(set(self.special_tokens)) != len(self.special_tokens) or not all(self.special_tokens):
            raise LmlabError(f"tokenizer.special_tokens={self.special_tokens} must be distinct non-empty strings")

    def train(self, texts: Iterable[str]) -> BPETokenizer:
        tokenizer = _HFTokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=self.vocab_size,
            min_frequency=self.min_frequency,
            special_tokens=self.special_tokens,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(texts, trainer=trainer)
        return BPETokenizer(tokenizer.to_str())
