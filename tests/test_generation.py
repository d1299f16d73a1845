"""Generation: sampling functions, KV-cache decoding against the plain loop, batching, seeds, stop strings, streams."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lmlab.errors import LmlabError
from lmlab.generation import (
    GenerationConfig,
    IncrementalDetokenizer,
    KVCacheDecoder,
    RecurrentDecoder,
    SamplingOptions,
    StopText,
    WindowDecoder,
    apply_repetition_penalty,
    apply_temperature,
    apply_top_k,
    apply_top_p,
    decode_steps,
    draw,
    generate,
    generate_text,
    left_pad,
    make_decoder,
    process_logits,
    sample_next,
    stream_pieces,
    stream_text,
)
from lmlab.models import GPT, LSTM, Bert, BertConfig, GPTConfig, LSTMConfig, NGram, NGramConfig
from lmlab.tokenizers import BPETokenizerConfig, CharTokenizer

INF = float("-inf")
GREEDY = SamplingOptions(temperature=0)
PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8], [9], [10, 11, 12]]  # different lengths, in one batch


# --- sampling functions -------------------------------------------------------------------------------------------


def test_temperature_divides_logits() -> None:
    assert apply_temperature(torch.tensor([[2.0, -4.0]]), 2.0).tolist() == [[1.0, -2.0]]


def test_top_k_keeps_the_k_largest() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert apply_top_k(logits, 2).tolist() == [[INF, 3.0, 2.0, INF]]
    assert apply_top_k(logits, None).equal(logits) and apply_top_k(logits, 0).equal(logits)


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    logits = torch.tensor([[0.15, 0.5, 0.05, 0.3]]).log()  # sorted: 0.5, 0.3, 0.15, 0.05

    def kept(p: float) -> list[bool]:
        return torch.isfinite(apply_top_p(logits, p))[0].tolist()

    assert kept(0.7) == [False, True, False, True]  # 0.5 + 0.3 = 0.8 >= 0.7
    assert kept(0.5) == [False, True, False, False]  # the most likely alone holds 0.5
    assert kept(0.81) == [True, True, False, True]
    assert kept(0.01) == [False, True, False, False]  # the most likely always stays
    assert kept(1.0) == [True] * 4


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits() -> None:
    logits = torch.tensor([[2.0, -2.0, 1.0], [2.0, -2.0, 1.0]])
    seen = torch.tensor([[0, 1, 1], [2, 2, 2]])  # repeats count once
    assert apply_repetition_penalty(logits, seen, 2.0).tolist() == [[1.0, -4.0, 1.0], [2.0, -2.0, 0.5]]
    assert apply_repetition_penalty(logits, seen, 1.0) is logits


def test_repetition_penalty_applies_before_greedy_choice() -> None:
    logits = torch.tensor([[2.0, 1.5]])
    assert sample_next(logits, temperature=0).item() == 0
    penalised = process_logits(logits, torch.tensor([[0]]), SamplingOptions(temperature=0, repetition_penalty=2.0))
    assert draw(penalised, greedy=True).item() == 1


def test_sampling_follows_the_filtered_distribution() -> None:
    logits = torch.tensor([[0.0, 5.0, 4.0, -1.0]]).expand(2000, 4)
    ids = sample_next(logits, temperature=1.0, top_k=2, generator=torch.Generator().manual_seed(0))
    assert set(ids.flatten().tolist()) == {1, 2}
    share = (ids == 1).float().mean().item()
    assert share == pytest.approx(1 / (1 + math.exp(-1)), abs=0.04)


def test_per_row_generators_make_a_row_independent_of_its_batch() -> None:
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(1))
    batch = draw(logits, generators=[torch.Generator().manual_seed(s) for s in (7, 8, 9)])
    alone = draw(logits[1:2], generators=[torch.Generator().manual_seed(8)])
    assert batch[1].item() == alone.item()


@pytest.mark.parametrize(
    "options",
    [{"temperature": -1}, {"top_k": -2}, {"top_p": 0.0}, {"top_p": 1.5}, {"repetition_penalty": 0}],
)
def test_bad_sampling_options_name_the_fix(options: dict) -> None:
    with pytest.raises(LmlabError, match=f"{next(iter(options))}="):
        SamplingOptions(**options)


# --- decoders: KV cache == plain loop -----------------------------------------------------------------------------


def spiky(model: torch.nn.Module, std: float = 0.3) -> torch.nn.Module:
    """Larger random weights, so greedy decoding of an untrained model does not just repeat one token."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, std)
    return model.eval()


def tiny_gpt(pos_embedding: str = "learned", block_size: int = 8) -> GPT:
    torch.manual_seed(0)
    shape = {"vocab_size": 50, "n_layer": 2, "n_head": 2, "n_embd": 32}
    return spiky(GPT(GPTConfig(**shape, block_size=block_size, pos_embedding=pos_embedding)))


def decode(model, prompts, steps: int, use_cache: bool, block_size: int = 8, options=GREEDY) -> list[list[int]]:
    gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    return torch.stack(list(decode_steps(model, prompts, steps, block_size, options, gens, use_cache)), 1).tolist()


@pytest.mark.parametrize("pos_embedding", ["learned", "rope"])
def test_kv_cache_greedy_equals_the_plain_loop_past_block_size(pos_embedding: str) -> None:
    model = tiny_gpt(pos_embedding)
    cached = decode(model, PROMPTS, 20, use_cache=True)  # prompts + 20 tokens run well past block_size=8
    plain = decode(model, PROMPTS, 20, use_cache=False)
    assert cached == plain
    assert len({t for row in cached for t in row}) > 5  # a real sequence, not one token repeated


@pytest.mark.parametrize("pos_embedding", ["learned", "rope"])
def test_forward_cached_gives_forward_logits_with_left_padding(pos_embedding: str) -> None:
    model = tiny_gpt(pos_embedding, block_size=16)
    idx = torch.randint(0, 50, (3, 12), generator=torch.Generator().manual_seed(0))
    pad = torch.tensor([3, 0, 1])
    with torch.no_grad():
        logits, cache = model.forward_cached(idx[:, :6], model.new_cache(3, pad))  # prefill
        steps = [logits]
        for t in range(6, 12):
            logits, cache = model.forward_cached(idx[:, t : t + 1], cache)
            steps.append(logits)
        got = torch.cat(steps, dim=1)  # (B, 12, V)
        for row in range(3):
            expected = model(idx[row : row + 1, pad[row] :])[0]
            torch.testing.assert_close(got[row, pad[row] :], expected, rtol=1e-5, atol=1e-5)
    assert cache.length == 12


def test_forward_cached_last_only_gives_the_last_logits() -> None:
    model = tiny_gpt(block_size=16)
    idx = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full, _ = model.forward_cached(idx, model.new_cache(2))
        last, cache = model.forward_cached(idx, model.new_cache(2), last_only=True)
        step, _ = model.forward_cached(idx[:, :1], cache, last_only=True)
        expected = model(torch.cat([idx, idx[:, :1]], dim=1))[:, -1:]
    assert last.shape == (2, 1, 50) and cache.length == 8
    torch.testing.assert_close(last, full[:, -1:])
    torch.testing.assert_close(step, expected, rtol=1e-5, atol=1e-5)


def test_forward_cached_refuses_to_overflow() -> None:
    model = tiny_gpt()
    cache = model.new_cache(1)
    model.forward_cached(torch.zeros(1, 8, dtype=torch.long), cache)
    with pytest.raises(LmlabError, match="block_size=8"):
        model.forward_cached(torch.zeros(1, 1, dtype=torch.long), cache)


def test_lstm_carries_its_state_instead_of_a_window() -> None:
    torch.manual_seed(0)
    model = spiky(LSTM(LSTMConfig(vocab_size=50, block_size=8, n_layer=2, n_embd=16, n_hidden=24)), std=0.5)
    carried = decode(model, PROMPTS, 20, use_cache=True)
    whole_history = decode(model, PROMPTS, 20, use_cache=False, block_size=10_000)
    assert carried == whole_history


def fitted_ngram() -> NGram:
    model = NGram(NGramConfig(vocab_size=50, block_size=8, order=3))
    model.fit(np.random.default_rng(0).integers(0, 50, 5000))
    return model.eval()


def test_decoder_kinds() -> None:
    pad = torch.zeros(1, dtype=torch.long)
    assert isinstance(make_decoder(tiny_gpt(), 8, pad), KVCacheDecoder)
    assert isinstance(make_decoder(tiny_gpt(), 8, pad, use_cache=False), WindowDecoder)
    assert isinstance(make_decoder(LSTM(LSTMConfig(vocab_size=50)), 8, pad), RecurrentDecoder)
    assert isinstance(make_decoder(fitted_ngram(), 8, pad), WindowDecoder)
    with pytest.raises(LmlabError, match="model=bert is a bidirectional encoder"):
        make_decoder(Bert(BertConfig(vocab_size=50)), 8, pad)


def test_left_pad() -> None:
    tokens, pad = left_pad([[1, 2], [3]])
    assert tokens.tolist() == [[1, 2], [0, 3]] and pad.tolist() == [0, 1]
    with pytest.raises(LmlabError, match="at least one token"):
        left_pad([[1], []])


@pytest.mark.parametrize("kind", ["gpt", "gpt_rope", "lstm", "ngram"])
def test_a_batch_of_different_lengths_decodes_as_one_at_a_time(kind: str) -> None:
    if kind == "lstm":
        model = spiky(LSTM(LSTMConfig(vocab_size=50, n_embd=16, n_hidden=24)), std=0.5)
    else:
        model = fitted_ngram() if kind == "ngram" else tiny_gpt("rope" if kind == "gpt_rope" else "learned")
    sampled = SamplingOptions(temperature=1.0, top_k=10, repetition_penalty=1.3)
    for options in (GREEDY, sampled):  # sampling too: each row draws from its own generator
        batch = decode(model, PROMPTS, 12, use_cache=True, options=options)
        alone = [
            torch.stack(list(decode_steps(model, [p], 12, 8, options, [torch.Generator().manual_seed(i)])), 1)
            for i, p in enumerate(PROMPTS)
        ]
        alone = [a[0].tolist() for a in alone]
        assert batch == alone


def test_generate_keeps_its_old_signature_and_training_mode() -> None:
    model = tiny_gpt().train()
    idx = torch.tensor([[1, 2, 3]])
    out = generate(model, idx, 10, 8, temperature=0)
    assert out.shape == (1, 13) and out[:, :3].equal(idx) and model.training
    with torch.no_grad():
        ids = idx
        for _ in range(10):  # the plain windowed loop
            ids = torch.cat([ids, model.eval()(ids[:, -8:])[:, -1:].argmax(-1)], dim=1)
    assert out.equal(ids)


# --- text: detokenizing, stop strings, streaming, seeds -----------------------------------------------------------


def test_incremental_detokenizer_waits_for_whole_characters() -> None:
    text = "héllo 😀 wörld, 中文!"
    tokenizer = BPETokenizerConfig(vocab_size=300).train(["hello world " * 20])  # non-ASCII stays in bytes
    ids = tokenizer.encode(text)
    assert len(ids) > len(text)  # some characters span several tokens
    detokenizer = IncrementalDetokenizer(tokenizer, tokenizer.encode("> "))
    pieces = [detokenizer.push(i) for i in ids] + [detokenizer.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)
    assert pieces.count("") > 0  # held back while a character was unfinished


def test_incremental_detokenizer_flushes_an_unfinished_character() -> None:
    tokenizer = BPETokenizerConfig(vocab_size=300).train(["hello world"])
    partial = tokenizer.encode("😀")[:2]
    detokenizer = IncrementalDetokenizer(tokenizer, tokenizer.encode("a"))
    assert [detokenizer.push(i) for i in partial] == ["", ""]
    assert detokenizer.flush() == tokenizer.decode(partial)


def test_stop_text_cuts_before_the_stop_string_and_never_shows_it() -> None:
    stop = StopText(["\n\n", "END"])
    shown = [stop.add(p) for p in ["ab", "c\n", "\nd"]]
    assert shown == ["ab", "c", ""] and stop.stopped and stop.text == "abc"
    assert stop.add("more") == "" and stop.finish() == ""


def test_stop_text_releases_a_false_alarm() -> None:
    stop = StopText(["END"])
    assert stop.add("xE") == "x"  # "E" may begin "END"
    assert stop.add("Nx") == "ENx"
    assert stop.add("EN") == "" and stop.finish() == "EN" and not stop.stopped


CHARS = CharTokenizer("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVW.,:\n")


def char_gpt() -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=CHARS.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=32)
    return spiky(GPT(config), std=0.2)


def sampled(seed: int = 0, **changes) -> GenerationConfig:
    return GenerationConfig(**{"max_new_tokens": 30, "sampling": SamplingOptions(0.9), "seed": seed, **changes})


def test_same_seed_same_text_different_seed_different_text() -> None:
    model = char_gpt()

    def texts(seed: int) -> list[str]:
        return [c.text for c in generate_text(model, CHARS, ["ab", "xyz"], sampled(seed), 16)]

    assert texts(1) == texts(1)
    assert texts(1) != texts(2)
    batched = generate_text(model, CHARS, ["ab", "xyz"], sampled(1, num_samples=2), 16)
    assert [c.sample for c in batched] == [0, 1, 0, 1]
    assert batched[0].text == texts(1)[0] and batched[2].text == texts(1)[1]  # sample 0 draws from the seed itself
    assert batched[0].text != batched[1].text


def test_stop_strings_end_each_sequence_on_its_own() -> None:
    model = char_gpt()
    free = generate_text(model, CHARS, ["ab", "xyz"], sampled(3), 16)
    stop = free[0].text[5:7]  # a string the first sequence produces
    cut = generate_text(model, CHARS, ["ab", "xyz"], sampled(3, stop=[stop]), 16)
    first = free[0].text.index(stop)
    assert cut[0].text == free[0].text[:first] and cut[0].stopped
    assert cut[0].num_tokens == first + len(stop)  # char tokenizer: one token per character
    if stop not in free[1].text:
        assert cut[1].text == free[1].text and not cut[1].stopped


@pytest.mark.parametrize("stop", [[], ["e"], ["\n", "th"]])
def test_streaming_yields_the_same_text(stop: list[str]) -> None:
    model = char_gpt()
    config = sampled(4, stop=stop, num_samples=2)
    completions = generate_text(model, CHARS, ["ab", "Q"], config, 16)
    streamed = ["", "", "", ""]
    for index, piece in stream_pieces(model, CHARS, ["ab", "Q"], config, 16):
        assert piece
        streamed[index] += piece
    assert streamed == [c.text for c in completions]
    assert "".join(stream_text(model, CHARS, "ab", config, 16)) == completions[0].text


def test_greedy_text_matches_with_and_without_cache() -> None:
    model = char_gpt()
    config = GenerationConfig(max_new_tokens=40, sampling=GREEDY)  # 40 tokens: past block_size=16
    cached = generate_text(model, CHARS, ["ab", "hello there"], config, 16)
    plain = generate_text(model, CHARS, ["ab", "hello there"], GenerationConfig(40, GREEDY, use_cache=False), 16)
    assert [c.text for c in cached] == [c.text for c in plain]


def test_empty_prompt_is_refused() -> None:
    with pytest.raises(LmlabError, match="prompt is empty"):
        generate_text(char_gpt(), CHARS, [""], sampled(), 16)


def test_a_prompt_with_characters_outside_the_alphabet_is_refused_naming_them() -> None:
    assert CHARS.unknown_characters("abé\tcé中") == {"é": 2, "\t": 1, "中": 1}  # in order of first appearance
    assert CHARS.unknown_characters("hello") == {} and CHARS.unknown_characters("\ufffd") == {}
    with pytest.raises(LmlabError, match=r"does not know: 'é', '\\t', '中'; remove or replace them"):
        generate_text(char_gpt(), CHARS, ["abé\tcé中"], sampled(), 16)
    ids = CHARS.encode("ab")
    assert generate_text(char_gpt(), CHARS, [ids], sampled(), 16)[0].text  # token ids are taken as they are


@pytest.mark.gpu
@pytest.mark.parametrize("pos_embedding", ["learned", "rope"])
def test_kv_cache_on_cuda_equals_the_plain_loop(pos_embedding: str) -> None:
    model = tiny_gpt(pos_embedding).cuda()
    assert decode(model, PROMPTS, 20, use_cache=True) == decode(model, PROMPTS, 20, use_cache=False)
    bf16 = decode(model.to(torch.bfloat16), PROMPTS, 20, use_cache=True)  # the cache takes the model's dtype
    assert all(0 <= t < 50 for row in bf16 for t in row)


@pytest.mark.gpu
def test_sampling_on_cuda_is_seeded_per_sequence() -> None:
    model = char_gpt().cuda()
    batched = generate_text(model, CHARS, ["ab", "xyz"], sampled(1, num_samples=2), 16)
    alone = generate_text(model, CHARS, ["xyz"], sampled(1), 16)
    assert batched[2].text == alone[0].text and batched[2].text != batched[3].text
