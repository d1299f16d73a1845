"""Prompts as chat turns: a user's text rendered with the tokenizer's chat template, ready for the reply."""

from __future__ import annotations

import dataclasses

from lmlab.errors import LmlabError
from lmlab.generation.text import GenerationConfig
from lmlab.tokenizers import Tokenizer


def chat_prompt(tokenizer: Tokenizer, text: str) -> list[int]:
    """Token ids of `text` as one user turn in the tokenizer's chat template, ready for the assistant's reply.

    A tokenizer offers a template through `apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
    return_dict=False) -> list[int]` (the Transformers signature): pretrained `hf` tokenizers whose source had one
    (e.g. SmolLM2-Instruct's GGUF). lmlab's own `char` and `bpe` tokenizers have none.
    """
    apply = getattr(tokenizer, "apply_chat_template", None)
    if not callable(apply) or not getattr(tokenizer, "chat_template", None):
        raise LmlabError(
            f"chat=true needs a chat template, but this checkpoint's tokenizer ({tokenizer.kind}) has none; "
            "drop chat=true and give the prompt as plain text"
        )
    messages = [{"role": "user", "content": text}]
    return list(apply(messages, add_generation_prompt=True, tokenize=True, return_dict=False))


def chat_inputs(
    tokenizer: Tokenizer, texts: list[str], config: GenerationConfig
) -> tuple[list[str | list[int]], list[str], GenerationConfig]:
    """Each text as a user turn (token ids), the texts to print before the replies, and a config that also stops
    at the end of the assistant's turn."""
    prompts: list[str | list[int]] = [chat_prompt(tokenizer, t) for t in texts]
    end = getattr(tokenizer, "end_of_turn", None)
    if end and end not in config.stop:
        config = dataclasses.replace(config, stop=[*config.stop, end])
    return prompts, [f"{t}\n" for t in texts], config
