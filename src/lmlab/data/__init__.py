"""Data: corpora (where text comes from), token caches and DataModules. Knows nothing of models."""

from __future__ import annotations

from lmlab.data.bible import BibleParallel
from lmlab.data.cache import TokenSplits, build_token_cache, load_token_cache, split_text
from lmlab.data.classification import ClassificationDataModule, pad_batch
from lmlab.data.conversation_files import read_conversations
from lmlab.data.conversation_sources import Chatterbot, ConversationFiles
from lmlab.data.corpora import (
    Corpus,
    PeoplesDailyCorpus,
    ShakespeareCorpus,
    TextFilesCorpus,
    markdown_play_to_text,
    pku_line_to_text,
)
from lmlab.data.datamodule import LMDataModule
from lmlab.data.hf_dataset import HFDatasetCorpus
from lmlab.data.labeled import LabeledExamples, LabeledSplits, split_examples
from lmlab.data.labeled_sources import LabeledFiles, MovieReviews, MovieReviewsCorpus
from lmlab.data.preference import PreferenceDataModule, PreferenceFiles
from lmlab.data.sft import SFTDataModule
from lmlab.data.windows import TokenWindows

__all__ = [
    "BibleParallel",
    "Chatterbot",
    "ClassificationDataModule",
    "ConversationFiles",
    "Corpus",
    "HFDatasetCorpus",
    "LMDataModule",
    "LabeledExamples",
    "LabeledFiles",
    "LabeledSplits",
    "MovieReviews",
    "MovieReviewsCorpus",
    "PeoplesDailyCorpus",
    "PreferenceDataModule",
    "PreferenceFiles",
    "SFTDataModule",
    "ShakespeareCorpus",
    "TextFilesCorpus",
    "TokenSplits",
    "TokenWindows",
    "build_token_cache",
    "load_token_cache",
    "markdown_play_to_text",
    "pad_batch",
    "pku_line_to_text",
    "read_conversations",
    "split_examples",
    "split_text",
]
