"""Constrained decoding: continuations that must match a regular expression or a JSON schema.

`outlines-core` compiles the pattern against the tokenizer's vocabulary into a token-level automaton (an `Index`:
from each state, the tokens allowed and the state each leads to). lmlab adds what a fixed token budget needs: the
fewest tokens from every state to an accepting one, so that a row is steered to finish its match before
`max_new_tokens` runs out. Every continuation then matches, from an untrained model too. A row ends when its match
is complete and cannot grow, or when it draws the end token (allowed wherever the match is complete; never part of
the text).
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from lmlab.errors import LmlabError
from lmlab.tokenizers import Tokenizer

UNREACHABLE = 1 << 30
"""The distance of a state from which no accepting state can be reached."""


def schema_regex(schema: str | Mapping[str, Any]) -> str:
    """The regular expression of a JSON schema (a JSON string, a path to a .json file, or a mapping), as
    outlines-core writes it: the keys in the schema's order, at most one space where JSON allows whitespace."""
    from outlines_core.json_schema import build_regex_from_schema

    if isinstance(schema, str) and not schema.lstrip().startswith("{"):
        path = Path(schema).expanduser()
        if not path.is_file():
            raise LmlabError(f"json_schema={schema!r} is neither a JSON object nor a file; give a schema file path "
                             "or inline JSON, e.g. json_schema='{\"type\": \"integer\"}'")  # fmt: skip
        schema = path.read_text(encoding="utf-8")
    text = schema if isinstance(schema, str) else json.dumps(schema)
    try:
        json.loads(text)
        return build_regex_from_schema(text)
    except (ValueError, TypeError) as err:
        raise LmlabError(f"json_schema is not a schema lmlab can follow: {_first_line(err)}; see "
                         "docs/generation.md#constrained-decoding for the supported keywords") from err  # fmt: skip


class TokenConstraint:
    """A pattern compiled for one tokenizer: allowed tokens per state, and each state's distance (in tokens) to a
    complete match. Immutable; `start` makes the per-generation state."""

    def __init__(self, pattern: str, tokenizer: Tokenizer) -> None:
        from outlines_core import Index, Vocabulary

        texts = token_texts(tokenizer)
        self.end = _end_token(tokenizer)
        sentinel = max(texts, default=0) + 1  # outlines needs an end id: one no model produces when there is none
        by_text: dict[bytes, list[int]] = {}
        for token_id, text in texts.items():
            if text and token_id != self.end:
                by_text.setdefault(text, []).append(token_id)
        try:
            self.index = Index(pattern, Vocabulary(self.end if self.end is not None else sentinel, by_text))
        except (ValueError, RuntimeError) as err:
            raise LmlabError(f"the pattern {_short(pattern)} cannot be followed with this tokenizer: "
                             f"{_first_line(err)}; change the pattern or use a model whose tokenizer can write "
                             "it") from err  # fmt: skip
        self.pattern = pattern
        end_ids = {self.end, sentinel}
        self.transitions = {s: {t: n for t, n in moves.items() if t not in end_ids}
                            for s, moves in self.index.get_transitions().items()}  # fmt: skip
        self.final = set(self.index.get_final_states())
        self.distance = _distances_to_final(self.transitions, self.final)
        self.initial = self.index.get_initial_state()
        self._options: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def min_tokens(self) -> int:
        """The fewest tokens of any complete match."""
        return self.distance.get(self.initial, UNREACHABLE)

    def options(self, state: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The tokens allowed from `state` (n,) and the distance of the state each leads to (n,)."""
        if state not in self._options:
            moves = self.transitions.get(state, {})
            tokens = torch.tensor(list(moves), dtype=torch.long)
            distances = torch.tensor([self.distance.get(n, UNREACHABLE) for n in moves.values()], dtype=torch.long)
            self._options[state] = (tokens, distances)
        return self._options[state]

    def start(self, rows: int, max_new_tokens: int) -> ConstrainedRows:
        """The state of `rows` sequences about to generate at most `max_new_tokens` tokens each."""
        if self.min_tokens() > max_new_tokens:
            raise LmlabError(f"the pattern {_short(self.pattern)} needs at least {self.min_tokens()} tokens but "
                             f"max_new_tokens={max_new_tokens}; raise max_new_tokens")  # fmt: skip
        return ConstrainedRows(self, rows)


class ConstrainedRows:
    """Where each row of one generation stands in the pattern.

    Each step, `mask` leaves each row only the tokens that keep a complete match within the tokens left, and
    `advance` moves the rows by the drawn tokens. `complete[i]`: row i's match is done (no more text);
    `is_text[i]`: whether row i's last drawn token belongs to its text (not the end token, nor drawn after the end).
    """

    def __init__(self, constraint: TokenConstraint, rows: int) -> None:
        self.constraint = constraint
        self.states = [constraint.initial] * rows
        self.complete = [False] * rows
        self.is_text = [True] * rows

    def mask(self, logits: torch.Tensor, remaining: int) -> torch.Tensor:
        """Logits (B, V) with every token that would break row's match (within `remaining` tokens, this one
        included) set to -inf."""
        allowed = torch.zeros_like(logits, dtype=torch.bool)  # (B, V)
        end, V = self.constraint.end, logits.size(-1)
        for row, state in enumerate(self.states):
            if not self.complete[row]:
                tokens, distances = self.constraint.options(state)
                keep = tokens[(distances <= remaining - 1) & (tokens < V)]
                allowed[row, keep.to(logits.device)] = True
                final = state in self.constraint.final
                if final and end is not None and end < V:
                    allowed[row, end] = True
                self.complete[row] = final and not bool(allowed[row].any())  # nothing left to write
            if self.complete[row]:
                allowed[row] = True  # the row is over; whatever it draws is dropped
        return logits.masked_fill(~allowed, float("-inf"))

    def advance(self, tokens: torch.Tensor) -> None:
        """Move each row by its drawn token (B,)."""
        for row, token in enumerate(tokens.tolist()):
            if self.complete[row] or token == self.constraint.end:
                self.complete[row], self.is_text[row] = True, False
                continue
            state = self.constraint.transitions[self.states[row]][token]
            self.states[row] = state
            self.complete[row] = state in self.constraint.final and not self.constraint.transitions.get(state)


def token_texts(tokenizer: Tokenizer) -> dict[int, bytes]:
    """The text of each ordinary token id, as bytes (`token_texts` of lmlab's char and Hugging Face tokenizers)."""
    read = getattr(tokenizer, "token_texts", None)
    if read is None:
        raise LmlabError(f"constrained decoding needs a tokenizer that lists its tokens' texts (char, bpe, hf), not "
                         f"{getattr(tokenizer, 'kind', type(tokenizer).__name__)}")  # fmt: skip
    return read()


@lru_cache(maxsize=8)
def compile_constraint(pattern: str, tokenizer: Tokenizer) -> TokenConstraint:
    """`TokenConstraint(pattern, tokenizer)`, compiled once per pattern and tokenizer object."""
    return TokenConstraint(pattern, tokenizer)


def constraint_pattern(regex: str | None, json_schema: str | Mapping[str, Any] | None) -> str | None:
    """The one pattern of a generation's `regex` or `json_schema` (None when neither is set)."""
    if regex is not None and json_schema is not None:
        raise LmlabError("give regex or json_schema, not both (a schema is turned into a regex)")
    if json_schema is not None:
        return schema_regex(json_schema)
    if regex is not None:
        check_regex(regex)
    return regex


def check_regex(regex: str) -> None:
    """Refuse an empty or syntactically broken regular expression before any model loads (Python's syntax; the
    automaton's is the same for the common constructs)."""
    if not regex:
        raise LmlabError("regex is empty; give the pattern every continuation must match, e.g. regex='[0-9]{3}'")
    try:
        re.compile(regex)
    except re.error as err:
        raise LmlabError(f"regex {_short(regex)} is not a valid regular expression: {err}") from err


def _end_token(tokenizer: Tokenizer) -> int | None:
    """The token that ends a complete match: the chat template's end of turn or the end of sequence, else None."""
    from lmlab.generation.processors import end_token

    try:
        return end_token(tokenizer)
    except LmlabError:
        return None


def _distances_to_final(transitions: Mapping[int, Mapping[int, int]], final: set[int]) -> dict[int, int]:
    """The fewest tokens from each state to an accepting one (breadth-first from the accepting states backwards)."""
    backwards: dict[int, set[int]] = {}
    for state, moves in transitions.items():
        for following in moves.values():
            backwards.setdefault(following, set()).add(state)
    distance = dict.fromkeys(final, 0)
    queue = deque(final)
    while queue:
        state = queue.popleft()
        for previous in backwards.get(state, ()):
            if previous not in distance:
                distance[previous] = distance[state] + 1
                queue.append(previous)
    return distance


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _short(pattern: str, limit: int = 60) -> str:
    return repr(pattern if len(pattern) <= limit else pattern[:limit] + "…")
