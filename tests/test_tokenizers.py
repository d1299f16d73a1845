from __future__ import annotations

import pytest

from lmlab.errors import LmlabError
from lmlab.tokenizers import CharTokenizer, CharTokenizerConfig, load_tokenizer, save_tokenizer
from lmlab.tokenizers.char import UNKNOWN


def test_char_round_trip_any_text_of_its_alphabet() -> None:
    text = "To be, or not to be: 生存还是毁灭 🙂\n"
    tok = CharTokenizerConfig().train([text])
    assert tok.decode(tok.encode(text)) == text
    assert tok.vocab_size == len(set(text)) + 1  # + the unknown character


def test_unseen_characters_map_to_replacement_character() -> None:
    tok = CharTokenizer("abc")
    assert tok.decode(tok.encode("abz")) == "ab" + UNKNOWN


def test_ids_are_sorted_alphabet_positions() -> None:
    tok = CharTokenizer("cab")
    assert tok.encode("abc") == [0, 1, 2]


def test_token_bytes_are_utf8_lengths() -> None:
    tok = CharTokenizer("a生🙂")
    by_char = dict(zip(tok.chars, tok.token_bytes(), strict=True))
    assert (by_char["a"], by_char["生"], by_char["🙂"], by_char[UNKNOWN]) == (1, 3, 4, 3)


def test_save_and_load(tmp_path) -> None:
    tok = CharTokenizer("hello world")
    loaded = load_tokenizer(save_tokenizer(tok, tmp_path / "tokenizer.json"))
    assert loaded.to_dict() == tok.to_dict()
    assert loaded.encode("hello") == tok.encode("hello")


def test_load_garbage_is_one_line_error(tmp_path) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text("not json")
    with pytest.raises(LmlabError, match="cannot read tokenizer file"):
        load_tokenizer(path)
