"""Logits processors: parity with Hugging Face's processors on random logits, bans that hold while sampling, the
min-p floor, per-row ids in padded batches, and config errors."""

from __future__ import annotations

import itertools

import pytest
import torch
from transformers.generation import logits_process as hf

from lmlab.errors import LmlabError
from lmlab.generation import (
    PROCESSORS,
    BadWords,
    ForcedEOS,
    GenerationConfig,
    MinLength,
    MinP,
    NoRepeatNGram,
    RepetitionPenalty,
    SamplingOptions,
    SequenceBias,
    apply_processors,
    apply_repetition_penalty,
    build_processors,
    decode_steps,
    generate_text,
    process_logits,
)
from lmlab.generation.processors import end_token
from lmlab.models import GPT, GPTConfig
from lmlab.tokenizers import CharTokenizerConfig
from tests.helpers.chat import SYSTEM_TEMPLATE, chat_tokenizer

NAMES = ["repetition_penalty", "no_repeat_ngram", "bad_words", "sequence_bias", "forced_eos", "min_length"]
B, T, V = 4, 24, 12  # a small vocabulary, so random ids repeat n-grams and end with the biased prefixes


def random_case(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, V) of both signs and ids (B, T) over a small vocabulary."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, V, generator=g) * 3, torch.randint(0, V, (B, T), generator=g)


def same(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Equal within 1e-6, with -inf in the same places."""
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    finite = torch.isfinite(theirs)
    assert torch.allclose(ours[finite], theirs[finite], atol=1e-6, rtol=0)


# --- parity with transformers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("penalty", [1.3, 0.7])
@pytest.mark.parametrize("seed", range(3))
def test_repetition_penalty_matches_transformers(penalty: float, seed: int) -> None:
    logits, ids = random_case(seed)
    theirs = hf.RepetitionPenaltyLogitsProcessor(penalty)(ids, logits.clone())
    same(RepetitionPenalty(penalty)(logits, ids), theirs)
    same(apply_repetition_penalty(logits, ids, penalty), theirs)  # the `repetition_penalty` option's function
    assert not torch.allclose(theirs, logits)


@pytest.mark.parametrize("size", [1, 2, 3, 4])
@pytest.mark.parametrize("seed", range(3))
def test_no_repeat_ngram_matches_transformers(size: int, seed: int) -> None:
    logits, ids = random_case(seed)
    theirs = hf.NoRepeatNGramLogitsProcessor(size)(ids, logits.clone())
    same(NoRepeatNGram(size)(logits, ids), theirs)
    if size <= 2:
        assert torch.isinf(theirs).any()  # the case bans something
    same(NoRepeatNGram(T + 1)(logits, ids), logits)  # no complete n-gram yet


def biased_sequences(ids: torch.Tensor) -> dict[tuple[int, ...], float]:
    """One-token, two-token and three-token sequences; some end rows 0 and 1 of `ids`, two share a last token."""
    row0, row1 = ids[0].tolist(), ids[1].tolist()
    return {
        (3,): 2.5,
        (5,): -1.5,
        (row0[-1], 7): 4.0,  # matches row 0 (and any row ending like it)
        (row1[-2], row1[-1], 7): -3.0,  # the same last token after another prefix
        (row0[-1], 2): 1.25,
        (11, 11, 11, 9): 6.0,  # a prefix that hardly ever matches
    }


@pytest.mark.parametrize("seed", range(3))
def test_sequence_bias_matches_transformers(seed: int) -> None:
    logits, ids = random_case(seed)
    biases = biased_sequences(ids)
    theirs = hf.SequenceBiasLogitsProcessor([[list(k), v] for k, v in biases.items()])(ids, logits.clone())
    same(SequenceBias(biases)(logits, ids), theirs)
    same(SequenceBias({(1,) * (T + 1): 1.0})(logits, ids), logits)  # prefix longer than the ids


@pytest.mark.parametrize("seed", range(3))
def test_bad_words_match_transformers(seed: int) -> None:
    logits, ids = random_case(seed)
    banned = [list(k) for k in biased_sequences(ids)]
    theirs = hf.NoBadWordsLogitsProcessor(banned)(ids, logits.clone())
    ours = BadWords(banned)(logits, ids)
    same(ours, theirs)
    assert torch.isinf(ours[0, 7]) and torch.isinf(ours[:, 3]).all()  # after row 0's prefix; one token always


@pytest.mark.parametrize("min_p", [0.0, 0.05, 0.3, 1.0])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_min_p_after_temperature_matches_transformers(min_p: float, temperature: float) -> None:
    logits, ids = random_case(int(min_p * 100 + temperature * 10))
    theirs = hf.MinPLogitsWarper(min_p)(ids, hf.TemperatureLogitsWarper(temperature)(ids, logits.clone()))
    same(process_logits(logits, None, SamplingOptions(temperature=temperature, min_p=min_p)), theirs)
    same(MinP(min_p)(logits / temperature, ids), theirs)


def test_the_whole_sampling_chain_matches_transformers() -> None:
    logits, ids = random_case(7)
    chain = [
        hf.RepetitionPenaltyLogitsProcessor(1.2),
        hf.TemperatureLogitsWarper(0.8),
        hf.TopKLogitsWarper(8),
        hf.TopPLogitsWarper(0.9),
        hf.MinPLogitsWarper(0.1),
    ]
    theirs = logits.clone()
    for processor in chain:
        theirs = processor(ids, theirs)
    options = SamplingOptions(temperature=0.8, top_k=8, top_p=0.9, min_p=0.1, repetition_penalty=1.2)
    same(process_logits(logits, ids, options), theirs)


@pytest.mark.parametrize("length", [T - 1, T, T + 1, T + 2])
def test_forced_eos_matches_transformers(length: int) -> None:
    logits, ids = random_case(1)
    for eos in (4, [4, 9]):
        theirs = hf.ForcedEOSTokenLogitsProcessor(length, eos)(ids, logits.clone())
        same(ForcedEOS(length, eos)(logits, ids), theirs)
    forced = ForcedEOS(T + 1, 4)(logits, ids)
    assert forced.argmax(dim=-1).eq(4).all() and torch.isinf(forced).sum() == B * (V - 1)


@pytest.mark.parametrize("length", [0, T - 1, T, T + 1])
def test_min_length_matches_transformers(length: int) -> None:
    logits, ids = random_case(2)
    for eos in (4, [4, 9]):
        same(MinLength(length, eos)(logits, ids), hf.MinLengthLogitsProcessor(length, eos)(ids, logits.clone()))
    assert torch.isinf(MinLength(T + 1, 4)(logits, ids)[:, 4]).all()


# --- min-p keeps a token -------------------------------------------------------------------------------------------


def test_min_p_always_keeps_the_most_likely_token() -> None:
    flat = torch.randn(3, 200_000) * 1e-3  # every probability ~5e-6: tiny, and the top barely above the rest
    kept = torch.isfinite(MinP(1.0)(flat)).sum(dim=-1)
    assert kept.tolist() == [1, 1, 1]
    underflow = torch.full((2, 50), -1e30)  # softmax of these is NaN-free but every probability is tiny or 0
    underflow[:, 7] = -1e29
    out = MinP(0.5)(underflow)
    assert torch.isfinite(out).sum(dim=-1).tolist() == [1, 1] and out.argmax(dim=-1).eq(7).all()
    ties = torch.zeros(1, 10)  # all equally likely: all stay
    assert torch.isfinite(MinP(1.0)(ties)).all()


# --- in decoding ------------------------------------------------------------------------------------------------------


def tiny_gpt(vocab_size: int = 16, block_size: int = 8) -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=1, n_head=2, n_embd=16))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)  # larger weights: an untrained model that does not just repeat one token
    return model.eval()


PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8], [9], [10, 11, 3, 4]]


def sample(model: GPT, steps: int, processors=(), use_cache=True, options=None, prompts=PROMPTS) -> torch.Tensor:
    """The generated ids (B, steps) of `prompts`, each row from its own seed."""
    options = options or SamplingOptions(temperature=1.5)
    gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    steps_ = decode_steps(model, prompts, steps, 8, options, gens, use_cache, processors)
    return torch.stack(list(steps_), dim=1)


def pairs(prompts: list[list[int]], rows: torch.Tensor, first: int, second: int) -> int:
    """How often `second` follows `first` in the generated rows, or right after their prompt's last token."""
    joined = [p[-1:] + r for p, r in zip(prompts, rows.tolist(), strict=True)]
    return sum(a == first and b == second for row in joined for a, b in itertools.pairwise(row))


@pytest.mark.parametrize("use_cache", [True, False])
def test_banned_ids_never_appear_in_10000_sampled_tokens(use_cache: bool) -> None:
    model, prompts = tiny_gpt(), PROMPTS * 10  # 40 rows × 250 steps = 10,000 tokens
    lure = SequenceBias({(5,): 2.0, (3,): 1.0, (3, 4): 4.0})  # makes the banned ids likely, so a leak would show
    free = sample(model, 250, [lure], use_cache, prompts=prompts)
    assert (free == 5).sum() > 1000 and pairs(prompts, free, 3, 4) > 100
    banned = sample(model, 250, [lure, BadWords([[5], [3, 4]])], use_cache, prompts=prompts)
    assert banned.numel() == 10_000 and not (banned == 5).any()
    assert pairs(prompts, banned, 3, 4) == 0 and (banned == 3).sum() > 100  # 3 still comes, never followed by 4


def repeated_ngrams(row: list[int], n: int) -> int:
    grams = [tuple(row[i : i + n]) for i in range(len(row) - n + 1)]
    return len(grams) - len(set(grams))


def test_no_repeat_ngram_greedy_never_repeats_a_trigram_of_prompt_and_text() -> None:
    model, greedy = tiny_gpt(), SamplingOptions(temperature=0)
    loops = sample(model, 40, options=greedy)
    assert sum(repeated_ngrams(PROMPTS[i] + r, 3) for i, r in enumerate(loops.tolist())) > 0  # greedy loops
    for use_cache in (True, False):
        out = sample(model, 40, [NoRepeatNGram(3)], use_cache, greedy)
        assert all(repeated_ngrams(PROMPTS[i] + r, 3) == 0 for i, r in enumerate(out.tolist()))


def test_processors_see_each_rows_own_ids_in_a_padded_batch() -> None:
    model = tiny_gpt()
    processors = [NoRepeatNGram(2), SequenceBias({(9, 3): 3.0, (1,): -2.0}), ForcedEOS(9, 0)]
    options = SamplingOptions(temperature=1.0, min_p=0.05)
    batch = sample(model, 12, processors, options=options).tolist()
    for i, prompt in enumerate(PROMPTS):
        gen = [torch.Generator().manual_seed(i)]
        alone = torch.stack(list(decode_steps(model, [prompt], 12, 8, options, gen, True, processors)), 1)
        assert alone[0].tolist() == batch[i]
        assert batch[i][8 - len(prompt)] == 0  # forced at 9 ids of its own, prompt included


def test_the_repetition_penalty_processor_equals_the_option() -> None:
    model = tiny_gpt()
    option = sample(model, 30, options=SamplingOptions(temperature=1.0, repetition_penalty=1.5))
    processor = sample(model, 30, [RepetitionPenalty(1.5)], options=SamplingOptions(temperature=1.0))
    assert torch.equal(option, processor)


def test_apply_processors_runs_the_chain_in_order_on_each_rows_real_ids() -> None:
    logits, ids = random_case(3)
    out = apply_processors(logits, ids, [ForcedEOS(T + 1, 2), SequenceBias({(2,): -1.0})])
    assert out[:, 2].eq(-1.0).all() and torch.isinf(out).sum() == B * (V - 1)
    pad = torch.tensor([0, 3, 0, 5])  # rows 1 and 3 start later: their first ids are padding
    forced = apply_processors(logits, ids, [ForcedEOS(T - 2, 2)], pad)  # T - 3 real ids: row 1 only
    assert torch.isinf(forced).sum(dim=-1).tolist() == [0, V - 1, 0, 0]
    assert torch.equal(apply_processors(logits, ids, [NoRepeatNGram(2)], pad.tolist()),
                       apply_processors(logits, ids, [NoRepeatNGram(2)], pad))  # fmt: skip


# --- from config -------------------------------------------------------------------------------------------------


TEXT = "the cat sat on the mat; a bat ate the hat.\n"


def test_words_are_encoded_with_the_tokenizer_and_never_generated() -> None:
    tokenizer = CharTokenizerConfig().train([TEXT])
    model = tiny_gpt(vocab_size=tokenizer.vocab_size)
    specs = [{"name": "bad_words", "words": ["a", "t"]}, {"name": "sequence_bias", "bias": {"e": 3.0}}]
    config = GenerationConfig(max_new_tokens=300, sampling=SamplingOptions(temperature=2.0), processors=specs,
                              num_samples=3)  # fmt: skip
    completions = generate_text(model, tokenizer, ["the "], config, block_size=8)
    assert all(c.num_tokens == 300 and not {"a", "t"} & set(c.text) for c in completions)
    plain = generate_text(model, tokenizer, ["the "], GenerationConfig(300, SamplingOptions(2.0)), block_size=8)
    assert {"a", "t"} <= set(plain[0].text)


def test_build_processors_makes_each_named_processor() -> None:
    tokenizer = CharTokenizerConfig(["<eos>"]).train([TEXT])
    specs = [
        {"name": "repetition_penalty", "penalty": 1.2},
        {"name": "no_repeat_ngram", "size": 3},
        {"name": "bad_words", "words": ["cat"], "ids": [[1, 2]]},
        {"name": "sequence_bias", "bias": [["the", -1.0], ["a", 2.0]]},
        {"name": "forced_eos", "max_length": 20},
        {"name": "forced_eos", "max_length": 20, "eos": "\n"},
        {"name": "min_length", "min_length": 5},
    ]
    built = build_processors(specs, tokenizer)
    one_word = build_processors([{"name": "bad_words", "words": "cat"}], tokenizer)[0]  # a word, not three letters
    assert one_word.biases == {tuple(tokenizer.encode("cat")): float("-inf")}
    kinds = [RepetitionPenalty, NoRepeatNGram, BadWords, SequenceBias, ForcedEOS, ForcedEOS, MinLength]
    assert [type(p) for p in built] == kinds
    assert tuple(tokenizer.encode("cat")) in built[2].biases and built[3].biases[tuple(tokenizer.encode("the"))] == -1
    assert built[4].eos == [tokenizer.special_ids()["eos"]] and built[5].eos == tokenizer.encode("\n")
    assert built[6].eos == built[4].eos
    assert list(PROCESSORS) == NAMES


def test_the_default_end_token_is_the_chat_templates_end_of_turn() -> None:
    tokenizer = chat_tokenizer(SYSTEM_TEMPLATE)
    im_end = tokenizer.tokenizer.token_to_id("<|im_end|>")
    assert end_token(tokenizer) == end_token(tokenizer, "<|im_end|>") == im_end  # a special token's text: its id
    assert end_token(tokenizer, "there") == tokenizer.encode("there")[0]
    char = CharTokenizerConfig(["<eos>"]).train([TEXT])  # no template: its end-of-sequence token
    assert end_token(char) == char.special_ids()["eos"]


def test_an_unknown_processor_name_is_one_line_listing_the_valid_names() -> None:
    with pytest.raises(LmlabError) as err:
        GenerationConfig(processors=[{"name": "no_repeat_ngrams", "size": 3}])
    message = str(err.value)
    assert "\n" not in message and "'no_repeat_ngrams'" in message
    assert all(name in message for name in PROCESSORS)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"name": "no_repeat_ngram", "n": 3}, "no_repeat_ngram.*its keys are: size"),
        ({"name": "no_repeat_ngram"}, "missing a required argument"),
        ("no_repeat_ngram", "a mapping with a name"),
    ],
)
def test_bad_processor_arguments_name_the_keys(spec, match: str) -> None:
    with pytest.raises(LmlabError, match=match):
        GenerationConfig(processors=[spec])


def test_bad_processor_values_are_errors_naming_the_fix() -> None:
    tokenizer = CharTokenizerConfig().train([TEXT])
    for spec, match in [
        ({"name": "no_repeat_ngram", "size": 0}, "size=0 must be a positive integer"),
        ({"name": "forced_eos", "max_length": 5}, "no end-of-sequence token"),
        ({"name": "forced_eos", "max_length": 5, "eos": "the"}, "is 3 tokens"),
        ({"name": "bad_words"}, "needs words"),
        ({"name": "sequence_bias", "bias": {"": 1.0}}, "encodes to no tokens"),
        ({"name": "repetition_penalty", "penalty": "lots"}, "processor repetition_penalty: could not convert"),
    ]:
        with pytest.raises(LmlabError, match=match):
            build_processors([spec], tokenizer)
    with pytest.raises(LmlabError, match=r"min_p=1\.5"):
        SamplingOptions(min_p=1.5)
