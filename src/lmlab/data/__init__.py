"""Data: corpora (where text comes from), token caches and DataModules. Knows nothing of models."""

from __future__ import annotations

from lmlab.data.cache import TokenSplits, build_token_cache, load_token_cache, split_text
from lmlab.data.corpora import (
    Corpus,
    PeoplesDailyCorpus,
    ShakespeareCorpus,
    TextFilesCorpus,
    markdown_play_to_text,
    pku_line_to_text,
)
from lmlab.data.datamodule import LMDataModule
from lmlab.data.windows import TokenWindows

__all__ = [
    "Corpus",
    "LMDataModule",
    "PeoplesDailyCorpus",
    "ShakespeareCorpus",
    "TextFilesCorpus",
    "TokenSplits",
    "TokenWindows",
    "build_token_cache",
    "load_token_cache",
    "markdown_play_to_text",
    "pku_line_to_text",
    "split_text",
]
