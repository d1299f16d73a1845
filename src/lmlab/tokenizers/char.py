"""Character-level tokenizer: one id per Unicode character seen in the training text."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmlab.errors import LmlabError
from lmlab.tokenizers.base import register, special_ids_by_role

UNKNOWN = "\ufffd"
"""Characters absent from the training text encode to the Unicode replacement character."""


@register
class CharTokenizer:
    """Maps each character of a fixed alphabet to its index; unseen characters become `UNKNOWN`.

    Special tokens (e.g. `<mask>`) get the ids after the alphabet, in the order given. `encode` never produces them,
    `decode` writes their text, and they count 0 bytes.
    """

    kind = "char"

    def __init__(self, chars: Iterable[str], special_tokens: Sequence[str] = ()) -> None:
        alphabet = sorted(set(chars) | {UNKNOWN})
        if any(len(c) != 1 for c in alphabet):
            raise ValueError("a character tokenizer's alphabet holds single characters only")
        self.chars: list[str] = alphabet
        self.special_tokens: list[str] = _check_special_tokens(special_tokens)
        self._itos = alphabet + self.special_tokens
        self._codepoints = np.array([ord(c) for c in alphabet], dtype=np.uint32)  # sorted
        self._unknown_id = alphabet.index(UNKNOWN)

    @property
    def vocab_size(self) -> int:
        return len(self._itos)

    def encode_array(self, text: str) -> np.ndarray:
        """Vectorised encoding: (len(text),) int64 ids."""
        _, ids, known = self._lookup(text)
        return np.where(known, ids, self._unknown_id).astype(np.int64)

    def unknown_characters(self, text: str) -> dict[str, int]:
        """The characters of `text` outside the alphabet (encoded as `UNKNOWN`) and how often each occurs, in the
        order they first appear."""
        codepoints, _, known = self._lookup(text)
        values, first, counts = np.unique(codepoints[~known], return_index=True, return_counts=True)
        return {chr(values[i]): int(counts[i]) for i in np.argsort(first)}

    def _lookup(self, text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Code points of `text` (N,), the alphabet index each would have (N,), and whether it is there (N,)."""
        codepoints = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = np.minimum(np.searchsorted(self._codepoints, codepoints), len(self.chars) - 1)
        return codepoints, ids, self._codepoints[ids] == codepoints

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self._itos[i] for i in ids)

    def token_bytes(self) -> list[int]:
        return [len(c.encode("utf-8")) for c in self.chars] + [0] * len(self.special_tokens)

    def token_texts(self) -> dict[int, bytes]:
        """The text (as UTF-8 bytes) of each character id; `UNKNOWN` and special tokens are left out (constrained
        decoding matches patterns against these)."""
        return {i: c.encode("utf-8") for i, c in enumerate(self.chars) if i != self._unknown_id}

    def special_ids(self) -> dict[str, int]:
        ids = special_ids_by_role((t, len(self.chars) + i) for i, t in enumerate(self.special_tokens))
        return {**ids, "unk": self._unknown_id}  # encode maps unseen characters to UNKNOWN

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind, "chars": self.chars}
        if self.special_tokens:
            data["special_tokens"] = self.special_tokens
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CharTokenizer:
        return cls(data["chars"], data.get("special_tokens", ()))


def list_characters(chars: Iterable[str], limit: int = 10) -> str:
    """Characters for a one-line message: `'é', '中', '\\n'`, the first `limit` and how many more."""
    chars = list(chars)
    shown = ", ".join(repr(c) for c in chars[:limit])
    return shown + (f" and {len(chars) - limit} more" if len(chars) > limit else "")


def _check_special_tokens(tokens: Sequence[str]) -> list[str]:
    tokens = [str(t) for t in tokens]
    if any(not t for t in tokens) or len(set(tokens)) != len(tokens):
        raise LmlabError(
            f"tokenizer.special_tokens={tokens} must be distinct non-empty strings; "
            "give e.g. tokenizer.special_tokens='[<mask>,<pad>]'"
        )
    return tokens


@dataclass
class CharTokenizerConfig:
    """Build a character vocabulary from the training split."""

    special_tokens: list[str] = field(default_factory=list)
    """Extra tokens with their own ids after the characters, e.g. `["<mask>"]` for masked LM."""

    def __post_init__(self) -> None:
        self.special_tokens = _check_special_tokens(self.special_tokens)  # also turns Hydra's ListConfig into a list

    def train(self, texts: Iterable[str]) -> CharTokenizer:
        seen: set[str] = set()
        for text in texts:
            seen.update(text)
        return CharTokenizer(seen, self.special_tokens)
