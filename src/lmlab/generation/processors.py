"""Logits processors: composable rules that reshape next-token logits (B, V) given the token ids so far (B, T).

Each processor is a small callable with the semantics of the Hugging Face processor of the same name (tested against
`transformers` on random logits), written as a pure function of its inputs: no state changes between steps, so the
same object serves any batch and any device. Config names each one (`processors: [{name: no_repeat_ngram, size:
3}]`); `build_processors` turns those specs into callables, encoding words with the checkpoint's tokenizer.

The ids a processor sees are one row's real tokens (prompt + generated, no padding): `apply_processors` runs rows of
equal padding together, so an n-gram or a prefix never spans the padding of a shorter prompt.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from lmlab.errors import LmlabError
from lmlab.generation.sampling import apply_min_p

if TYPE_CHECKING:
    from lmlab.tokenizers import Tokenizer


@runtime_checkable
class LogitsProcessor(Protocol):
    """New logits (B, V) from the logits (B, V) and the ids (B, T) each row has so far (prompt + generated)."""

    def __call__(self, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor: ...


class RepetitionPenalty:
    """CTRL's penalty: a seen token's positive logit is divided by `penalty`, a negative one multiplied (HF's
    `RepetitionPenaltyLogitsProcessor`); repeats count once."""

    def __init__(self, penalty: float) -> None:
        if not penalty > 0:
            raise LmlabError(f"repetition_penalty penalty={penalty} must be > 0 (1 = off), e.g. penalty=1.2")
        self.penalty = float(penalty)

    def __call__(self, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        if self.penalty == 1.0 or ids.numel() == 0:
            return logits
        seen = ids.clamp(max=logits.size(-1))  # ids past the head (a padded embedding) go to a spare column
        padded = torch.nn.functional.pad(logits, (0, 1))  # (B, V + 1)
        scores = padded.gather(-1, seen)  # (B, T)
        scores = torch.where(scores < 0, scores * self.penalty, scores / self.penalty)
        return padded.scatter(-1, seen, scores)[:, :-1]


class NoRepeatNGram:
    """Ban every token that would complete an n-gram of `size` tokens already in the row (HF's
    `NoRepeatNGramLogitsProcessor`): the last `size - 1` ids are looked up among all earlier n-grams."""

    def __init__(self, size: int) -> None:
        if not (isinstance(size, int) and size > 0):
            raise LmlabError(f"no_repeat_ngram size={size} must be a positive integer, e.g. size=3")
        self.size = size

    def __call__(self, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        T = ids.size(1)
        if self.size > T:
            return logits  # no complete n-gram yet
        grams = ids.unfold(1, self.size, 1)  # (B, T - size + 1, size) every n-gram of each row
        tail = ids[:, T - self.size + 1 :]  # (B, size - 1) what the next token would extend
        hits = (grams[..., :-1] == tail[:, None, :]).all(dim=-1)  # (B, W) n-grams that start like the tail
        rows, cols = hits.nonzero(as_tuple=True)
        banned = grams[rows, cols, -1]  # the tokens that completed them
        inside = banned < logits.size(-1)
        mask = torch.zeros_like(logits, dtype=torch.bool)
        mask[rows[inside], banned[inside]] = True
        return logits.masked_fill(mask, float("-inf"))


class SequenceBias:
    """Add a bias to the last token of each given id sequence when the row ends with the rest of it (HF's
    `SequenceBiasLogitsProcessor`): one-token sequences always, longer ones only after their prefix. Biases of
    sequences ending in the same token add up."""

    def __init__(self, biases: Mapping[tuple[int, ...], float]) -> None:
        if not biases or any(len(seq) == 0 or min(seq) < 0 for seq in biases):
            raise LmlabError("sequence_bias needs non-empty token sequences, e.g. bias={' thee': -5.0}")
        self.biases = {tuple(int(i) for i in seq): float(b) for seq, b in biases.items()}

    def __call__(self, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        V = logits.size(-1)
        too_big = sorted({i for seq in self.biases for i in seq if i >= V})
        if too_big:
            raise LmlabError(f"token ids {too_big} are outside the model's vocabulary of {V}; bias ids below {V}")
        bias = torch.zeros((V,), dtype=torch.float, device=logits.device)
        rows = torch.zeros_like(logits, dtype=torch.float)  # (B, V) biases that depend on each row's ending
        for seq, value in self.biases.items():
            *prefix, last = seq
            if not prefix:
                bias[last] += value
            elif len(prefix) <= ids.size(1):
                ends = (ids[:, -len(prefix) :] == ids.new_tensor(prefix)).all(dim=-1)  # (B,)
                rows[:, last] += torch.where(ends, value, 0.0)
        return logits + (bias + rows).to(logits.dtype)


class BadWords(SequenceBias):
    """Never end a row with one of the given id sequences: their last token gets -inf after their prefix (HF's
    `NoBadWordsLogitsProcessor`)."""

    def __init__(self, sequences: Iterable[Sequence[int]]) -> None:
        super().__init__({tuple(seq): float("-inf") for seq in sequences})


class MinP:
    """Drop tokens whose probability is below `min_p` times the top token's (HF's `MinPLogitsWarper`, one token
    kept at least); apply it after the temperature, so the cut follows the sampled distribution."""

    def __init__(self, min_p: float) -> None:
        if not 0 <= min_p <= 1:
            raise LmlabError(f"min_p={min_p} must lie in [0, 1] (0 or null = off), e.g. min_p=0.05")
        self.min_p = float(min_p)

    def __call__(self, logits: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        return apply_min_p(logits, self.min_p)


class ForcedEOS:
    """When a row holds `max_length - 1` ids, make its next token `eos` (every other logit -inf, eos 0), so it ends
    at `max_length` ids, prompt included (HF's `ForcedEOSTokenLogitsProcessor`)."""

    def __init__(self, max_length: int, eos: int | Sequence[int]) -> None:
        self.eos = [eos] if isinstance(eos, int) else [int(i) for i in eos]
        if not (isinstance(max_length, int) and max_length > 0) or not self.eos or min(self.eos) < 0:
            raise LmlabError(f"forced_eos needs max_length > 0 and an end token id, e.g. max_length=100 (got "
                             f"max_length={max_length}, eos={eos})")  # fmt: skip
        self.max_length = max_length

    def __call__(self, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        if ids.size(1) != self.max_length - 1:
            return logits
        forced = torch.full_like(logits, float("-inf"))
        forced[:, self.eos] = 0.0
        return forced


class MinLength:
    """While a row holds fewer than `min_length` ids (prompt included), its `eos` tokens get -inf, so it cannot end
    early (HF's `MinLengthLogitsProcessor`)."""

    def __init__(self, min_length: int, eos: int | Sequence[int]) -> None:
        self.eos = [eos] if isinstance(eos, int) else [int(i) for i in eos]
        if not (isinstance(min_length, int) and min_length >= 0) or not self.eos or min(self.eos) < 0:
            raise LmlabError(f"min_length needs min_length >= 0 and an end token id, e.g. min_length=20 (got "
                             f"min_length={min_length}, eos={eos})")  # fmt: skip
        self.min_length = min_length

    def __call__(self, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        if ids.size(1) >= self.min_length:
            return logits
        eos = [i for i in self.eos if i < logits.size(-1)]
        return logits.index_fill(-1, torch.tensor(eos, device=logits.device, dtype=torch.long), float("-inf"))


def apply_processors(
    logits: torch.Tensor,
    ids: torch.Tensor,
    processors: Sequence[LogitsProcessor],
    pad: torch.Tensor | Sequence[int] | None = None,
) -> torch.Tensor:
    """Run `processors` in order on logits (B, V) given the token matrix (B, T), left-padded by `pad` (B,).

    Rows of equal padding run together on their real ids only, so padding never counts as text. (A list of ints for
    `pad` keeps the grouping on the host: no device sync per step.)
    """
    if not processors:
        return logits
    pads = pad.tolist() if isinstance(pad, torch.Tensor) else list(pad or [])
    if not any(pads):
        for processor in processors:
            logits = processor(logits, ids)
        return logits
    out = torch.empty_like(logits)
    for p in sorted(set(pads)):
        rows = torch.tensor([i for i, q in enumerate(pads) if q == p], device=logits.device)
        out[rows] = apply_processors(logits[rows], ids[rows, p:], processors)
    return out


# --- from config ---------------------------------------------------------------------------------------------------


def _encode(tokenizer: Tokenizer, text: str, name: str) -> tuple[int, ...]:
    ids = tuple(tokenizer.encode(str(text)))
    if not ids:
        raise LmlabError(f"{name}: {text!r} encodes to no tokens; give non-empty text")
    return ids


def _repetition_penalty(tokenizer: Tokenizer, penalty: float) -> LogitsProcessor:
    return RepetitionPenalty(float(penalty))


def _no_repeat_ngram(tokenizer: Tokenizer, size: int) -> LogitsProcessor:
    return NoRepeatNGram(size)


def _bad_words(tokenizer: Tokenizer, words: Sequence[str] = (), ids: Sequence[Sequence[int]] = ()) -> LogitsProcessor:
    words = [words] if isinstance(words, str) else words  # `words: thee` means one word, not its letters
    sequences = [_encode(tokenizer, w, "bad_words") for w in words] + [tuple(map(int, s)) for s in ids]
    if not sequences:
        raise LmlabError("bad_words needs words (text) or ids (token id lists), e.g. {name: bad_words, words: [thee]}")
    return BadWords(sequences)


def _sequence_bias(tokenizer: Tokenizer, bias: Mapping[str, float] | Sequence[Sequence[Any]]) -> LogitsProcessor:
    pairs = bias.items() if isinstance(bias, Mapping) else [tuple(pair) for pair in bias]
    if any(len(pair) != 2 for pair in pairs):
        raise LmlabError("sequence_bias bias is a mapping {text: bias} or a list of [text, bias] pairs")
    biases: dict[tuple[int, ...], float] = {}
    for text, value in pairs:
        biases[_encode(tokenizer, text, "sequence_bias")] = float(value)
    return SequenceBias(biases)


def _forced_eos(tokenizer: Tokenizer, max_length: int, eos: str | None = None) -> LogitsProcessor:
    return ForcedEOS(int(max_length), end_token(tokenizer, eos))


def _min_length(tokenizer: Tokenizer, min_length: int, eos: str | None = None) -> LogitsProcessor:
    return MinLength(int(min_length), end_token(tokenizer, eos))


def end_token(tokenizer: Tokenizer, text: str | None = None) -> int:
    """The id of the special token or single token `text`. None: the end of turn of the tokenizer's chat template
    (what an instruct model emits, and a stop string of chat, so a forced end also ends the reply), else its
    end-of-sequence token, else lmlab's end of turn (char/BPE tokenizers trained for SFT)."""
    from lmlab.tokenizers.templates import END_OF_TURN, special_token_id  # (imports the chat templates)

    if text is None:
        turn_end = getattr(tokenizer, "end_of_turn", None)
        candidates = [
            special_token_id(tokenizer, turn_end) if turn_end else None,
            tokenizer.special_ids().get("eos"),
            special_token_id(tokenizer, END_OF_TURN),
        ]
        found = next((c for c in candidates if c is not None), None)
        if found is None:
            raise LmlabError("this tokenizer has no end-of-sequence token; name one for forced_eos/min_length, "
                             "e.g. eos='\\n'")  # fmt: skip
        return found
    found = special_token_id(tokenizer, text)
    if found is not None:
        return found
    ids = _encode(tokenizer, text, "eos")
    if len(ids) != 1:
        raise LmlabError(f"eos={text!r} is {len(ids)} tokens; give the text of one token (forced_eos/min_length)")
    return ids[0]


PROCESSORS: dict[str, Callable[..., LogitsProcessor]] = {
    "repetition_penalty": _repetition_penalty,
    "no_repeat_ngram": _no_repeat_ngram,
    "bad_words": _bad_words,
    "sequence_bias": _sequence_bias,
    "forced_eos": _forced_eos,
    "min_length": _min_length,
}
"""Processors by config name; each factory takes the tokenizer and the spec's other keys."""

ProcessorSpec = Mapping[str, Any] | LogitsProcessor
"""A processor in config (`{"name": "no_repeat_ngram", "size": 3}`) or an object already made (Python API)."""


def check_processor_spec(spec: ProcessorSpec) -> None:
    """Refuse an unknown name or argument before any model loads, naming what is valid."""
    if not isinstance(spec, Mapping):
        if not callable(spec):
            raise LmlabError(f"a processor is a mapping with a name, e.g. {{name: no_repeat_ngram, size: 3}}; got "
                             f"{spec!r}")  # fmt: skip
        return
    name = spec.get("name")
    if name not in PROCESSORS:
        raise LmlabError(f"unknown processor name {name!r}; valid names: {', '.join(PROCESSORS)}")
    signature = inspect.signature(PROCESSORS[name])
    try:
        signature.bind(None, **{k: v for k, v in spec.items() if k != "name"})
    except TypeError as err:
        keys = ", ".join(list(signature.parameters)[1:])
        raise LmlabError(f"processor {name}: {err}; its keys are: {keys}") from err


def build_processors(specs: Sequence[ProcessorSpec], tokenizer: Tokenizer) -> list[LogitsProcessor]:
    """Callables for `specs` in order; words and strings are encoded with `tokenizer`."""
    processors: list[LogitsProcessor] = []
    for spec in specs:
        check_processor_spec(spec)
        if isinstance(spec, Mapping):
            args = {k: v for k, v in spec.items() if k != "name"}
            try:
                processors.append(PROCESSORS[spec["name"]](tokenizer, **args))
            except (TypeError, ValueError) as err:  # a value of the wrong kind, e.g. size=abc
                raise LmlabError(f"processor {spec['name']}: {err}; see docs/generation.md for its keys") from err
        else:
            processors.append(spec)
    return processors
