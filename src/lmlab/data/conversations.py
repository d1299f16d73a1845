"""Conversations: the examples of supervised fine-tuning for generation (dialogue, instructions, translation).

Every supported file format and corpus is read into the same shape: a conversation is a sequence of messages, each a
role (`system`, `user` or `assistant`) and its text, with at least one assistant turn. Prompt/completion data is a
conversation of one user turn and one assistant turn. The assistant turns are what a model learns to produce; the
rest is the prompt it conditions on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

ROLES = ("system", "user", "assistant")
"""The roles a message may have (the names chat templates use)."""


@dataclass(frozen=True)
class Message:
    """One turn: who speaks and what they say."""

    role: str
    content: str


Conversation = tuple[Message, ...]
"""One training example: messages in order, at least one of them the assistant's."""


@dataclass
class ConversationSplits:
    """The conversations of a source, split into train, validation and test."""

    train: list[Conversation]
    val: list[Conversation]
    test: list[Conversation]


class ConversationSource(Protocol):
    """Where conversations come from (files in one of the supported formats, a corpus package)."""

    @property
    def name(self) -> str: ...

    def load(self) -> ConversationSplits: ...


def conversation(*turns: tuple[str, str]) -> Conversation:
    """`conversation(("user", "hi"), ("assistant", "hello"))`: a conversation from (role, content) pairs."""
    return tuple(Message(role, content) for role, content in turns)


def assistant_turns(messages: Sequence[Message]) -> int:
    """How many of the messages are the assistant's (a training example needs at least one)."""
    return sum(m.role == "assistant" for m in messages)
