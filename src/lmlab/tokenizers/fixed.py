"""A tokenizer that already exists (e.g. the one saved in a checkpoint), behind the `TokenizerConfig` protocol."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass

from lmlab.tokenizers.base import Tokenizer


@dataclass
class FixedTokenizerConfig:
    """`train` returns the given tokenizer unchanged, so a pipeline that trains tokenizers reuses this one."""

    tokenizer: Tokenizer

    def train(self, texts: Iterable[str]) -> Tokenizer:
        return self.tokenizer

    def fingerprint(self) -> str:
        """Hash of the tokenizer's saved form, so token caches key on it."""
        data = json.dumps(self.tokenizer.to_dict(), sort_keys=True, ensure_ascii=False)
        return "fixed-" + hashlib.sha256(data.encode("utf-8")).hexdigest()
