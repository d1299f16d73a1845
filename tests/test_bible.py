"""The Bible as translation pairs: counts, verse alignment, whole books held out, both directions, the prompt, and
one-line errors naming the fix."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from lmlab.data import BibleParallel
from lmlab.data.bible import BIBLES, book_verses, open_bible
from lmlab.data.conversations import Conversation
from lmlab.errors import LmlabError
from tests.helpers.bible import needs_bible

SWORD = "/usr/share/sword"
GENESIS_1_1 = (
    "In the beginning God created the heaven and the earth.",
    "EN el principio crió Dios los cielos y la tierra.",
)
JOHN_3_16 = (
    "For God so loved the world, that he gave his only begotten Son,",
    "Porque de tal manera amó Dios al mundo",
)


def verse(language: str, book: str, chapter: int, number: int) -> str:
    """One verse of one translation, by reference (KJV versification: Genesis 1 has 31 verses, John 1-2 have 76)."""
    module = BIBLES[language].module
    books = open_bible(SWORD, module).get_structure().get_books()
    lengths = next(b.chapter_lengths for t in books.values() for b in t if b.name == book)
    return book_verses(SWORD, module, book)[sum(lengths[: chapter - 1]) + number - 1]


def texts(conversations: list[Conversation], turn: int) -> set[str]:
    return {c[turn].content for c in conversations}


@needs_bible
def test_counts_and_whole_books_held_out() -> None:
    source = BibleParallel()
    splits = source.load()
    assert source.name == "bible_en_es"
    # 31,102 verses, 18 of them empty in RV1909 (9 in Job); Daniel + Galatians, Esther + Hebrews held out
    assert (len(splits.train), len(splits.val), len(splits.test)) == (31084 - 976, 357 + 149, 167 + 303)
    assert all([m.role for m in c] == ["user", "assistant"] and c[0].content and c[1].content
               for part in (splits.train, splits.val, splits.test) for c in part)  # fmt: skip
    for turn in (0, 1):  # not one verse of a held-out book, in either language, is trained on
        assert not texts(splits.train, turn) & (texts(splits.val, turn) | texts(splits.test, turn))
        assert not texts(splits.val, turn) & texts(splits.test, turn)
    assert splits.val[0][0].content.endswith(verse("en", "Daniel", 1, 1))
    assert splits.test[-1][1].content == verse("es", "Hebrews", 13, 25)


@needs_bible
def test_verses_align_and_come_out_clean() -> None:
    assert verse("en", "Genesis", 1, 1) == GENESIS_1_1[0]  # no Strong's numbers, no trailing space
    assert verse("es", "Genesis", 1, 1) == GENESIS_1_1[1]
    assert verse("en", "John", 3, 16).startswith(JOHN_3_16[0])  # the module's leading "¶ " is gone
    assert verse("es", "John", 3, 16).startswith(JOHN_3_16[1])
    assert verse("en", "Exodus", 6, 3).endswith("but by my name JEHOVAH was I not known to them.")  # no `\nd`
    everything = [v for b in ("Psalms", "Exodus", "John") for lang in BIBLES for v in book_verses(
        SWORD, BIBLES[lang].module, b)]  # fmt: skip
    assert not [v for v in everything if "¶" in v or "  " in v or "<" in v or "\\" in v or v != v.strip()]


@needs_bible
def test_both_directions_and_the_prompt() -> None:
    en_es = BibleParallel(max_pairs=3).load().train
    es_en = BibleParallel(source="es", target="en", max_pairs=3).load().train
    assert en_es[0][0].content == f"Translate English to Spanish:\n{GENESIS_1_1[0]}"
    assert en_es[0][1].content == GENESIS_1_1[1]
    assert es_en[0][0].content == f"Translate Spanish to English:\n{GENESIS_1_1[1]}"
    assert [c[1].content for c in es_en] == [c[0].content.split("\n", 1)[1] for c in en_es]
    custom = BibleParallel(prompt="{source_name}: {text} -> {target_name}", max_pairs=1).load().train[0]
    assert custom[0].content == f"English: {GENESIS_1_1[0]} -> Spanish"


@needs_bible
def test_chosen_books_and_max_pairs() -> None:
    splits = BibleParallel(val_books=["ruth", "Jude"], test_books=[], max_pairs=None).load()
    assert (len(splits.val), len(splits.test), len(splits.train)) == (85 + 25, 0, 31084 - 110)
    assert splits.val[0][0].content.endswith(verse("en", "Ruth", 1, 1))
    first = BibleParallel(val_books=["Gal", "Gal"], max_pairs=5).load()  # abbreviations; a repeat counts once
    assert [len(p) for p in (first.train, first.val, first.test)] == [5, 5, 5]
    assert first.train[0][1].content == GENESIS_1_1[1] and first.val[0][0].content.endswith(
        verse("en", "Galatians", 1, 1)
    )


@needs_bible
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"val_books": ["Hezekiah"]}, r"data\.source\.val_books has an unknown book 'Hezekiah'; choose from: "
                                      r"Genesis, Exodus, .*, Revelation of John$"),
        ({"val_books": []}, r"data\.source\.val_books is empty; name at least one book"),
        ({"val_books": ["Ruth"], "test_books": ["Jude", "ruth"]}, r"Ruth in both data\.source\.val_books and "),
    ],
)  # fmt: skip
def test_bad_books_say_what_to_do(kwargs: dict, message: str) -> None:
    with pytest.raises(LmlabError, match=message) as err:
        BibleParallel(**kwargs).load()
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"source": "fr"}, r"data\.source\.source='fr' is not a Bible language here; choose one of: en, es$"),
        ({"target": "EN"}, r"data\.source\.target='EN' is not a Bible language here"),
        ({"source": "es", "target": "es"}, r"both 'es'; make them differ"),
        ({"val_fraction": 0.1}, r"data\.source\.val_fraction must stay null; choose the books with data\.source\."),
        ({"seed": 0}, r"data\.source\.seed must stay null"),
        ({"max_pairs": 0}, r"data\.source\.max_pairs=0 must be at least 1"),
        ({"prompt": "Translate:"}, r"has no \{text\}; put \{text\} where the verse goes"),
        ({"prompt": "{text} into {language}"}, r"cannot be filled \(KeyError\('language'\)\); use only \{text\}"),
    ],
)  # fmt: skip
def test_bad_settings_fail_at_once_in_one_line(kwargs: dict, message: str) -> None:
    with pytest.raises(LmlabError, match=message) as err:
        BibleParallel(**kwargs)  # before any reading: these need neither pysword nor the modules
    assert "\n" not in str(err.value)


@pytest.mark.skipif(importlib.util.find_spec("pysword") is None, reason="needs pysword")
def test_missing_modules_name_the_apt_command(tmp_path: Path) -> None:
    with pytest.raises(LmlabError, match=r"the English Bible \(SWORD module engKJV2006eb\) is not installed in .*; "
                       r"install it as root with: apt-get update && apt-get install -y sword-text-kjv "
                       r"sword-text-sparv$"):  # fmt: skip
        BibleParallel(sword_dir=str(tmp_path)).load()


def test_missing_pysword_names_the_pip_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "pysword" else real_find_spec(name)
    )
    with pytest.raises(LmlabError, match=r"needs the pysword package; install it with: pip install 'pysword>=0\.2\.8"):
        BibleParallel(sword_dir=str(tmp_path)).load()  # a directory of its own: not a reader cached by another test
