"""Labeled text for classification: reading CSV / JSON Lines, mapping labels to ids, and fixed seeded splits."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from lmlab.data.corpora import read_utf8
from lmlab.errors import LmlabError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}


@dataclass
class LabeledExamples:
    """Texts and their label ids (indices into the label names)."""

    texts: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int]) -> LabeledExamples:
        return LabeledExamples([self.texts[i] for i in indices], [self.labels[i] for i in indices])


@dataclass
class LabeledSplits:
    """Train / validation / test examples and the names of the labels (label id = index)."""

    train: LabeledExamples
    val: LabeledExamples
    test: LabeledExamples
    label_names: list[str]


class LabeledSource(Protocol):
    """A named source of labeled text, split the same way on every machine."""

    name: str

    def load(self) -> LabeledSplits: ...


def read_text_file(path: Path, key: str) -> str:
    """A labeled-data file as strict UTF-8; failures become one-line errors naming `key`."""
    return read_utf8(path, key, directory_hint=f"give a CSV or JSON Lines file in {key}")


def file_format(path: Path) -> str:
    """`csv`, `tsv` or `jsonl`, from the file's extension."""
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise LmlabError(f"{path} has an unknown extension; give a .csv, .tsv or .jsonl file")
    return kind


def read_records(path: str | Path, key: str = "data.source.train") -> list[dict[str, object]]:
    """The rows of a CSV/TSV file (with a header) or the objects of a JSON Lines file."""
    path = Path(path).expanduser()
    kind = file_format(path)
    text = read_text_file(path, key)
    if kind == "jsonl":
        return _json_lines(text, path)
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # reviews can be long; the default limit is 128 KiB
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if kind == "tsv" else ",")
    return list(reader)


def _json_lines(text: str, path: Path) -> list[dict[str, object]]:
    return [record for _, record in numbered_json_lines(text, path)]


def numbered_json_lines(text: str, path: Path) -> list[tuple[int, dict[str, object]]]:
    """(line number, object) for each non-blank line, so later checks can name the line of a bad record."""
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            message = f"line {number} of {path} is not JSON ({err.msg}); write one JSON object per line"
            raise LmlabError(message) from err
        if not isinstance(record, dict):
            raise LmlabError(f"line {number} of {path} is not a JSON object; write one object per line")
        records.append((number, record))
    return records


def column(records: list[dict[str, object]], name: str, path: str | Path, key: str) -> list[str]:
    """The values of one column as strings; a missing column or value is a one-line error."""
    if not records:
        raise LmlabError(f"{path} holds no examples; give a file with a header and at least one row")
    present = [c for c in records[0] if c is not None]
    if name not in present:
        raise LmlabError(f"{path} has no column {name!r} (columns: {', '.join(map(str, present))}); set {key}")
    values = []
    for number, record in enumerate(records, start=1):
        value = record.get(name)
        if value is None:
            raise LmlabError(f"example {number} of {path} has no {name!r} value; fill it in or drop the row")
        values.append(value if isinstance(value, str) else json.dumps(value))
    return values


def label_order(values: Sequence[str]) -> list[str]:
    """Distinct labels sorted: numerically when all are integers (so `0, 1, 2, 10`), else as text."""
    distinct = set(values)
    try:
        return sorted(distinct, key=int)
    except ValueError:
        return sorted(distinct)


def split_order(n: int, seed: int) -> list[int]:
    """A permutation of range(n) from SHA-256 of (seed, index): the same on every machine and library version."""
    return sorted(range(n), key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).digest())


def split_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """(val, test) example counts for `n` examples; each nonzero fraction gets at least one example."""
    for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= fraction < 1.0:
            raise LmlabError(f"data.source.{name}={fraction} must lie in [0, 1), e.g. 0.1")
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    if n - n_val - n_test < 1:
        raise LmlabError(f"{n} examples are too few to hold out validation and test examples; give more data")
    return n_val, n_test


def split_examples(
    examples: LabeledExamples, val_fraction: float, test_fraction: float, seed: int
) -> tuple[LabeledExamples, LabeledExamples, LabeledExamples]:
    """Disjoint (train, val, test) subsets in a fixed pseudo-random order: test first, then val, the rest train."""
    train, val, test = split_indices(len(examples), val_fraction, test_fraction, seed)
    return examples.subset(train), examples.subset(val), examples.subset(test)


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int) -> tuple[list[int], ...]:
    """Disjoint (train, val, test) index lists over range(n), the split every source of examples shares."""
    order = split_order(n, seed)
    n_val, n_test = split_sizes(n, val_fraction, test_fraction)
    return order[n_test + n_val :], order[n_test : n_test + n_val], order[:n_test]


def check_classes(train: LabeledExamples, label_names: Sequence[str], where: str) -> None:
    """At least two classes must occur in the training examples."""
    present = sorted({label_names[i] for i in train.labels})
    if len(present) < 2:
        raise LmlabError(
            f"the training examples of {where} have a single class ({', '.join(map(repr, present)) or 'none'}); "
            "classification needs at least two labels"
        )
