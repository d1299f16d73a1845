"""Reading conversations from files: messages JSONL, prompt/completion JSONL, Alpaca and ShareGPT (JSON or JSONL).

The format is detected from the keys of the first record (or forced with `format=`); every record is then read as
that format into the one `Conversation` shape. Bad records stop the read with a one-line error naming the file, the
line (JSON Lines) or item (JSON array), and the fix, because a silently dropped example is a bug found much later.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from lmlab.data.conversations import ROLES, Conversation, Message, assistant_turns
from lmlab.data.corpora import read_utf8
from lmlab.data.labeled import numbered_json_lines
from lmlab.errors import LmlabError

Record = tuple[str, dict[str, object]]
"""A record and where it is (`line 3 of a.jsonl`, `item 3 of a.json`), for error messages."""

SIGNATURES = {
    "messages": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "alpaca": ("instruction", "output"),
    "sharegpt": ("conversations",),
}
"""Each format and the keys that identify it, in the order auto-detection tries them."""
FORMATS = ("auto", *SIGNATURES)
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
"""ShareGPT speaker names (`from`) and the roles they become."""
_JSON_TYPES = {bool: "a boolean", int: "a number", float: "a number", list: "an array", dict: "an object"}


def read_conversations(path: str | Path, format: str = "auto", key: str = "data.source.train") -> list[Conversation]:
    """The conversations of one file, in file order; `key` names the setting the path came from."""
    if format not in FORMATS:
        raise LmlabError(f"unknown conversation format {format!r}; choose one of: {', '.join(FORMATS)}")
    path = Path(path).expanduser()
    records = read_records(path, key)
    if not records:
        raise LmlabError(f"{path} holds no conversations; give at least one record (set {key})")
    kind = detect_format(*records[0]) if format == "auto" else format
    parse = PARSERS[kind]
    return [checked(where, parse(where, record)) for where, record in records]


def read_records(path: Path, key: str) -> list[Record]:
    """The objects of a JSON array (starts with `[`) or of a JSON Lines file, each with where it is."""
    text = read_utf8(path, key, directory_hint=f"give a JSON or JSON Lines file in {key}")
    if not text.lstrip().startswith("["):
        return [(f"line {number} of {path}", record) for number, record in numbered_json_lines(text, path)]
    try:
        items = json.loads(text)
    except json.JSONDecodeError as err:
        fix = "fix it, or write JSON Lines (one object per line)"
        raise LmlabError(f"line {err.lineno} of {path} is not valid JSON ({err.msg}); {fix}") from err
    for number, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            raise LmlabError(f"item {number} of {path} is not a JSON object; give an array of objects")
    return [(f"item {number} of {path}", item) for number, item in enumerate(items, start=1)]


def detect_format(where: str, record: dict[str, object]) -> str:
    """The format whose keys the record has; none is a one-line error listing the formats."""
    for kind, keys in SIGNATURES.items():
        if all(k in record for k in keys):
            return kind
    found = ", ".join(map(repr, record)) or "none"
    raise LmlabError(
        f"{where} is of no known conversation format (keys: {found}); write 'messages', 'prompt' + 'completion', "
        "'instruction' + 'input' + 'output' (Alpaca) or 'conversations' (ShareGPT) records"
    )


def checked(where: str, messages: Conversation) -> Conversation:
    """A conversation with at least one assistant turn (there is nothing to learn from one without)."""
    if not assistant_turns(messages):
        raise LmlabError(
            f"{where} has no assistant turn; give each conversation at least one reply "
            "(role 'assistant', or 'gpt' in ShareGPT)"
        )
    return messages


def text(where: str, record: dict[str, object], name: str) -> str:
    """The string field `name` of a record; missing, null or another type is a one-line error."""
    value = record.get(name)
    if value is None:
        raise LmlabError(f"{where} has no {name!r}; give it a {name!r} string")
    if not isinstance(value, str):
        kind = _JSON_TYPES.get(type(value), type(value).__name__)
        raise LmlabError(f"{where}: {name!r} is {kind}, not a string; write it as a JSON string")
    return value


def turns(where: str, record: dict[str, object], name: str) -> list[Record]:
    """The turn objects of a list field (`messages`, `conversations`), each with where it is."""
    value = record.get(name)
    if not isinstance(value, list) or not all(isinstance(turn, dict) for turn in value):
        raise LmlabError(f"{where}: {name!r} must be a list of objects, one per turn; fix the record")
    return [(f"{where}, turn {number}", turn) for number, turn in enumerate(value, start=1)]


def role(where: str, turn: dict[str, object], name: str, roles: dict[str, str]) -> str:
    """The role of a turn, mapped through `roles`; an unknown one is an error listing them."""
    value = text(where, turn, name)
    if value not in roles:
        raise LmlabError(f"{where} has {name} {value!r}; use one of: {', '.join(roles)}")
    return roles[value]


def from_messages(where: str, record: dict[str, object]) -> Conversation:
    """`{"messages": [{"role": ..., "content": ...}, ...]}`."""
    known = {r: r for r in ROLES}
    return tuple(Message(role(w, t, "role", known), text(w, t, "content")) for w, t in turns(where, record, "messages"))


def from_prompt_completion(where: str, record: dict[str, object]) -> Conversation:
    """`{"prompt": ..., "completion": ...}`: one user turn and its reply."""
    return (Message("user", text(where, record, "prompt")), Message("assistant", text(where, record, "completion")))


def from_alpaca(where: str, record: dict[str, object]) -> Conversation:
    """`{"instruction", "input", "output"}`: the user says the instruction, then the input (when there is one)."""
    prompt = text(where, record, "instruction")
    if record.get("input") is not None and (extra := text(where, record, "input")).strip():
        prompt = f"{prompt}\n\n{extra}"
    return (Message("user", prompt), Message("assistant", text(where, record, "output")))


def from_sharegpt(where: str, record: dict[str, object]) -> Conversation:
    """`{"conversations": [{"from": "human"|"gpt"|"system", "value": ...}]}`, with an optional top-level `system`."""
    system = (Message("system", text(where, record, "system")),) if record.get("system") is not None else ()
    said = turns(where, record, "conversations")
    return system + tuple(Message(role(w, t, "from", SHAREGPT_ROLES), text(w, t, "value")) for w, t in said)


PARSERS: dict[str, Callable[[str, dict[str, object]], Conversation]] = {
    "messages": from_messages,
    "prompt_completion": from_prompt_completion,
    "alpaca": from_alpaca,
    "sharegpt": from_sharegpt,
}
