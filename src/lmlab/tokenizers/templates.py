"""Chat templates for supervised fine-tuning: messages -> token ids, and which of them the model learns to produce.

Two kinds:

- a pretrained tokenizer with its own chat template (`HFTokenizer.chat_template`, e.g. SmolLM2-Instruct's) renders
  the conversation as Transformers does; each assistant turn's tokens are found by rendering prefixes (the prompt up
  to the turn with the generation prompt, then up to and including the turn);
- lmlab's own char/BPE tokenizers use `LMLAB_TEMPLATE`: a role marker (a special token) before each turn's text and
  `<|end|>` after it, `<|system|>You are brief.<|end|><|user|>Hi<|end|><|assistant|>Hello!<|end|>`; the
  generation prompt is `<|assistant|>`.

In both, the trained tokens of an assistant turn are its text and the end-of-turn token that closes it (so the model
learns to stop); the marker that opens the turn belongs to the prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lmlab.errors import LmlabError
from lmlab.tokenizers.base import Tokenizer

ROLE_MARKERS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
"""The special token that opens a turn of each role in lmlab's own template."""
END_OF_TURN = "<|end|>"
"""The special token that closes every turn in lmlab's own template (and ends a generated reply)."""
TEMPLATE_TOKENS = (*ROLE_MARKERS.values(), END_OF_TURN)
"""The special tokens a char/BPE tokenizer needs for lmlab's template (SFT data adds them when training one)."""


@dataclass(frozen=True)
class Rendered:
    """A rendered conversation: its token ids, and for each whether the model is trained to produce it."""

    ids: list[int]
    trained: list[bool]

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.trained):
            raise ValueError(f"{len(self.ids)} ids but {len(self.trained)} trained flags")


def has_chat_template(tokenizer: Tokenizer) -> bool:
    """Whether the tokenizer brings its own chat template (a pretrained instruct tokenizer)."""
    return bool(getattr(tokenizer, "chat_template", None))


def render(tokenizer: Tokenizer, messages: Sequence[Any], add_generation_prompt: bool = False) -> Rendered:
    """Token ids of `messages` (`Message`s or {"role", "content"} dicts) in the tokenizer's chat template, or lmlab's
    own template for a tokenizer without one; `add_generation_prompt` appends what opens the assistant's reply."""
    turns = [_as_dict(m) for m in messages]
    if has_chat_template(tokenizer):
        return _render_with_template(tokenizer, turns, add_generation_prompt)
    return _render_lmlab(tokenizer, turns, add_generation_prompt)


def _as_dict(message: Any) -> dict[str, str]:
    if isinstance(message, dict):
        return {"role": str(message["role"]), "content": str(message["content"])}
    return {"role": message.role, "content": message.content}


def template_token_ids(tokenizer: Tokenizer) -> dict[str, int]:
    """Ids of lmlab's template tokens (`TEMPLATE_TOKENS`) in a char/BPE tokenizer; a one-line fix when any is absent."""
    ids = {token: special_token_id(tokenizer, token) for token in TEMPLATE_TOKENS}
    missing = [token for token, token_id in ids.items() if token_id is None]
    if missing:
        listed = ",".join(f"'{token}'" for token in TEMPLATE_TOKENS)  # quoted: Hydra's grammar reserves `|`
        raise LmlabError(
            f"the {tokenizer.kind} tokenizer has no chat template and lacks the special tokens {', '.join(missing)} "
            f'of lmlab\'s template; train it with "tokenizer.special_tokens=[{listed}]" (SFT data adds them to '
            "tokenizer=char/bpe), or use a tokenizer with a chat template"
        )
    return ids  # type: ignore[return-value]


def special_token_id(tokenizer: Tokenizer, token: str) -> int | None:
    """The id of a special token given by its text, or None (char: `special_tokens`; HF/BPE: the added tokens)."""
    specials = getattr(tokenizer, "special_tokens", None)
    if isinstance(specials, list):  # CharTokenizer: ids follow the alphabet
        return len(tokenizer.chars) + specials.index(token) if token in specials else None
    backend = getattr(tokenizer, "tokenizer", None)
    return backend.token_to_id(token) if backend is not None else None


def _render_lmlab(tokenizer: Tokenizer, turns: list[dict[str, str]], add_generation_prompt: bool) -> Rendered:
    """`<|role|>text<|end|>` per turn; the text and `<|end|>` of assistant turns are trained."""
    ids_of = template_token_ids(tokenizer)
    ids: list[int] = []
    trained: list[bool] = []
    for turn in turns:
        if turn["role"] not in ROLE_MARKERS:
            raise LmlabError(f"unknown role {turn['role']!r}; a message's role is one of {', '.join(ROLE_MARKERS)}")
        body = [*tokenizer.encode(turn["content"]), ids_of[END_OF_TURN]]
        ids += [ids_of[ROLE_MARKERS[turn["role"]]], *body]
        trained += [False] + [turn["role"] == "assistant"] * len(body)
    if add_generation_prompt:
        ids.append(ids_of[ROLE_MARKERS["assistant"]])
        trained.append(False)
    return Rendered(ids, trained)


def _render_with_template(tokenizer: Any, turns: list[dict[str, str]], add_generation_prompt: bool) -> Rendered:
    """Render with the tokenizer's own template; each assistant turn spans from the end of the rendered prompt
    before it (with the generation prompt) to the end of the rendering that includes it."""
    ids = tokenizer.apply_chat_template(turns, add_generation_prompt=add_generation_prompt)
    trained = [False] * len(ids)
    for i, turn in enumerate(turns):
        if turn["role"] != "assistant":
            continue
        start = len(_prefix_of(ids, tokenizer.apply_chat_template(turns[:i], add_generation_prompt=True)))
        end = len(_prefix_of(ids, tokenizer.apply_chat_template(turns[: i + 1], add_generation_prompt=False)))
        trained[start:end] = [True] * (end - start)
    return Rendered(list(ids), trained)


def _prefix_of(whole: list[int], prefix: list[int]) -> list[int]:
    if whole[: len(prefix)] != list(prefix):
        raise LmlabError(
            "the tokenizer's chat template renders earlier turns differently once later turns follow (it rewrites "
            "the history), so the assistant's tokens cannot be found; use a tokenizer whose template only appends"
        )
    return prefix
