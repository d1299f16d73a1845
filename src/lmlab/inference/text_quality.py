"""How good generated text is, without references: fluency as perplexity under a language model, and diversity as
distinct-n (the share of n-grams that are unique), the two numbers controllable-generation papers report next to
the attribute they steer."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.tokenizers import Tokenizer


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct n-grams over all n-grams of the texts' words (whitespace-split), pooled over the texts (Li et al.,
    2016); 0 when there is no n-gram."""
    grams = [tuple(words[i : i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


@torch.no_grad()
def continuation_nll(
    model: nn.Module,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    continuations: Sequence[str],
    block_size: int,
    batch_size: int = 64,
) -> tuple[float, int]:
    """Total negative log-likelihood (nats) of each continuation's tokens given its prompt, and their count, under a
    causal `model`: `exp(nats / tokens)` is the continuations' perplexity. Prompt and continuation are encoded
    apart, as generation saw them; an empty continuation counts nothing."""
    if len(prompts) != len(continuations):
        raise LmlabError(f"{len(prompts)} prompts but {len(continuations)} continuations; give one prompt per text")
    rows = [(tokenizer.encode(p), tokenizer.encode(c)) for p, c in zip(prompts, continuations, strict=True)]
    if any(not p for p, _ in rows):
        raise LmlabError("every prompt needs at least one token: the first continuation token is scored given it")
    too_long = [len(p) + len(c) for p, c in rows if len(p) + len(c) > block_size + 1]
    if too_long:
        raise LmlabError(f"a prompt + continuation holds {max(too_long)} tokens, over the model's context of "
                         f"{block_size} + 1; score shorter texts")  # fmt: skip
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nats, tokens = 0.0, 0
    try:
        for start in range(0, len(rows), batch_size):
            batch = [(p, c) for p, c in rows[start : start + batch_size] if c]
            if not batch:
                continue
            width = max(len(p) + len(c) for p, c in batch) - 1
            x = torch.zeros(len(batch), width, dtype=torch.long)
            y = torch.full((len(batch), width), -100, dtype=torch.long)  # -100: not scored
            for row, (p, c) in enumerate(batch):
                ids = torch.tensor(p + c)
                x[row, : len(ids) - 1] = ids[:-1]
                y[row, len(p) - 1 : len(ids) - 1] = ids[len(p) :]
            logits = model(x.to(device)).float()  # (B, T, V)
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), y.to(device).flatten(), reduction="sum")
            nats += float(loss)
            tokens += int((y >= 0).sum())
    finally:
        model.train(was_training)
    return nats, tokens


def perplexity(nats: float, tokens: int) -> float:
    """`exp(nats / tokens)`; NaN when nothing was scored."""
    return math.exp(nats / tokens) if tokens else math.nan
