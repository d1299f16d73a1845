"""Reference-free text quality: distinct-n by hand, and continuation perplexity against a token-by-token count."""

from __future__ import annotations

import math

import pytest
import torch

from lmlab.errors import LmlabError
from lmlab.inference.text_quality import continuation_nll, distinct_n, perplexity
from lmlab.models import GPT, GPTConfig
from lmlab.tokenizers import CharTokenizerConfig

TEXT = "the cat sat on the mat and the dog sat on the log"


def test_distinct_n_counts_unique_ngrams_over_all_texts() -> None:
    assert distinct_n(["a b a b"], 2) == 2 / 3  # (a b), (b a), (a b)
    assert distinct_n(["a b", "a b"], 2) == 1 / 2  # pooled over the texts
    assert distinct_n(["a b c"], 1) == 1.0
    assert distinct_n(["a", ""], 2) == 0.0


def test_continuation_nll_scores_only_the_continuation_given_its_prompt() -> None:
    tokenizer = CharTokenizerConfig().train([TEXT])
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16))
    prompts, continuations = ["the c", "a", "the dog s"], ["at sat", "", "at on the log"]
    nats, tokens = continuation_nll(model, tokenizer, prompts, continuations, block_size=32, batch_size=2)
    expected = 0.0
    for prompt, continuation in zip(prompts, continuations, strict=True):
        ids = tokenizer.encode(prompt + continuation)
        logp = torch.log_softmax(model(torch.tensor([ids]))[0], dim=-1)  # (T, V)
        expected -= sum(float(logp[i - 1, ids[i]]) for i in range(len(tokenizer.encode(prompt)), len(ids)))
    assert tokens == len("at sat") + len("at on the log")
    assert nats == pytest.approx(expected, rel=1e-5)
    assert perplexity(nats, tokens) == pytest.approx(math.exp(expected / tokens), rel=1e-5)
    assert math.isnan(perplexity(0.0, 0))
    with pytest.raises(LmlabError, match="over the model's context"):
        continuation_nll(model, tokenizer, ["the"], ["cat" * 20], block_size=32)
