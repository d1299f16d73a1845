"""Token cache: tokenized train/val splits as memory-mapped arrays, keyed by a hash of text and tokenizer.

Layout of one entry, `<cache_dir>/tokens/<key>/`: `train.bin`, `val.bin` (raw uint16/uint32 ids),
`tokenizer.json` and `meta.json`. An entry is built in a temporary folder and renamed into place, so a crash never
leaves a half-written entry that a later run would trust.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmlab.data.corpora import Corpus
from lmlab.errors import LmlabError
from lmlab.terminal import CONTROL_CHARACTERS, visible
from lmlab.tokenizers import Tokenizer, TokenizerConfig, load_tokenizer, save_tokenizer

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # 2: built by streaming the corpus


@dataclass
class TokenSplits:
    """A loaded cache entry: memory-mapped ids of each split plus the tokenizer that made them."""

    train: np.ndarray
    val: np.ndarray
    tokenizer: Tokenizer
    meta: dict
    path: Path


def split_point(pieces: Iterable[str], total_chars: int, val_fraction: float) -> int:
    """Where validation starts: after the first newline at or past `(1 - val_fraction)` of the characters (or at that
    point when no newline follows). Streams `pieces`, stopping as soon as the point is known."""
    if not 0.0 < val_fraction < 1.0:
        raise LmlabError(f"data.val_fraction={val_fraction} must lie strictly between 0 and 1, e.g. 0.1")
    cut = int(total_chars * (1.0 - val_fraction))
    offset = 0
    for piece in pieces:
        newline = piece.find("\n", max(cut - offset, 0))
        if newline != -1:
            return offset + newline + 1
        offset += len(piece)
    return cut


def char_range(pieces: Iterable[str], start: int, stop: int | None = None) -> Iterator[str]:
    """The characters `[start, stop)` of the concatenated `pieces`, streamed."""
    offset = 0
    for piece in pieces:
        end = offset + len(piece)
        if stop is not None and offset >= stop:
            return
        if end > start:
            yield piece[max(start - offset, 0) : None if stop is None else stop - offset]
        offset = end


def split_text(text: str, val_fraction: float) -> tuple[str, str]:
    """Deterministic split: the last `val_fraction` of the characters, starting at a line boundary, is val."""
    cut = split_point([text], len(text), val_fraction)
    return text[:cut], text[cut:]


@dataclass
class ControlCharacters:
    """Control characters met while streaming a corpus (`lmlab.terminal.CONTROL_CHARACTERS`): how many, and the
    first one with its line number and the text around it, for a warning a user can act on."""

    count: int = 0
    line: int = 1
    """Line of the first one (1-based, counted over the whole corpus); the line count so far until one is met."""
    example: str = ""
    """The first one's line, at most 20 characters either side of it."""

    def add(self, piece: str) -> None:
        """Count the control characters of the next piece of the corpus."""
        found = len(CONTROL_CHARACTERS.findall(piece))
        if self.count == 0:
            first = CONTROL_CHARACTERS.search(piece)
            if first is None:
                self.line += piece.count("\n")
                return
            self.line += piece.count("\n", 0, first.start())
            start = max(piece.rfind("\n", 0, first.start()) + 1, first.start() - 20)
            end = piece.find("\n", first.end())
            self.example = piece[start : min(first.end() + 20, len(piece) if end == -1 else end)]
        self.count += found

    def warn(self, corpus: str) -> None:
        """Log a warning when there were any: they become tokens to learn, and raw terminal commands in print."""
        if self.count:
            log.warning(
                "corpus %s has %s control characters, e.g. on line %d: '%s'; the model learns them as text (samples "
                "print them escaped); if they are noise, remove them from the source (ANSI colour codes: "
                "sed -i 's/\\x1b\\[[0-9;]*m//g' FILE)",
                corpus, f"{self.count:,}", self.line, visible(self.example),
            )  # fmt: skip


def dtype_for(vocab_size: int) -> np.dtype:
    """The smallest unsigned type that holds every id."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def cache_key(corpus: Corpus, tokenizer_config: TokenizerConfig, val_fraction: float) -> str:
    """Hash of everything the cached ids depend on.

    A tokenizer config with a `fingerprint()` method (e.g. one that loads a tokenizer file) is keyed by it, so a
    changed file is noticed; other configs are keyed by their dataclass fields.
    """
    fingerprint = getattr(tokenizer_config, "fingerprint", None)
    if callable(fingerprint):
        fields = fingerprint()
    else:
        fields = dataclasses.asdict(tokenizer_config) if dataclasses.is_dataclass(tokenizer_config) else {}
    description = {
        "format": CACHE_FORMAT,
        "corpus": corpus.fingerprint(),
        "tokenizer": type(tokenizer_config).__qualname__,
        "tokenizer_fields": fields,
        "val_fraction": val_fraction,
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:20]


def line_chunks(pieces: Iterable[str], size: int = 1 << 18) -> Iterator[str]:
    """Re-cut streamed text into chunks that end at the first line break after `size` characters (the last chunk may
    not end in one): whole lines for tokenizers, and about `size` characters in memory however big the pieces."""
    rest = ""
    for piece in pieces:
        rest += piece
        start = 0
        while (newline := rest.find("\n", start + size - 1)) != -1:
            yield rest[start : newline + 1]
            start = newline + 1
        rest = rest[start:]
    if rest:
        yield rest


def _encode_to_file(tokenizer: Tokenizer, pieces: Iterable[str], path: Path) -> tuple[int, int]:
    """Encode streamed text line-aligned chunk by chunk into a raw id file; returns (tokens, UTF-8 bytes)."""
    dtype = dtype_for(tokenizer.vocab_size)
    encode = getattr(tokenizer, "encode_array", tokenizer.encode)
    tokens = utf8_bytes = 0
    with path.open("wb") as out:
        for chunk in line_chunks(pieces):
            ids = np.asarray(encode(chunk), dtype=dtype)
            ids.tofile(out)
            tokens += ids.size
            utf8_bytes += len(chunk.encode("utf-8"))
    return tokens, utf8_bytes


def build_token_cache(
    corpus: Corpus, tokenizer_config: TokenizerConfig, val_fraction: float, cache_dir: str | Path
) -> Path:
    """Return the cache entry for this corpus and tokenizer, building it only if it does not exist yet."""
    key = cache_key(corpus, tokenizer_config, val_fraction)
    root = Path(cache_dir).expanduser() / "tokens"
    entry = root / key
    if (entry / "meta.json").is_file():
        log.info("token cache hit: %s", entry)
        return entry
    log.info("building token cache for %s in %s", corpus.name, entry)
    # Streamed in passes over the corpus (length, split point, tokenizer training, encoding), never held whole.
    total, controls = 0, ControlCharacters()
    for piece in corpus.documents():
        total += len(piece)
        controls.add(piece)
    controls.warn(corpus.name)
    cut = split_point(corpus.documents(), total, val_fraction)
    tokenizer = tokenizer_config.train(line_chunks(char_range(corpus.documents(), 0, cut)))
    tmp = root / f".tmp-{key}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        train = _encode_to_file(tokenizer, char_range(corpus.documents(), 0, cut), tmp / "train.bin")
        val = _encode_to_file(tokenizer, char_range(corpus.documents(), cut), tmp / "val.bin")
        meta = {
            "format": CACHE_FORMAT,
            "corpus": corpus.name,
            "vocab_size": tokenizer.vocab_size,
            "dtype": dtype_for(tokenizer.vocab_size).name,
            "train_tokens": train[0],
            "val_tokens": val[0],
            "train_bytes": train[1],
            "val_bytes": val[1],
        }
        save_tokenizer(tokenizer, tmp / "tokenizer.json")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        try:
            os.rename(tmp, entry)
        except OSError:
            if not (entry / "meta.json").is_file():  # not a concurrent builder that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry


def load_token_cache(entry: str | Path) -> TokenSplits:
    """Memory-map a cache entry written by `build_token_cache`."""
    entry = Path(entry)
    meta = json.loads((entry / "meta.json").read_text())
    dtype = np.dtype(meta["dtype"])
    splits = {}
    for split in ("train", "val"):
        path = entry / f"{split}.bin"
        n = meta[f"{split}_tokens"]
        splits[split] = np.memmap(path, dtype=dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype)
    return TokenSplits(splits["train"], splits["val"], load_tokenizer(entry / "tokenizer.json"), meta, entry)
