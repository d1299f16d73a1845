"""`lmlab chat [ckpt=RUN] [system='...'] [input=FILE]`: talk with a model in the terminal, turn by turn.

The work is `lmlab.generation.chat.ChatSession`; this module loads the model and reads the turns: typed after a
`you> ` prompt, or the lines of `input` (for scripts). `/reset` forgets the conversation, `/exit` ends it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from lmlab.cli.generate import generation_config, load_language_model, read_lines, steered, steering_vector
from lmlab.cli.runner import hydra_entry
from lmlab.errors import LmlabError
from lmlab.terminal import visible

if TYPE_CHECKING:
    from torch import nn

    from lmlab.generation.chat import ChatSession
    from lmlab.tokenizers import Tokenizer

COMMANDS = {"/reset": "forget the conversation", "/exit": "end the chat"}
"""What may be typed besides messages (Ctrl+D and Ctrl+C end the chat too)."""


def load_pretrained(path: str, context: int, device: str) -> tuple[nn.Module, Tokenizer, int]:
    """A pretrained causal LM (GGUF file or HF folder) with its own tokenizer, and its context in tokens."""
    from lmlab.compute.hardware import pick_device
    from lmlab.generation.chat import require_template
    from lmlab.models import HFCausal, HFCausalConfig
    from lmlab.tokenizers import HFTokenizerConfig

    target = pick_device(device)
    tokenizer = HFTokenizerConfig(path).load()
    require_template(tokenizer)  # before the slow part
    model = HFCausal(HFCausalConfig(name_or_path=path, block_size=context))
    return model.to(target).eval(), tokenizer, model.config.block_size


def build_session(cfg: DictConfig) -> ChatSession:
    """The model of `ckpt` (else `pretrained`) with the command line's sampling settings and system prompt."""
    from lmlab.generation.chat import ChatSession

    config = generation_config(cfg)
    model, tokenizer, limit = load_model(cfg)
    context = min(int(cfg.context), limit)
    return ChatSession(model, tokenizer, config, context, cfg.system)


def load_model(cfg: DictConfig) -> tuple[nn.Module, Tokenizer, int]:
    """The model of `ckpt`, else `pretrained` (SmolLM2 from its offline package by default), its tokenizer and its
    context in tokens (`lmlab chat` and `lmlab serve` share it)."""
    if cfg.ckpt is not None:
        loaded = load_language_model(str(cfg.ckpt), str(cfg.device))
        return loaded.model, loaded.tokenizer, loaded.model_config.block_size
    return load_pretrained(str(cfg.pretrained), int(cfg.context or 2048), str(cfg.device))


def typed_turns() -> Iterator[str]:
    """Lines typed after `you> `, until end of input (Ctrl+D)."""
    if sys.stdin.isatty():
        import readline  # noqa: F401  (line editing and history for input())
    while True:
        try:
            yield input("you> ")
        except EOFError:
            print()
            return


def file_turns(lines: Iterable[str]) -> Iterator[str]:
    """The lines of an input file, each printed after `you> ` as if typed."""
    for line in lines:
        print(f"you> {visible(line)}")
        yield line


def converse(session: ChatSession, turns: Iterable[str], interactive: bool) -> None:
    """Answer each turn, streaming the reply after `bot> `; commands act on the session. A message the session
    refuses (too long for the context) is reported and skipped when typed, fatal when read from a file."""
    for line in turns:
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            return
        if text == "/reset":
            session.reset()
            print("(conversation cleared)")
        elif text.startswith("/") and " " not in text:
            print("commands: " + ", ".join(f"{name} ({does})" for name, does in COMMANDS.items()))
        else:
            try:
                pieces = session.stream(text)
            except LmlabError as err:
                if not interactive:
                    raise
                print(f"error: {err}", file=sys.stderr)
                continue
            sys.stdout.write("bot> ")
            for piece in pieces:
                sys.stdout.write(visible(piece))  # printed only: the history keeps the model's text
                sys.stdout.flush()
            sys.stdout.write("\n")


def chat(cfg: DictConfig) -> ChatSession:
    """Load the model, then answer the turns of `input` or those typed (steered by `steer.vector` if given); return
    the session."""
    turns = read_lines(cfg.input, "input", "user turn") if cfg.input is not None else None
    vector = steering_vector(cfg.get("steer"))
    session = build_session(cfg)
    with steered(session.model, vector, cfg.get("steer")):
        try:
            converse(session, typed_turns() if turns is None else file_turns(turns), interactive=turns is None)
        except KeyboardInterrupt:  # Ctrl+C ends the chat like /exit
            print()
    return session


main = hydra_entry("chat", chat)
