"""Character-level tokenizer: one id per Unicode character seen in the training text."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmlab.tokenizers.base import register

UNKNOWN = "\ufffd"
"""Characters absent from the training text encode to the Unicode replacement character."""


@register
class CharTokenizer:
    """Maps each character of a fixed alphabet to its index; unseen characters become `UNKNOWN`."""

    kind = "char"

    def __init__(self, chars: Iterable[str]) -> None:
        alphabet = sorted(set(chars) | {UNKNOWN})
        if any(len(c) != 1 for c in alphabet):
            raise ValueError("a character tokenizer's alphabet holds single characters only")
        self.chars: list[str] = alphabet
        self._codepoints = np.array([ord(c) for c in alphabet], dtype=np.uint32)  # sorted
        self._unknown_id = alphabet.index(UNKNOWN)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode_array(self, text: str) -> np.ndarray:
        """Vectorised encoding: (len(text),) int64 ids."""
        codepoints = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = np.searchsorted(self._codepoints, codepoints)
        ids = np.minimum(ids, len(self.chars) - 1)
        known = self._codepoints[ids] == codepoints
        return np.where(known, ids, self._unknown_id).astype(np.int64)

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def token_bytes(self) -> list[int]:
        return [len(c.encode("utf-8")) for c in self.chars]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "chars": self.chars}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CharTokenizer:
        return cls(data["chars"])


@dataclass
class CharTokenizerConfig:
    """Build a character vocabulary from the training split."""

    def train(self, texts: Iterable[str]) -> CharTokenizer:
        seen: set[str] = set()
        for text in texts:
            seen.update(text)
        return CharTokenizer(seen)
