"""Tokenizers: train from text, encode/decode, save with runs and checkpoints."""

from __future__ import annotations

from lmlab.tokenizers.base import (
    SPECIAL_ROLES,
    Tokenizer,
    TokenizerConfig,
    load_tokenizer,
    save_tokenizer,
    special_role,
    tokenizer_from_dict,
)
from lmlab.tokenizers.bpe import BPETokenizer, BPETokenizerConfig
from lmlab.tokenizers.char import CharTokenizer, CharTokenizerConfig
from lmlab.tokenizers.fixed import FixedTokenizerConfig
from lmlab.tokenizers.hf import HFTokenizer, HFTokenizerConfig

__all__ = [
    "SPECIAL_ROLES",
    "BPETokenizer",
    "BPETokenizerConfig",
    "CharTokenizer",
    "CharTokenizerConfig",
    "FixedTokenizerConfig",
    "HFTokenizer",
    "HFTokenizerConfig",
    "Tokenizer",
    "TokenizerConfig",
    "load_tokenizer",
    "save_tokenizer",
    "special_role",
    "tokenizer_from_dict",
]
