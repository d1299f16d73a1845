"""The contract between tokenizers and the rest of lmlab: ids, `vocab_size`, bytes per token, save/load."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from lmlab.errors import LmlabError


@runtime_checkable
class Tokenizer(Protocol):
    """A trained tokenizer: text <-> token ids."""

    kind: str

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def token_bytes(self) -> list[int]:
        """UTF-8 byte length of each token id, so losses convert to bits per byte."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description from which `tokenizer_from_dict` rebuilds it."""
        ...

    def special_ids(self) -> dict[str, int]:
        """Ids of the special tokens that exist, by role: "mask", "pad", "bos", "eos", "unk", "cls", "sep"."""
        ...


class TokenizerConfig(Protocol):
    """How to train a tokenizer from text; its fields key the token cache."""

    def train(self, texts: Iterable[str]) -> Tokenizer: ...


SPECIAL_ROLES = ("mask", "pad", "bos", "eos", "unk", "cls", "sep")
"""The role names `Tokenizer.special_ids` may use."""

_ROLE_ALIASES = {
    "mask": "mask",
    "pad": "pad",
    "bos": "bos",
    "s": "bos",
    "startoftext": "bos",
    "eos": "eos",
    "/s": "eos",
    "endoftext": "eos",
    "unk": "unk",
    "cls": "cls",
    "sep": "sep",
}


def special_role(token: str) -> str | None:
    """The role of a special token's text, or None: `<mask>`/`[MASK]` -> "mask", `<|endoftext|>`/`</s>` -> "eos".

    The name inside `<|...|>`, `<...>` or `[...]` is looked up case-insensitively; `<s>` is "bos" and GPT-2's
    `<|endoftext|>` is "eos" (the document separator of a causal LM).
    """
    if token.startswith("<|") and token.endswith("|>") and len(token) > 4:
        name = token[2:-2]
    elif (token.startswith("<") and token.endswith(">")) or (token.startswith("[") and token.endswith("]")):
        name = token[1:-1]
    else:
        return None
    return _ROLE_ALIASES.get(name.strip().lower())


def special_ids_by_role(tokens: Iterable[tuple[str, int]]) -> dict[str, int]:
    """Map (token text, id) pairs to `{role: id}`; the first token of each role wins, unrecognised ones are left out."""
    ids: dict[str, int] = {}
    for token, token_id in tokens:
        role = special_role(token)
        if role is not None and role not in ids:
            ids[role] = token_id
    return ids


_REGISTRY: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: make a tokenizer class loadable by its `kind`."""
    _REGISTRY[cls.kind] = cls
    return cls


def tokenizer_from_dict(data: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer saved with `Tokenizer.to_dict`."""
    kind = data.get("kind")
    if kind not in _REGISTRY:
        raise LmlabError(
            f"unknown tokenizer kind {kind!r} in saved tokenizer; known kinds: {', '.join(sorted(_REGISTRY))}"
        )
    return _REGISTRY[kind].from_dict(data)


def save_tokenizer(tokenizer: Tokenizer, path: str | Path) -> Path:
    """Write the tokenizer as JSON (atomically) and return the path."""
    from lmlab.io import atomic_write_text

    path = Path(path)
    atomic_write_text(path, json.dumps(tokenizer.to_dict(), ensure_ascii=False))
    return path


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Read a tokenizer written by `save_tokenizer`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise LmlabError(f"cannot read tokenizer file {path}: {err}; point to a tokenizer.json lmlab wrote") from err
    return tokenizer_from_dict(data)
