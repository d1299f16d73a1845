"""The Bible in English and Spanish, verse by verse, as translation conversations (offline, public domain).

The texts are SWORD modules that Debian packages: the King James Version (`sword-text-kjv`, module `engKJV2006eb`)
and the Reina-Valera 1909 (`sword-text-sparv`, module `spaRV1909eb`). Both follow the KJV versification, so the
same (book, chapter, verse) is the same verse in both: 31,102 verses, of which 31,084 have text on both sides.
They are read with `pysword`, imported only when a source loads.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmlab.data.conversations import Conversation, ConversationSplits, conversation
from lmlab.errors import LmlabError

PYSWORD = "pysword>=0.2.8,<0.3"
"""The pysword releases this reader is written against (it reaches one private method, see `open_bible`)."""


@dataclass(frozen=True)
class BibleText:
    """One translation: the language's name (for prompts), its SWORD module and the Debian package shipping it."""

    language: str
    module: str
    package: str


BIBLES = {
    "en": BibleText("English", "engKJV2006eb", "sword-text-kjv"),
    "es": BibleText("Spanish", "spaRV1909eb", "sword-text-sparv"),
}
"""The language codes `BibleParallel` accepts."""

APT_INSTALL = f"apt-get install -y {' '.join(b.package for b in BIBLES.values())}"

VAL_BOOKS = ("Daniel", "Galatians")
"""Held out for validation: 357 + 149 = 506 verses (1.6 %), narrative and prophecy (OT) and a letter (NT). No verse
of them recurs word for word in another book (Joshua and Judges share verses, Ezra and Nehemiah, the Gospels ...)."""
TEST_BOOKS = ("Esther", "Hebrews")
"""Held out for testing: 167 + 303 = 470 verses (1.5 %), narrative (OT) and a letter (NT), no verse shared either."""

# The KJV module leaves 27 USFM `\nd` (name of God) markers in the text that `clean=True` does not remove.
USFM_MARKER = re.compile(r"\\[a-z]+\*?")


@dataclass
class BibleParallel:
    """Verse-aligned Bible translation pairs: the user gives a verse in `source` (inside `prompt`), the assistant
    answers with the same verse in `target`.

    Whole books are held out for validation and test, so no verse of them (nor its neighbours) is trained on; every
    other book trains. Pairs come in Bible order; a verse empty on either side is skipped.
    """

    source: str = "en"
    """Language of the prompt's verse: `en` (King James Version) or `es` (Reina-Valera 1909)."""
    target: str = "es"
    """Language of the reply."""
    sword_dir: str = "/usr/share/sword"
    """The SWORD library holding `mods.d/` (where the Debian packages install the modules)."""
    val_books: list[str] | None = None
    """Books held out for validation (names or abbreviations, e.g. `Ruth`, `Gal`); None: `VAL_BOOKS`."""
    test_books: list[str] | None = None
    """Books held out for testing; None: `TEST_BOOKS`; `[]`: no test split."""
    max_pairs: int | None = None
    """At most this many pairs per split, the first in Bible order (quick runs read fewer books); None: all."""
    prompt: str = "Translate {source_name} to {target_name}:\n{text}"
    """The user's turn: `{text}` is the source verse, `{source_name}`/`{target_name}` the languages' names."""
    val_fraction: float | None = None
    """Not used: the split is by book. (Every SFT source config gets this key; a value here is refused.)"""
    test_fraction: float | None = None
    """Not used, as `val_fraction`."""
    seed: int | None = None
    """Not used: the split by book is fixed without a seed."""

    def __post_init__(self) -> None:
        self.source_text = bible_text(self.source, "data.source.source")
        self.target_text = bible_text(self.target, "data.source.target")
        if self.source == self.target:
            raise LmlabError(f"data.source.source and data.source.target are both {self.source!r}; make them differ")
        for key in ("val_fraction", "test_fraction", "seed"):
            if getattr(self, key) is not None:
                raise LmlabError(f"BibleParallel holds out whole books, so data.source.{key} must stay null; "
                                 "choose the books with data.source.val_books and data.source.test_books")  # fmt: skip
        if self.max_pairs is not None and self.max_pairs < 1:
            raise LmlabError(f"data.source.max_pairs={self.max_pairs} must be at least 1 (or null for all pairs)")
        self.user_turn("")  # a bad prompt fails here, before any reading

    @property
    def name(self) -> str:
        return f"bible_{self.source}_{self.target}"

    def user_turn(self, verse: str) -> str:
        """The prompt around one source verse."""
        if "{text}" not in self.prompt:
            raise LmlabError(f"data.source.prompt={self.prompt!r} has no {{text}}; put {{text}} where the verse goes")
        names = {"source_name": self.source_text.language, "target_name": self.target_text.language}
        try:
            return self.prompt.format(text=verse, **names)
        except (KeyError, IndexError, ValueError) as err:
            raise LmlabError(f"data.source.prompt={self.prompt!r} cannot be filled ({err!r}); use only {{text}}, "
                             "{source_name} and {target_name}, and double literal braces: {{ }}") from err  # fmt: skip

    def load(self) -> ConversationSplits:
        books = bible_books(self.sword_dir, self.source_text.module)
        val = resolve_books(self.val_books, VAL_BOOKS, books, "data.source.val_books")
        test = resolve_books(self.test_books, TEST_BOOKS, books, "data.source.test_books")
        if not val:
            raise LmlabError("data.source.val_books is empty; name at least one book to validate on, e.g. [Ruth]")
        if shared := [b for b in val if b in test]:
            raise LmlabError(f"{', '.join(shared)} in both data.source.val_books and data.source.test_books; "
                             "hold each book out once")  # fmt: skip
        train = [b.name for b in books if b.name not in val and b.name not in test]
        return ConversationSplits(self.conversations(train), self.conversations(val), self.conversations(test))

    def conversations(self, books: list[str]) -> list[Conversation]:
        """The pairs of the books, in order, without empty verses; stops at `max_pairs`."""
        pairs: list[Conversation] = []
        for book in books:
            sources = book_verses(self.sword_dir, self.source_text.module, book)
            targets = book_verses(self.sword_dir, self.target_text.module, book)
            for verse, translation in zip(sources, targets, strict=True):  # same versification: same verse count
                if verse and translation:
                    pairs.append(conversation(("user", self.user_turn(verse)), ("assistant", translation)))
                if len(pairs) == self.max_pairs:
                    return pairs
        return pairs


def bible_text(code: str, key: str) -> BibleText:
    """The translation of a language code; an unknown code names the known ones."""
    if code not in BIBLES:
        raise LmlabError(f"{key}={code!r} is not a Bible language here; choose one of: {', '.join(BIBLES)}")
    return BIBLES[code]


def resolve_books(names: list[str] | None, default: tuple[str, ...], books: list[Any], key: str) -> list[str]:
    """The full names of the books asked for (any case; full name or abbreviation: `Galatians`, `Gal`), in order;
    None asks for the `default` ones."""
    resolved: list[str] = []
    for name in default if names is None else names:
        found = [b.name for b in books if b.name_matches(str(name))]
        if not found:
            raise LmlabError(f"{key} has an unknown book {name!r}; choose from: {', '.join(b.name for b in books)}")
        resolved += [] if found[0] in resolved else found[:1]
    return resolved


def bible_books(sword_dir: str, module: str) -> list[Any]:
    """The module's books (pysword `BookStructure`s) in canonical order, Genesis to Revelation."""
    books = open_bible(sword_dir, module).get_structure().get_books()
    return [b for testament in books.values() for b in testament]


@functools.cache
def book_verses(sword_dir: str, module: str, book: str) -> tuple[str, ...]:
    """Every verse of one book, chapter after chapter, as plain text ("" where the module has none)."""
    return tuple(clean_verse(v) for v in open_bible(sword_dir, module).get_iter(books=[book], clean=True))


def clean_verse(text: str) -> str:
    """A verse without markup leftovers, paragraph marks `¶` (they lead 2,970 KJV verses) and runs of spaces."""
    return " ".join(USFM_MARKER.sub("", text).replace("¶", " ").split())


@functools.cache
def open_bible(sword_dir: str, module: str) -> Any:
    """The pysword reader of an installed module; a missing pysword or module names the command that installs it.

    pysword decompresses a module's whole compressed block (a book here) again for every verse it reads, which makes
    a pass over both Bibles take about 70 s; remembering the last blocks makes it about 5 s, so nothing is cached on
    disk.
    """
    if importlib.util.find_spec("pysword") is None:
        raise LmlabError(f"the Bible needs the pysword package; install it with: pip install '{PYSWORD}'")
    from pysword.modules import SwordModules

    text = next(b for b in BIBLES.values() if b.module == module)
    library = SwordModules(sword_dir)
    if module not in (library.parse_modules() if (Path(sword_dir) / "mods.d").is_dir() else {}):
        raise LmlabError(f"the {text.language} Bible (SWORD module {module}) is not installed in {sword_dir}; "
                         f"install it as root with: apt-get update && {APT_INSTALL}")  # fmt: skip
    reader = library.get_bible_from_module(module)
    if hasattr(reader, "_decompress"):  # zText modules; others read verse by verse without it
        reader._decompress = functools.lru_cache(maxsize=2)(reader._decompress)
    return reader
