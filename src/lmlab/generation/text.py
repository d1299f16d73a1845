"""Text in, text out: prompts are encoded, decoded step by step, streamed in clean pieces and cut at stop strings."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.generation.constraints import compile_constraint, constraint_pattern
from lmlab.generation.decoding import decode_steps, generate
from lmlab.generation.processors import ProcessorSpec, build_processors, check_processor_spec
from lmlab.generation.sampling import SamplingOptions
from lmlab.tokenizers import Tokenizer
from lmlab.tokenizers.char import list_characters

_CONTEXT_TOKENS = 5
"""Tokens of context decoded with each new token, so decoders that change a token's text by its neighbours (a
SentencePiece word's leading space) give the same text as decoding the whole sequence."""


class IncrementalDetokenizer:
    """Turns the token ids of one continuation into text pieces as they arrive.

    A piece is released only once it decodes cleanly: a byte-level token that ends inside a UTF-8 character decodes
    to U+FFFD, so the text waits for the token that completes it. The pieces join to the continuation's text.
    """

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int]) -> None:
        self.tokenizer = tokenizer
        self.ids = list(prompt_ids)
        self.read = len(self.ids)  # ids before `read` are released as text
        self.prefix = max(0, self.read - _CONTEXT_TOKENS)  # decoding starts here, for context

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes (often empty while a character is unfinished)."""
        self.ids.append(token_id)
        return self._release(final=False)

    def flush(self) -> str:
        """Whatever text is still held back (e.g. an unfinished character at the end, as U+FFFD)."""
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        before = self.tokenizer.decode(self.ids[self.prefix : self.read])
        text = self.tokenizer.decode(self.ids[self.prefix :])
        if len(text) <= len(before) or (text.endswith("\ufffd") and not final):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(before) :]


class StopText:
    """The text of one continuation, ended at the first stop string (which is left out).

    Text that might be the start of a stop string is held back until the next pieces show it is not, so a streamed
    sequence never shows text that the final one drops.
    """

    def __init__(self, stop: Sequence[str] = ()) -> None:
        self.stop = [s for s in stop if s]
        self.text = ""
        self.released = 0  # characters of `text` handed out
        self.stopped = False

    def add(self, piece: str) -> str:
        """Append a piece; return the text now safe to show."""
        if self.stopped:
            return ""
        searched_from = max(0, len(self.text) - max((len(s) for s in self.stop), default=0))
        self.text += piece
        hits = [i for i in (self.text.find(s, searched_from) for s in self.stop) if i != -1]
        if hits:
            self.text, self.stopped = self.text[: min(hits)], True
            return self._release(len(self.text))
        return self._release(len(self.text) - self._held_back())

    def finish(self) -> str:
        """The rest of the text, once no more pieces come."""
        return self._release(len(self.text))

    def _held_back(self) -> int:
        """Length of the longest end of `text` that begins a stop string."""
        for n in range(min(len(self.text), max((len(s) for s in self.stop), default=0)), 0, -1):
            if any(s.startswith(self.text[-n:]) for s in self.stop):
                return n
        return 0

    def _release(self, end: int) -> str:
        piece = self.text[self.released : max(end, self.released)]
        self.released += len(piece)
        return piece


@dataclass
class GenerationConfig:
    """What to generate: how many tokens, how to sample, where to stop."""

    max_new_tokens: int = 200
    """Tokens generated per sequence at most."""
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    """Temperature, top-k, top-p, repetition penalty."""
    stop: list[str] = field(default_factory=list)
    """A sequence ends when its text contains one of these; the stop string is not returned."""
    num_samples: int = 1
    """Sequences per prompt."""
    seed: int = 0
    """Sample `s` of every prompt draws from seed + s, so the same seed gives the same text, batched or not."""
    use_cache: bool = True
    """KV cache (GPT, hf_causal) or carried state (LSTM); False runs the plain windowed loop."""
    processors: list[ProcessorSpec] = field(default_factory=list)
    """Logits processors applied in order after the repetition penalty, before temperature and the filters:
    `{"name": "no_repeat_ngram", "size": 3}` and the like (`lmlab.generation.processors.PROCESSORS`), words encoded
    with the model's tokenizer, or `LogitsProcessor` objects."""
    regex: str | None = None
    """Every continuation matches this regular expression (in full) within `max_new_tokens`."""
    json_schema: str | Mapping[str, Any] | None = None
    """Every continuation is JSON valid under this schema (a JSON string, a .json file or a mapping)."""
    pattern: str | None = field(init=False, default=None)
    """The regular expression the continuations follow (`regex`, or the one written from `json_schema`)."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise LmlabError(f"max_new_tokens={self.max_new_tokens} must be >= 0, e.g. max_new_tokens=200")
        if self.num_samples < 1:
            raise LmlabError(f"num_samples={self.num_samples} must be at least 1")
        self.stop = [str(s) for s in self.stop]
        self.processors = list(self.processors)
        for spec in self.processors:
            check_processor_spec(spec)
        self.pattern = constraint_pattern(self.regex, self.json_schema)


@dataclass
class Completion:
    """One generated sequence."""

    prompt: str
    text: str
    """The continuation (without the prompt, cut before any stop string)."""
    sample: int = 0
    """Which sample of its prompt."""
    num_tokens: int = 0
    """Tokens generated, including those of the stop string."""
    stopped: bool = False
    """True if a stop string ended it, False if `max_new_tokens` did."""


@dataclass
class _Sequence:
    completion: Completion
    detokenizer: IncrementalDetokenizer
    stop: StopText

    def push(self, token_id: int) -> str:
        self.completion.num_tokens += 1
        return self.stop.add(self.detokenizer.push(token_id))

    def finish(self) -> str:
        piece = self.stop.add(self.detokenizer.flush()) + self.stop.finish()
        self.completion.text, self.completion.stopped = self.stop.text, self.stop.stopped
        return piece


def encode_prompt(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """Token ids of a prompt; an empty prompt, or one with characters the tokenizer does not know, is refused."""
    unknown = getattr(tokenizer, "unknown_characters", None)  # char tokenizers; byte-level ones know every text
    if unknown is not None and (chars := unknown(prompt)):
        raise LmlabError(
            f"the prompt has characters the model's tokenizer does not know: {list_characters(chars)}; remove or "
            "replace them (a char tokenizer knows only the characters of its training text)"
        )
    ids = tokenizer.encode(prompt)
    if not ids:
        raise LmlabError("the prompt is empty; give some text to continue, e.g. prompt='ROMEO:'")
    return ids


def stream_pieces(
    model: nn.Module,
    tokenizer: Tokenizer,
    prompts: Sequence[str | Sequence[int]],
    config: GenerationConfig,
    block_size: int,
) -> Iterator[tuple[int, str]]:
    """Yield (sequence index, text piece) as tokens are produced; the pieces of a sequence join to its text.

    A prompt is text or its token ids. Sequence `i` is sample `i % num_samples` of prompt `i // num_samples`.
    """
    for index, piece in _run(model, tokenizer, prompts, config, block_size, []):
        if piece:
            yield index, piece


def generate_text(
    model: nn.Module,
    tokenizer: Tokenizer,
    prompts: Sequence[str | Sequence[int]],
    config: GenerationConfig,
    block_size: int,
    on_text: Callable[[int, str], None] | None = None,
) -> list[Completion]:
    """Continue each prompt `config.num_samples` times, in one batch; `on_text(i, piece)` streams the text."""
    completions: list[Completion] = []
    for index, piece in _run(model, tokenizer, prompts, config, block_size, completions):
        if on_text is not None and piece:
            on_text(index, piece)
    return completions


def stream_text(
    model: nn.Module, tokenizer: Tokenizer, prompt: str, config: GenerationConfig, block_size: int
) -> Iterator[str]:
    """The continuation of one prompt (first sample), piece by piece as it is generated."""
    for index, piece in stream_pieces(model, tokenizer, [prompt], config, block_size):
        if index == 0:
            yield piece


def _run(
    model: nn.Module,
    tokenizer: Tokenizer,
    prompts: Sequence[str | Sequence[int]],
    config: GenerationConfig,
    block_size: int,
    completions: list[Completion],
) -> Iterator[tuple[int, str]]:
    """Decode every sequence; yield its text pieces; fill `completions` when done."""
    encoded = [encode_prompt(tokenizer, p) if isinstance(p, str) else list(p) for p in prompts]
    sequences = [
        _Sequence(
            Completion(p if isinstance(p, str) else tokenizer.decode(ids), "", sample),
            IncrementalDetokenizer(tokenizer, ids),
            StopText(config.stop),
        )
        for p, ids in zip(prompts, encoded, strict=True)
        for sample in range(config.num_samples)
    ]
    rows = [ids for ids in encoded for _ in range(config.num_samples)]
    device = next(iter([*model.parameters(), *model.buffers()])).device
    generators = [torch.Generator(device=device).manual_seed(config.seed + s.completion.sample) for s in sequences]
    processors = build_processors(config.processors, tokenizer)
    constraint = None
    if config.pattern is not None:
        constraint = compile_constraint(config.pattern, tokenizer).start(len(rows), config.max_new_tokens)
    steps = decode_steps(model, rows, config.max_new_tokens, block_size, config.sampling, generators, config.use_cache,
                         processors, constraint)  # fmt: skip
    done = [False] * len(sequences)
    try:
        for next_ids in steps:
            for index, token_id in enumerate(next_ids.tolist()):
                if done[index] or (constraint is not None and not constraint.is_text[index]):
                    done[index] = True  # a constrained row's end token is not text
                    continue
                yield index, sequences[index].push(token_id)
                done[index] = sequences[index].stop.stopped or (constraint is not None and constraint.complete[index])
            if all(done):
                break
    finally:
        steps.close()  # restores the model's training mode even when the caller stops early
    for index, sequence in enumerate(sequences):
        yield index, sequence.finish()
        completions.append(sequence.completion)


def sample_continuation(
    model: nn.Module,
    tokenizer: Tokenizer,
    block_size: int,
    prompt: str = "\n",
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = None,
    seed: int = 0,
) -> str:
    """Continue `prompt` with the model (the end-of-run and per-validation samples); the same seed gives the same
    text."""
    ids = tokenizer.encode(prompt) or [0]
    device = next(iter([*model.parameters(), *model.buffers()])).device
    idx = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T)
    generator = torch.Generator(device=device).manual_seed(seed)
    out = generate(model, idx, max_new_tokens, block_size, temperature, top_k, generator)
    return tokenizer.decode(out[0].tolist())
