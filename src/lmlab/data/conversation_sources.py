"""Where conversations come from: the user's files in any supported format, or the offline Chatterbot corpus."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from lmlab.data.conversation_files import read_conversations
from lmlab.data.conversations import Conversation, ConversationSplits, Message
from lmlab.data.corpora import package_data, read_utf8
from lmlab.data.labeled import split_indices
from lmlab.errors import LmlabError

log = logging.getLogger(__name__)

CHATTERBOT = ("chatterbot-corpus", "1.3.3")
"""The package and the version whose counts the tests check."""


def split_conversations(
    conversations: Sequence[Conversation], val_fraction: float, test_fraction: float, seed: int
) -> ConversationSplits:
    """A seeded split by conversation, the same on every machine (the split labeled data uses)."""
    train, val, test = split_indices(len(conversations), val_fraction, test_fraction, seed)
    return ConversationSplits(*([conversations[i] for i in part] for part in (train, val, test)))


@dataclass
class ConversationFiles:
    """The user's conversation files: a training file, optionally validation and test files.

    A split without its own file is held out of the training file (`val_fraction`, `test_fraction`, fixed `seed`).
    Each file's format is detected from its first record unless `format` names one (see `read_conversations`).
    """

    train: str
    val: str | None = None
    test: str | None = None
    format: str = "auto"
    """`auto`, `messages`, `prompt_completion`, `alpaca` or `sharegpt`."""
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    """Seed of the split; keep it fixed so the held-out conversations stay the same across runs and machines."""

    @property
    def name(self) -> str:
        return Path(self.train).stem

    def load(self) -> ConversationSplits:
        conversations = read_conversations(self.train, self.format, "data.source.train")
        val_fraction = 0.0 if self.val else self.val_fraction
        test_fraction = 0.0 if self.test else self.test_fraction
        splits = split_conversations(conversations, val_fraction, test_fraction, self.seed)
        if self.val:
            splits.val = read_conversations(self.val, self.format, "data.source.val")
        if self.test:
            splits.test = read_conversations(self.test, self.format, "data.source.test")
        if not splits.val:
            raise LmlabError("no validation conversations; give data.source.val or a data.source.val_fraction above 0")
        return splits


@dataclass
class Chatterbot:
    """Short chit-chat dialogues of the `chatterbot-corpus` package (offline), one language folder of YAML files.

    Turns alternate user / assistant, starting with the user; one-turn conversations (no reply) are skipped.
    """

    language: str = "english"
    """A folder of the package's `data/`, e.g. `english`, `chinese`, `traditionalchinese`."""
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0

    @property
    def name(self) -> str:
        return f"chatterbot_{self.language}"

    def load(self) -> ConversationSplits:
        conversations = chatterbot_conversations(self.language)
        return split_conversations(conversations, self.val_fraction, self.test_fraction, self.seed)


def chatterbot_language_dir(language: str) -> Path:
    """`data/<language>` of the package, found without importing it; an unknown language lists the known ones."""
    package, version = CHATTERBOT
    data = package_data(package, version, "data", "the Chatterbot corpus")
    languages = sorted(p.name for p in data.iterdir() if p.is_dir())
    if language not in languages:
        raise LmlabError(f"the Chatterbot corpus has no language {language!r}; choose one of: {', '.join(languages)}")
    return data / language


@cache
def chatterbot_conversations(language: str) -> tuple[Conversation, ...]:
    """Every distinct conversation of one language with a reply, files in name order, conversations in file order.

    Exact repeats are dropped (English `tech_support.yml` holds 1,050 conversations but 10 distinct ones): a repeat
    split into both training and held-out data would score memorisation, not learning.
    """
    conversations: dict[Conversation, None] = {}  # ordered, without repeats
    skipped = repeated = 0
    for path in sorted(chatterbot_language_dir(language).glob("*.yml")):
        for said in yaml_conversations(path):
            if len(said) < 2:
                skipped += 1
                continue
            roles = ("user", "assistant")
            turns = tuple(Message(roles[i % 2], clean_turn(t)) for i, t in enumerate(said))
            repeated += turns in conversations
            conversations[turns] = None
    if skipped or repeated:
        log.info("Chatterbot %s: skipped %d one-turn conversations (no reply) and %d exact repeats", language,
                 skipped, repeated)  # fmt: skip
    return tuple(conversations)


def clean_turn(turn: object) -> str:
    """A turn as text: YAML gives numbers for turns like `42`, and folded lines keep their ends."""
    return "" if turn is None else str(turn).strip()


def yaml_conversations(path: Path) -> list[list[object]]:
    """The `conversations` list of one corpus file, each a list of turns (a stray scalar becomes one turn)."""
    package, version = CHATTERBOT
    reinstall = f"reinstall it with: pip install --no-deps --force-reinstall {package}=={version}"
    try:
        content = yaml.safe_load(read_utf8(path, f"the {package} package"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1} of {path}" if mark else str(path)
        raise LmlabError(f"{where} is not valid YAML; {reinstall}") from err
    said = content.get("conversations") if isinstance(content, dict) else None
    if not isinstance(said, list):
        raise LmlabError(f"{path} has no list of conversations (lists of turns); {reinstall}")
    # A conversation indented one level too little reads as one string (english/trivia.yml line 35 in 1.3.3):
    # it counts as a single turn, so it is skipped, rather than guessing where its turns were joined.
    return [c if isinstance(c, list) else [c] for c in said]
