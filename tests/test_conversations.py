"""Conversations from files (four formats, auto-detected, one-line errors naming file and line) and from the
Chatterbot corpus (counts, first conversation, the seeded split)."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pytest

from lmlab.data import Chatterbot, ConversationFiles, read_conversations
from lmlab.data.conversation_files import detect_format
from lmlab.data.conversation_sources import chatterbot_conversations, clean_turn, yaml_conversations
from lmlab.data.conversations import Conversation, conversation
from lmlab.errors import LmlabError
from tests.helpers.classification import write_jsonl

PAIRS = [("Translate to Spanish: hello", "hola"), ("Translate to Spanish: thank you", "gracias")]
EXPECTED = [conversation(("user", prompt), ("assistant", reply)) for prompt, reply in PAIRS]
CHATTERBOT_INSTALL = "pip install --no-deps chatterbot-corpus==1.3.3"
needs_chatterbot = pytest.mark.skipif(
    importlib.util.find_spec("chatterbot_corpus") is None, reason=f"needs: {CHATTERBOT_INSTALL}"
)


def write_json(path: Path, items: list[dict]) -> Path:
    """A pretty-printed JSON array, one key per line (so errors can name lines past the first)."""
    path.write_text(json.dumps(items, indent=2, ensure_ascii=False), encoding="utf-8")
    return path


def format_records(kind: str) -> list[dict]:
    """PAIRS written as records of one format."""
    if kind == "messages":
        return [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": r}]} for p, r in PAIRS]
    if kind == "prompt_completion":
        return [{"prompt": p, "completion": r} for p, r in PAIRS]
    if kind == "alpaca":  # the instruction and the input joined by a blank line give the user turn
        return [{"instruction": "Translate to Spanish:", "input": p.split(": ")[1], "output": r} for p, r in PAIRS]
    return [{"conversations": [{"from": "human", "value": p}, {"from": "gpt", "value": r}]} for p, r in PAIRS]


def alpaca_user(tmp_path: Path, record: dict) -> str:
    """The user turn an Alpaca record becomes."""
    return read_conversations(write_jsonl(tmp_path / "alpaca.jsonl", [record]))[0][0].content


@pytest.mark.parametrize("kind", ["messages", "prompt_completion", "alpaca", "sharegpt"])
@pytest.mark.parametrize("container", ["jsonl", "json"])
def test_every_format_reads_into_the_same_conversations(tmp_path: Path, kind: str, container: str) -> None:
    records = format_records(kind)
    if kind == "alpaca":
        expected = [conversation(("user", f"Translate to Spanish:\n\n{r['input']}"), ("assistant", r["output"]))
                    for r in records]  # fmt: skip
    else:
        expected = EXPECTED
    write = write_jsonl if container == "jsonl" else write_json
    path = write(tmp_path / f"data.{container}", records)
    assert read_conversations(path) == expected  # auto-detected
    assert read_conversations(path, format=kind) == expected
    assert detect_format("line 1", records[0]) == kind


def test_alpaca_without_input_is_the_instruction_alone(tmp_path: Path) -> None:
    assert alpaca_user(tmp_path, {"instruction": "Say hi.", "input": "", "output": "hi"}) == "Say hi."
    assert alpaca_user(tmp_path, {"instruction": "Say hi.", "input": "  \n", "output": "hi"}) == "Say hi."
    assert alpaca_user(tmp_path, {"instruction": "Say hi.", "output": "hi"}) == "Say hi."
    assert alpaca_user(tmp_path, {"instruction": "Say hi.", "input": None, "output": "hi"}) == "Say hi."
    assert alpaca_user(tmp_path, {"instruction": "Say", "input": "hi", "output": "hi"}) == "Say\n\nhi"


def test_multi_turn_system_and_sharegpt_role_aliases(tmp_path: Path) -> None:
    turns = [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello."), ("user", "Bye"), ("assistant", "Bye.")]
    expected = [conversation(*turns)]
    messages = [{"messages": [{"role": r, "content": c, "weight": 1} for r, c in turns]}]  # extra keys are ignored
    assert read_conversations(write_jsonl(tmp_path / "m.jsonl", messages)) == expected
    names = {"system": "system", "user": "human", "assistant": "gpt"}
    sharegpt = [{"conversations": [{"from": names[r], "value": c} for r, c in turns]}]
    assert read_conversations(write_json(tmp_path / "s.json", sharegpt)) == expected
    aliases = [{"system": "Be brief.", "conversations": [{"from": r, "value": c} for r, c in turns[1:]]}]
    assert read_conversations(write_jsonl(tmp_path / "a.jsonl", aliases)) == expected


def test_blank_lines_and_a_byte_order_mark_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "pc.jsonl"
    lines = [json.dumps(r) for r in format_records("prompt_completion")]
    path.write_text("\ufeff" + lines[0] + "\n\n  \n" + lines[1], encoding="utf-8")
    assert read_conversations(path) == EXPECTED


PC = '{"prompt": "a", "completion": "b"}'
MESSAGES = '{"messages": [{"role": "user", "content": "a"}, {"role": "%s", "content": %s}]}'
MESSAGES_OK = MESSAGES % ("assistant", '"b"')
BAD_FILES = [
    ("not-json", "bad.jsonl", f'{PC}\n{{"prompt": "a",\n', r"line 2 of \S+bad\.jsonl is not JSON .*one JSON object"),
    ("not-json-array", "bad.json", f'[\n{PC},\n{{oops}}\n]', r"line 3 of \S+bad\.json is not valid JSON"),
    ("not-an-object", "bad.jsonl", f'{PC}\n"text"\n', r"line 2 of \S+bad\.jsonl is not a JSON object"),
    ("array-item-not-object", "bad.json", f"[{PC}, 3]", r"item 2 of \S+bad\.json is not a JSON object"),
    ("unknown-format", "bad.jsonl", '{"question": "a", "answer": "b"}',
     r"line 1 of \S+ is of no known conversation format \(keys: 'question', 'answer'\); write 'messages'"),
    ("missing-field", "bad.jsonl", f'{PC}\n{{"prompt": "a"}}', r"line 2 of \S+ has no 'completion'; give it"),
    ("null-field", "bad.json", f'[{PC}, {{"prompt": "a", "completion": null}}]', r"item 2 of \S+ has no 'completion'"),
    ("number-field", "bad.jsonl", '{"prompt": "a", "completion": 3}',
     r"line 1 of \S+: 'completion' is a number, not a string; write it as a JSON string"),
    ("list-content", "bad.jsonl", MESSAGES % ("assistant", '["b"]'),
     r"line 1 of \S+, turn 2: 'content' is an array, not a string"),
    ("unknown-role", "bad.jsonl", f"{MESSAGES_OK}\n{MESSAGES % ('bot', '1')}",
     r"line 2 of \S+, turn 2 has role 'bot'; use one of: system, user, assistant$"),
    ("unknown-sharegpt-speaker", "bad.json", '[{"conversations": [{"from": "human", "value": "a"}, '
     '{"from": "bot", "value": "b"}]}]', r"item 1 of \S+, turn 2 has from 'bot'; use one of: system, human, user, "
     "gpt, assistant$"),
    ("messages-not-a-list", "bad.jsonl", '{"messages": "hi"}', r"line 1 of \S+: 'messages' must be a list of objects"),
    ("no-assistant-turn", "bad.jsonl", MESSAGES_OK + "\n\n" + MESSAGES % ("user", '"b"'),
     r"line 3 of \S+ has no assistant turn; give each conversation at least one reply"),
    ("sharegpt-no-reply", "bad.jsonl", '{"conversations": [{"from": "human", "value": "a"}]}', r"line 1 .*no assist"),
    ("empty-file", "empty.jsonl", "", r"\S+empty\.jsonl holds no conversations; give at least one record"),
    ("blank-file", "blank.jsonl", "\n  \n", r"\S+blank\.jsonl holds no conversations"),
    ("empty-array", "empty.json", "[]", r"\S+empty\.json holds no conversations"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "text", "error"), [row[1:] for row in BAD_FILES], ids=[r[0] for r in BAD_FILES])
def test_bad_files_are_one_line_errors_naming_file_and_line(tmp_path: Path, name: str, text: str, error: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(LmlabError, match=error) as err:
        read_conversations(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_forced_format_and_unknown_format_names(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "pc.jsonl", format_records("prompt_completion"))
    with pytest.raises(LmlabError, match=r"line 1 of \S+pc\.jsonl has no 'instruction'"):
        read_conversations(path, format="alpaca")
    with pytest.raises(LmlabError, match=r"unknown conversation format 'chatml'; choose one of: auto, messages, "):
        read_conversations(path, format="chatml")


def test_a_format_change_midway_names_the_line(tmp_path: Path) -> None:
    records = [*format_records("prompt_completion"), *format_records("messages")]
    with pytest.raises(LmlabError, match=r"line 3 of \S+ has no 'prompt'"):
        read_conversations(write_jsonl(tmp_path / "mixed.jsonl", records))


def test_missing_and_non_utf8_files_name_the_setting(tmp_path: Path) -> None:
    with pytest.raises(LmlabError, match=r"nope\.jsonl does not exist"):
        ConversationFiles(train=str(tmp_path / "nope.jsonl")).load()
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes('{"prompt": "Bär", "completion": "b"}\n'.encode("latin-1"))
    with pytest.raises(LmlabError, match=r"latin1\.jsonl .*UTF-8"):
        read_conversations(latin1)


def numbered_pairs(n: int) -> list[dict]:
    return [{"prompt": f"question {i}", "completion": f"answer {i}"} for i in range(n)]


def prompts(conversations: list[Conversation]) -> list[str]:
    return [c[0].content for c in conversations]


def test_files_split_deterministically_without_overlap(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "qa_pairs.jsonl", numbered_pairs(50))
    source = ConversationFiles(train=str(path))
    assert source.name == "qa_pairs"
    splits = source.load()
    parts = [prompts(p) for p in (splits.train, splits.val, splits.test)]
    assert [len(p) for p in parts] == [40, 5, 5]
    assert sorted(p for part in parts for p in part) == sorted(prompts(read_conversations(path)))  # no overlap
    assert source.load() == splits
    other = ConversationFiles(train=str(path), seed=1).load()
    assert prompts(other.test) != parts[2]
    # the labeled-data split (SHA-256 of "seed:index"): the held-out conversations are the same everywhere
    assert parts[2] == [f"question {i}" for i in (46, 15, 44, 36, 20)]


def test_given_files_replace_held_out_splits(tmp_path: Path) -> None:
    train = str(write_jsonl(tmp_path / "train.jsonl", numbered_pairs(20)))
    val = str(write_json(tmp_path / "val.json", format_records("alpaca")))  # each file's format is its own
    test = str(write_jsonl(tmp_path / "test.jsonl", format_records("sharegpt")))
    splits = ConversationFiles(train=train, val=val, test=test).load()
    assert (len(splits.train), splits.test) == (20, EXPECTED)
    assert splits.val[0][0].content == "Translate to Spanish:\n\nhello"
    only_val = ConversationFiles(train=train, val=val, test_fraction=0.25).load()
    assert (len(only_val.train), len(only_val.val), len(only_val.test)) == (15, 2, 5)
    with pytest.raises(LmlabError, match=r"no validation conversations; give data.source.val or"):
        ConversationFiles(train=train, val_fraction=0.0).load()
    with pytest.raises(LmlabError, match=r"data.source.val_fraction=1.5 must lie in \[0, 1\)"):
        ConversationFiles(train=train, val_fraction=1.5).load()


def test_yaml_turns_become_stripped_text(tmp_path: Path) -> None:
    assert (clean_turn(42), clean_turn(" two\nlines \n"), clean_turn(None)) == ("42", "two\nlines", "")
    path = tmp_path / "numbers.yml"
    path.write_text("categories: [x]\nconversations:\n- - What is 6 times 7?\n  - 42\n- a stray string\n")
    assert yaml_conversations(path) == [["What is 6 times 7?", 42], ["a stray string"]]
    path.write_text("conversations:\n- - a\n  - [b\n")
    with pytest.raises(LmlabError, match=r"line \d of \S+numbers\.yml is not valid YAML; reinstall it with: pip"):
        yaml_conversations(path)


@needs_chatterbot
@pytest.mark.parametrize(
    ("language", "conversations", "messages", "first"),
    [
        ("english", 898, 2077, ("What is AI?", "Artificial Intelligence is the branch of engineering and science "
                                 "devoted to constructing machines that think.")),
        ("chinese", 465, 1015, ("什么是ai", "人工智能是工程和科学的分支,致力于构建具有思维的机器。")),
    ],
)  # fmt: skip
def test_chatterbot_counts_and_first_conversation(
    language: str, conversations: int, messages: int, first: tuple[str, str]
) -> None:
    everything = chatterbot_conversations(language)
    assert (len(everything), sum(map(len, everything))) == (conversations, messages)
    assert everything[0] == conversation(("user", first[0]), ("assistant", first[1]))
    assert all(m.role == ("user", "assistant")[i % 2] and m.content == m.content.strip()
               for c in everything for i, m in enumerate(c))  # fmt: skip
    source = Chatterbot(language)
    splits = source.load()
    assert source.name == f"chatterbot_{language}"
    parts = [splits.train, splits.val, splits.test]
    assert sum(map(len, parts)) == conversations and len(splits.test) == round(conversations * 0.1)
    assert Chatterbot(language).load() == splits
    assert Chatterbot(language, seed=1).load().test != splits.test
    assert not set(splits.train) & (set(splits.val) | set(splits.test))  # no conversation both learned and scored


@needs_chatterbot
def test_chatterbot_logs_the_one_turn_conversations_it_skips(caplog: pytest.LogCaptureFixture) -> None:
    chatterbot_conversations.cache_clear()  # the log line comes with the first read
    with caplog.at_level(logging.INFO, logger="lmlab.data.conversation_sources"):
        chatterbot_conversations("english")
    assert "Chatterbot english: skipped 1 one-turn conversations (no reply) and 1127 exact repeats" in caplog.text


@needs_chatterbot
def test_unknown_chatterbot_language_lists_the_folders() -> None:
    with pytest.raises(LmlabError, match=r"no language 'klingon'; choose one of: bengali, chinese, .*english"):
        Chatterbot("klingon").load()
    with pytest.raises(LmlabError, match=r"no language '\.\./english'"):
        Chatterbot("../english").load()


def test_missing_chatterbot_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "chatterbot_corpus" else real_find_spec(name)
    )
    chatterbot_conversations.cache_clear()  # read again, without the package
    with pytest.raises(LmlabError, match=CHATTERBOT_INSTALL.replace(".", r"\.")):
        Chatterbot("english").load()
