"""Pretrained Hugging Face tokenizers (a `tokenizer.json`), wrapped in lmlab's tokenizer contract."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer as _HFTokenizer

from lmlab.errors import LmlabError
from lmlab.tokenizers.base import register, special_ids_by_role
from lmlab.tokenizers.chat import TEMPLATE_TOKENS, chat_token_ids, read_chat_template

_BYTE_FALLBACK = re.compile(r"<0x[0-9A-Fa-f]{2}>")
_PRETOKEN_BOUNDARY = re.compile(r"\n(?=\w)")
"""A newline followed by a word character always ends a GPT-2 pre-token, so text may be cut after it."""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, the alphabet of byte-level BPE tokens."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


_UNICODE_TO_BYTE = {c: b for b, c in bytes_to_unicode().items()}


@register
class HFTokenizer:
    """A `tokenizers.Tokenizer` behind lmlab's contract; saved as its full JSON, so checkpoints are self-contained.

    `encode` adds no special tokens, and special tokens written in the text are encoded as plain text, so ids of
    special tokens come only from `special_ids`. Padding and truncation stored in the JSON are switched off.
    `token_bytes`: 0 for special tokens; the decoded byte length for byte-level tokenizers (GPT-2 style); for
    WordPiece (BERT) the UTF-8 length of the token without its `##` prefix, and for Metaspace (SentencePiece) the
    length with `▁` read as a space. The latter two are approximations: a WordPiece tokenizer drops the spaces between
    words and may lowercase or strip accents, so bits per byte from it are only roughly comparable.
    `chat_template`: the Jinja chat template of a pretrained (instruct) tokenizer, or None; `chat_tokens` names the
    special tokens it uses ({"eos_token": "<|im_end|>", ...}). Both are saved with the tokenizer.
    """

    kind = "hf"

    def __init__(
        self, tokenizer_json: str, chat_template: str | None = None, chat_tokens: dict[str, str] | None = None
    ) -> None:
        self.tokenizer_json = tokenizer_json
        self.chat_template = chat_template or None
        self.chat_tokens = dict(chat_tokens or {}) if self.chat_template else {}
        self.tokenizer = _HFTokenizer.from_str(tokenizer_json)
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.tokenizer.encode_special_tokens = True

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @cached_property
    def _vocab_size(self) -> int:
        return max(self.tokenizer.get_vocab(with_added_tokens=True).values(), default=-1) + 1

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_array(self, text: str, piece_chars: int = 1 << 14) -> np.ndarray:
        """Same ids as `encode`, as an int64 array; long texts of byte-level tokenizers are encoded in parallel."""
        if not self._splittable or len(text) <= piece_chars:
            return np.asarray(self.encode(text), dtype=np.int64)
        pieces = list(_pieces(text, piece_chars))
        encodings = self.tokenizer.encode_batch(pieces, add_special_tokens=False)
        return np.concatenate([np.asarray(e.ids, dtype=np.int64) for e in encodings])

    @cached_property
    def _splittable(self) -> bool:
        """True when cutting text at `_PRETOKEN_BOUNDARY` cannot change the ids: plain GPT-2 style byte-level BPE."""
        spec = json.loads(self.tokenizer_json)
        pre = spec.get("pre_tokenizer") or {}
        return (
            spec.get("normalizer") is None
            and pre.get("type") == "ByteLevel"
            and pre.get("use_regex", True)
            and not pre.get("add_prefix_space", False)
        )

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_bytes(self) -> list[int]:
        return list(self._token_bytes)

    @cached_property
    def _token_bytes(self) -> list[int]:
        lengths = [0] * self.vocab_size
        for token_id, text in self.token_texts().items():
            lengths[token_id] = len(text)
        return lengths

    def token_texts(self) -> dict[int, bytes]:
        """The text (as bytes) each ordinary token id stands for; special tokens are left out. Constrained decoding
        matches patterns against these."""
        to_bytes = _token_text(json.loads(self.tokenizer_json))
        texts = {i: to_bytes(token) for token, i in self.tokenizer.get_vocab(with_added_tokens=False).items()}
        for token_id, added in self.tokenizer.get_added_tokens_decoder().items():
            if added.special:
                texts.pop(token_id, None)
            else:
                texts[token_id] = added.content.encode("utf-8")
        return texts

    def special_ids(self) -> dict[str, int]:
        added = sorted(self.tokenizer.get_added_tokens_decoder().items())
        return special_ids_by_role((token.content, token_id) for token_id, token in added if token.special)

    def apply_chat_template(
        self,
        messages: list[dict[str, str]],
        add_generation_prompt: bool = True,
        tokenize: bool = True,
        return_dict: bool = False,
    ) -> list[int]:
        """Token ids of the conversation in the chat template (Transformers' signature; ids only)."""
        if not self.chat_template or not tokenize or return_dict:
            raise LmlabError("apply_chat_template needs a tokenizer with a chat_template and returns token ids only")
        return chat_token_ids(
            self.tokenizer_json, self.chat_template, self.chat_tokens, messages, add_generation_prompt
        )

    @property
    def end_of_turn(self) -> str | None:
        """The text that ends a reply in the chat template (its `eos_token`), or None."""
        return self.chat_tokens.get("eos_token")

    def to_dict(self) -> dict[str, Any]:
        data = {"kind": self.kind, "tokenizer_json": self.tokenizer_json}
        if self.chat_template:
            data |= {"chat_template": self.chat_template, "chat_tokens": self.chat_tokens}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HFTokenizer:
        return cls(data["tokenizer_json"], data.get("chat_template"), data.get("chat_tokens"))


def _component_types(component: dict[str, Any] | None) -> set[str]:
    """The `type`s of a tokenizer.json component, looking inside `Sequence`s."""
    if not component:
        return set()
    types = {component.get("type", "")}
    for child in component.get("decoders", []) + component.get("pretokenizers", []):
        types |= _component_types(child)
    return types


def _token_text(spec: dict[str, Any]) -> Callable[[str], bytes]:
    """The bytes of text one vocabulary entry stands for, chosen from the decoder the tokenizer uses."""
    decoders = _component_types(spec.get("decoder"))
    if "ByteLevel" in decoders:
        return _byte_level_bytes
    if "WordPiece" in decoders:
        prefix = spec.get("model", {}).get("continuing_subword_prefix") or "##"
        return lambda token: token.removeprefix(prefix).encode("utf-8")
    if "Metaspace" in decoders or "ByteFallback" in decoders:
        return _sentencepiece_bytes
    return lambda token: token.encode("utf-8")


def _pieces(text: str, size: int) -> Iterator[str]:
    """Cut `text` into pieces of about `size` characters, each cut at a `_PRETOKEN_BOUNDARY`."""
    start = 0
    while start < len(text):
        match = _PRETOKEN_BOUNDARY.search(text, start + size)
        end = match.end() if match else len(text)
        yield text[start:end]
        start = end


def _byte_level_bytes(token: str) -> bytes:
    return b"".join(bytes([_UNICODE_TO_BYTE[c]]) if c in _UNICODE_TO_BYTE else c.encode("utf-8") for c in token)


def _sentencepiece_bytes(token: str) -> bytes:
    """`▁` read as a space; a byte-fallback token `<0x41>` is its one byte."""
    if _BYTE_FALLBACK.fullmatch(token):
        return bytes([int(token[3:5], 16)])
    return token.replace("▁", " ").encode("utf-8")


def _looks_like_path(name: str) -> bool:
    """Hub ids are `name` or `org/name`; anything else (absolute, `./x`, `~/x`, `a/b/c`, `x.json`) is a local path."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or name.endswith(".json") or "\\" in name


@dataclass
class HFTokenizerConfig:
    """Load a pretrained tokenizer; training texts are ignored.

    `name_or_path` is a folder holding `tokenizer.json`, the path of such a file, a `.gguf` model file (its
    tokenizer is converted by transformers), or (only when no such path exists) a Hugging Face hub id such as
    `bert-base-uncased`, fetched with `tokenizers.Tokenizer.from_pretrained`.
    """

    name_or_path: str
    """A folder with tokenizer.json, a tokenizer.json file, a .gguf file, or a hub id."""
    trust_remote_code: bool = False
    """Let Transformers run code shipped with a model (only a .gguf file goes through Transformers here)."""

    def local_file(self) -> Path | None:
        """The tokenizer.json this config names on disk, or None when it names a hub id."""
        path = Path(str(self.name_or_path)).expanduser()
        if path.is_dir():
            if not (path / "tokenizer.json").is_file():
                raise LmlabError(
                    f"folder {path} has no tokenizer.json; point tokenizer.name_or_path at a folder or file holding one"
                )
            return path / "tokenizer.json"
        if path.is_file():
            return path
        if _looks_like_path(str(self.name_or_path)):
            raise LmlabError(f"tokenizer {path} does not exist; check tokenizer.name_or_path")
        return None

    def load(self) -> HFTokenizer:
        """Read the tokenizer from disk, or from the hub when `name_or_path` is not a local path."""
        path = self.local_file()
        if path is not None and path.suffix == ".gguf":
            return _gguf_tokenizer(path, self.trust_remote_code)
        if path is not None:
            template, tokens = read_chat_template(path) if path.name == "tokenizer.json" else (None, {})
            try:
                return HFTokenizer(path.read_text(encoding="utf-8"), template, tokens)
            except Exception as err:
                message = f"cannot read tokenizer {path}: {_one_line(err)}; give a valid tokenizer.json"
                raise LmlabError(message) from err
        try:
            tokenizer = _HFTokenizer.from_pretrained(str(self.name_or_path))
        except Exception as err:
            raise LmlabError(
                f"tokenizer folder {self.name_or_path!r} was not found and loading it from the Hugging Face hub "
                f"failed ({_one_line(err)}); give a local folder or tokenizer.json in tokenizer.name_or_path"
            ) from err
        return HFTokenizer(tokenizer.to_str())

    def fingerprint(self) -> str:
        """Hash of the tokenizer's content, so the token cache notices a changed tokenizer.json."""
        path = self.local_file()
        if path is not None and path.suffix == ".gguf":
            return _gguf_fingerprint(path)
        content = path.read_bytes() if path is not None else self.load().tokenizer_json.encode("utf-8")
        template, tokens = (
            read_chat_template(path) if path is not None and path.name == "tokenizer.json" else (None, {})
        )
        if template:  # the cached tokenizer carries the template
            content += json.dumps([template, tokens], sort_keys=True).encode("utf-8")
        return "hf-" + hashlib.sha256(content).hexdigest()

    def train(self, texts: Iterable[str]) -> HFTokenizer:
        return self.load()


def _gguf_tokenizer(path: Path, trust_remote_code: bool = False) -> HFTokenizer:
    """The tokenizer stored in a GGUF model file, converted to tokenizer.json form by transformers."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(path.parent), gguf_file=path.name, local_files_only=True, trust_remote_code=trust_remote_code
        )
    except Exception as err:
        raise LmlabError(f"cannot read the tokenizer of {path}: {_one_line(err)}; give a GGUF model file") from err
    chat_tokens = {name: str(getattr(tokenizer, name)) for name in TEMPLATE_TOKENS if getattr(tokenizer, name, None)}
    template = tokenizer.chat_template
    template = template.get("default") if isinstance(template, dict) else template  # named templates
    return HFTokenizer(tokenizer.backend_tokenizer.to_str(), template, chat_tokens)


def _gguf_fingerprint(path: Path) -> str:
    """Hash of a GGUF file and of the transformers version that converts its tokenizer."""
    from importlib.metadata import version

    digest = hashlib.sha256(version("transformers").encode() + b" chat_template")  # cached tokenizers carry it
    with path.open("rb") as file:
        while chunk := file.read(1 << 24):
            digest.update(chunk)
    return "gguf-" + digest.hexdigest()


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300]
