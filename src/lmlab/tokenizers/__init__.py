"""Tokenizers: train from text, encode/decode, save with runs and checkpoints."""

from __future__ import annotations

from lmlab.tokenizers.base import (
    Tokenizer,
    TokenizerConfig,
    load_tokenizer,
    save_tokenizer,
    tokenizer_from_dict,
)
from lmlab.tokenizers.char import CharTokenizer, CharTokenizerConfig

__all__ = [
    "CharTokenizer",
    "CharTokenizerConfig",
    "Tokenizer",
    "TokenizerConfig",
    "load_tokenizer",
    "save_tokenizer",
    "tokenizer_from_dict",
]
