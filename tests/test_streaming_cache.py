"""The token cache streams its corpus: same split and ids as the whole text, memory independent of corpus size."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lmlab.data import TextFilesCorpus, build_token_cache, load_token_cache, split_text
from lmlab.data.cache import char_range, line_chunks, split_point
from lmlab.data.corpora import iter_utf8
from lmlab.errors import LmlabError
from lmlab.tokenizers import BPETokenizerConfig, CharTokenizerConfig


def random_pieces(text: str, seed: int) -> list[str]:
    """`text` cut at random places (empty pieces included)."""
    rng = np.random.default_rng(seed)
    cuts = sorted(rng.integers(0, len(text) + 1, size=12).tolist())
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


@pytest.mark.parametrize("seed", range(5))
def test_streamed_split_matches_whole_text(seed: int) -> None:
    text = "".join(f"line {i} {'x' * (i % 7)}\n" for i in range(300)) + "tail without newline"
    pieces = random_pieces(text, seed)
    for fraction in (0.05, 0.1, 0.5):
        train, val = split_text(text, fraction)
        cut = split_point(pieces, len(text), fraction)
        assert "".join(char_range(pieces, 0, cut)) == train
        assert "".join(char_range(pieces, cut)) == val
    # no newline after the cut: the split falls at the cut itself
    assert split_point(["abc\n", "defghij"], 11, 0.2) == int(11 * 0.8)


def test_line_chunks_keep_text_and_end_lines() -> None:
    text = "".join(f"{i}:{'y' * (i % 13)}\n" for i in range(500))
    chunks = list(line_chunks(random_pieces(text, 0), size=100))
    assert "".join(chunks) == text
    assert all(c.endswith("\n") and len(c) >= 100 for c in chunks[:-1])
    assert list(line_chunks(["no newline at all"], size=4)) == ["no newline at all"]


def test_iter_utf8_streams_blocks_and_finds_bad_byte_across_blocks(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    text = "héllo 中文 " * 50
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())  # with a BOM
    assert "".join(iter_utf8(path, block_bytes=7)) == text
    bad = tmp_path / "bad.txt"
    bad.write_bytes("ab中".encode() + b"\xff" + b"cd")  # 中 spans bytes 2..4; 0xff at offset 5
    for block in (1, 2, 3, 4, 64):
        with pytest.raises(LmlabError, match=r"invalid byte at offset 5\)"):
            list(iter_utf8(bad, block_bytes=block))


@pytest.mark.parametrize("tokenizer", [CharTokenizerConfig(), BPETokenizerConfig(vocab_size=300)])
def test_cache_of_many_files_equals_cache_of_their_text(tmp_path: Path, tokenizer) -> None:
    lines = [f"review {i}: {'good' if i % 3 else 'bad'} film, {'中' * (i % 4)}\n" for i in range(400)]
    for k in range(4):
        (tmp_path / f"part{k}.txt").write_text("".join(lines[k * 100 : (k + 1) * 100]), encoding="utf-8")
    splits = load_token_cache(
        build_token_cache(TextFilesCorpus([str(tmp_path / "part*.txt")]), tokenizer, 0.1, tmp_path / "cache")
    )
    train, val = split_text("".join(lines), 0.1)
    assert splits.tokenizer.decode(splits.train.tolist()) == train
    assert splits.tokenizer.decode(splits.val.tolist()) == val
    assert splits.meta["train_bytes"] == len(train.encode()) and splits.meta["val_bytes"] == len(val.encode())


MEASURE = """
import resource, sys
from lmlab.data import TextFilesCorpus, build_token_cache
from lmlab.tokenizers import CharTokenizerConfig
corpus, config = TextFilesCorpus([sys.argv[1]]), CharTokenizerConfig()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
build_token_cache(corpus, config, 0.1, sys.argv[2])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)  # KiB of peak growth
"""


@pytest.mark.slow
def test_cache_build_memory_does_not_grow_with_the_corpus(tmp_path: Path) -> None:
    """A 64 MB file: holding its text even once would add 64 MB to the peak; streaming adds a few MB of buffers."""
    block = "".join(f"line {i} of a corpus larger than the buffers, word {i * 7919 % 1000}\n" for i in range(14000))
    path = tmp_path / "big.txt"
    with path.open("w") as file:
        for _ in range(64 * 2**20 // len(block) + 1):
            file.write(block)
    size_mb = path.stat().st_size / 2**20
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path), str(tmp_path / "cache")], capture_output=True, text=True, check=True
    )
    growth_mb = int(result.stdout.strip()) / 1024
    assert size_mb > 64
    assert growth_mb < 40, f"building the cache of a {size_mb:.0f} MB file raised peak RSS by {growth_mb:.0f} MB"
