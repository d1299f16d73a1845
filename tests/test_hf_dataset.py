"""data=hf_dataset: text from a Hugging Face `datasets` folder (saved or data files), read row by row."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmlab.data import HFDatasetCorpus, build_token_cache, load_token_cache, split_text
from lmlab.errors import LmlabError
from lmlab.tokenizers import CharTokenizerConfig
from tests.helpers.hf import ROWS, jsonl_folder


def saved_dataset_dict(folder: Path) -> Path:
    import datasets

    splits = {"train": ROWS[:40], "validation": ROWS[40:]}
    datasets.DatasetDict({k: datasets.Dataset.from_dict({"text": v}) for k, v in splits.items()}).save_to_disk(folder)
    return folder


def test_data_files_folder_yields_one_document_per_row(tmp_path: Path) -> None:
    corpus = HFDatasetCorpus(str(jsonl_folder(tmp_path / "ds")))
    assert list(corpus.documents()) == [r + "\n" for r in ROWS]
    assert corpus.fingerprint() == HFDatasetCorpus(str(tmp_path / "ds")).fingerprint()
    assert corpus.fingerprint() != HFDatasetCorpus(str(jsonl_folder(tmp_path / "other", ROWS[:-1]))).fingerprint()


def test_saved_dataset_dict_picks_the_split(tmp_path: Path) -> None:
    folder = saved_dataset_dict(tmp_path / "saved")
    assert list(HFDatasetCorpus(str(folder), split="validation").documents()) == [r + "\n" for r in ROWS[40:]]
    with pytest.raises(LmlabError, match=r"no split 'test'; set data\.corpus\.split to one of train, validation"):
        list(HFDatasetCorpus(str(folder), split="test").documents())


def test_cache_from_a_dataset_equals_cache_of_its_text(tmp_path: Path) -> None:
    corpus = HFDatasetCorpus(str(jsonl_folder(tmp_path / "ds")))
    splits = load_token_cache(build_token_cache(corpus, CharTokenizerConfig(), 0.2, tmp_path / "cache"))
    train, val = split_text("".join(r + "\n" for r in ROWS), 0.2)
    assert splits.tokenizer.decode(splits.train.tolist()) == train
    assert splits.tokenizer.decode(splits.val.tolist()) == val


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: HFDatasetCorpus(str(jsonl_folder(d / "ds", column="body"))), "no column 'text'.*one of body, id"),
        (lambda d: HFDatasetCorpus(str(d / "missing")), "does not exist; give a dataset folder or a hub id"),
        (lambda d: HFDatasetCorpus(str(jsonl_folder(d / "ds")), split="nope"), "cannot read split 'nope'"),
    ],
)
def test_bad_dataset_settings_are_one_line_errors(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(LmlabError, match=message) as err:
        list(make(tmp_path).documents())
    assert "\n" not in str(err.value)
