"""Chat: conversations rendered with the tokenizer's chat template, and a multi-turn `ChatSession` that streams the
assistant's replies and keeps the conversation within the model's context."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence

from torch import nn

from lmlab.data.conversations import Message
from lmlab.errors import LmlabError
from lmlab.generation.text import GenerationConfig, stream_pieces
from lmlab.tokenizers import Tokenizer
from lmlab.tokenizers.templates import END_OF_TURN, has_chat_template, render, template_token_ids

log = logging.getLogger("lmlab")


def prompt_ids(tokenizer: Tokenizer, messages: Sequence[Message]) -> list[int]:
    """Token ids of `messages` in the tokenizer's chat template (lmlab's own role-marker template for char/BPE
    tokenizers trained with its tokens), ending with the opening of the assistant's reply."""
    require_template(tokenizer)
    return render(tokenizer, messages, add_generation_prompt=True).ids


def require_template(tokenizer: Tokenizer) -> None:
    """Refuse a tokenizer that can render no conversation, before any turn is typed."""
    if has_chat_template(tokenizer):
        return
    try:
        template_token_ids(tokenizer)
    except LmlabError as err:
        raise LmlabError(
            f"chatting needs a chat template, but this checkpoint's tokenizer ({tokenizer.kind}) has none (nor "
            "lmlab's role-marker tokens, which task=sft adds); use a checkpoint trained with task=sft or an instruct "
            "model's, or generate plain text: lmlab generate without chat=true"
        ) from err


def chat_prompt(tokenizer: Tokenizer, text: str) -> list[int]:
    """Token ids of `text` as one user turn in the tokenizer's chat template, ready for the assistant's reply."""
    return prompt_ids(tokenizer, [Message("user", text)])


def ending_turns(tokenizer: Tokenizer, config: GenerationConfig) -> GenerationConfig:
    """`config`, also stopping at the text that ends the assistant's turn in the tokenizer's template (if any)."""
    end = getattr(tokenizer, "end_of_turn", None) if has_chat_template(tokenizer) else END_OF_TURN
    if end and end not in config.stop:
        config = dataclasses.replace(config, stop=[*config.stop, end])
    return config


def chat_inputs(
    tokenizer: Tokenizer, texts: list[str], config: GenerationConfig
) -> tuple[list[str | list[int]], list[str], GenerationConfig]:
    """Each text as a user turn (token ids), the texts to print before the replies, and a config that also stops
    at the end of the assistant's turn."""
    prompts: list[str | list[int]] = [chat_prompt(tokenizer, t) for t in texts]
    return prompts, [f"{t}\n" for t in texts], ending_turns(tokenizer, config)


class ChatSession:
    """A conversation with a model: each user text is answered in the context of the turns before it.

    The prompt of a turn is the whole conversation (system prompt, earlier turns, the new user text) in the
    tokenizer's chat template. It must leave room in the model's `context` for the reply (`max_new_tokens`, at most
    half the context), so the oldest whole turns (a user text and its reply) are dropped when it does not; the
    system prompt is always kept. Each turn samples from `config.seed` + its number, so a session replays exactly.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Tokenizer,
        config: GenerationConfig,
        context: int,
        system: str | None = None,
    ) -> None:
        if context < 2:
            raise LmlabError(f"context={context} is too small to chat; give at least a few hundred tokens")
        self.model, self.tokenizer, self.context = model, tokenizer, context
        self.config = ending_turns(tokenizer, dataclasses.replace(config, num_samples=1))
        self.system = [Message("system", system)] if system else []
        self.history: list[Message] = []
        """The user's texts and the replies, alternating, oldest first (without the system prompt)."""
        self.turns = 0  # turns answered since the session began (seeds the sampling)
        self.dropped = 0  # turns dropped to fit the context
        require_template(tokenizer)

    @property
    def messages(self) -> list[Message]:
        """The conversation as the model sees it: the system prompt, then the history."""
        return [*self.system, *self.history]

    @property
    def budget(self) -> int:
        """Tokens the prompt may take: the context less the room kept for the reply."""
        return self.context - min(self.config.max_new_tokens, self.context // 2)

    def reset(self) -> None:
        """Forget the conversation (the system prompt stays)."""
        self.history.clear()

    def prompt(self, text: str) -> list[int]:
        """Token ids of the conversation with `text` as the next user turn, dropping the oldest turns to fit."""
        user = Message("user", text)
        ids = prompt_ids(self.tokenizer, [*self.messages, user])
        while len(ids) > self.budget and self.history:
            del self.history[:2]  # one whole turn: a user text and its reply
            self.dropped += 1
            if self.dropped == 1:
                log.warning("the conversation outgrew the model's context of %d tokens; its oldest turns are dropped",
                            self.context)  # fmt: skip
            ids = prompt_ids(self.tokenizer, [*self.messages, user])
        if len(ids) > self.budget:
            raise LmlabError(
                f"this message takes {len(ids)} tokens with the template and system prompt, more than the "
                f"{self.budget} the context leaves (context={self.context}, max_new_tokens="
                f"{self.config.max_new_tokens}); shorten it, or lower max_new_tokens"
            )
        return ids

    def stream(self, text: str) -> Iterator[str]:
        """Answer `text`: the reply piece by piece; once it is complete, both turns join the history.

        The prompt is built at once (a message too long for the context fails here, before any reply); the reply
        ends at the template's end of turn, a stop string, or after `max_new_tokens`. Its leading whitespace is left
        out, and its trailing whitespace from the history. A reply abandoned early (the caller stops iterating) is
        not recorded.
        """
        return self._reply(text, self.prompt(text))

    def _reply(self, text: str, ids: list[int]) -> Iterator[str]:
        config = dataclasses.replace(self.config, seed=self.config.seed + self.turns)
        pieces: list[str] = []
        for _, piece in stream_pieces(self.model, self.tokenizer, [ids], config, self.context):  # one sequence
            piece = piece if pieces else piece.lstrip()  # (a tokenizer may open the reply with a space)
            if piece:
                pieces.append(piece)
                yield piece
        self.history += [Message("user", text), Message("assistant", "".join(pieces).rstrip())]
        self.turns += 1

    def send(self, text: str) -> str:
        """Answer `text` and return the whole reply (as recorded in the history)."""
        for _ in self.stream(text):
            pass
        return self.history[-1].content
