from __future__ import annotations

import itertools
from collections import Counter
from fractions import Fraction as F
from pathlib import Path

import numpy as np
import pytest
import torch

from lmlab.errors import LmlabError
from lmlab.models.ngram import FALLBACK_DISCOUNTS, NGram, NGramConfig, kn_discounts

SONNET = """Shall I compare thee to a summer's day?
Thou art more lovely and more temperate:
Rough winds do shake the darling buds of May,
And summer's lease hath all too short a date;
Sometime too hot the eye of heaven shines,
And often is his gold complexion dimm'd;
And every fair from fair sometime declines,
By chance or nature's changing course untrimm'd;
But thy eternal summer shall not fade,
Nor lose possession of that fair thou ow'st;
Nor shall death brag thou wander'st in his shade,
When in eternal lines to time thou grow'st:
So long as men can breathe or eyes can see,
So long lives this, and this gives life to thee.
"""


def fitted(ids: list[int] | np.ndarray, vocab_size: int, order: int, **overrides) -> NGram:
    config = NGramConfig(vocab_size=vocab_size, block_size=overrides.pop("block_size", 16), order=order, **overrides)
    model = NGram(config)
    model.fit(np.asarray(ids, dtype=np.uint16))
    return model


def encode(words: str, vocab: list[str]) -> list[int]:
    return [vocab.index(w) for w in words.split()]


def sonnet_ids() -> tuple[np.ndarray, int]:
    chars = sorted(set(SONNET))
    return np.array([chars.index(c) for c in SONNET], dtype=np.uint16), len(chars)


@pytest.mark.parametrize("smoothing", ["kneser_ney", "add_k"])
@pytest.mark.parametrize("order", [1, 2, 3, 5])
def test_distribution_sums_to_one_for_seen_and_unseen_contexts(smoothing: str, order: int) -> None:
    ids, V = sonnet_ids()
    model = fitted(ids, V + 1, order, smoothing=smoothing, k=0.5)  # id V never occurs: contexts with it are unseen
    seen = torch.from_numpy(ids[:16].astype(np.int64))
    unseen = seen.clone()
    unseen[::3] = V
    idx = torch.stack([seen, unseen])  # (2, 16)
    probs = model.next_token_probs(idx)  # (2, 16, V + 1), float64
    assert probs.dtype == torch.float64
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 16, dtype=torch.float64), atol=1e-12, rtol=0)
    assert (probs > 0).all()
    log_probs = model(idx)
    assert log_probs.dtype == torch.float32 and log_probs.shape == (2, 16, V + 1)
    torch.testing.assert_close(
        log_probs.double().exp().sum(-1), torch.ones(2, 16, dtype=torch.float64), atol=1e-6, rtol=0
    )


def test_discounts_follow_chen_goodman_and_fall_back_when_undefined() -> None:
    n1, n2, n3, n4 = 10, 5, 3, 2
    y = n1 / (n1 + 2 * n2)
    assert kn_discounts(n1, n2, n3, n4) == pytest.approx(
        (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3), abs=1e-15
    )
    assert kn_discounts(3, 1, 0, 0) == FALLBACK_DISCOUNTS  # n3 = 0: D2 would divide by zero
    assert kn_discounts(4, 1, 1, 0) == FALLBACK_DISCOUNTS  # D2 = 2 - 3 (2/3) (1/1) = 0 is out of (0, 2]
    assert kn_discounts(0, 0, 0, 0) == FALLBACK_DISCOUNTS


def test_bigram_kneser_ney_matches_hand_computation() -> None:
    vocab = ["the", "cat", "sat", "ran", "dog"]  # "dog" never occurs
    the, cat, sat, ran, dog = range(5)
    model = fitted(encode("the the cat sat the cat sat the cat ran", vocab), 5, 2)

    # Bigram counts: the·the 1, the·cat 3, cat·sat 2, sat·the 2, cat·ran 1 -> n1 = 2, n2 = 2, n3 = 1, n4 = 0.
    Y = F(2, 2 + 2 * 2)
    discounts = (1 - 2 * Y * F(2, 2), 2 - 3 * Y * F(1, 2), 3 - 4 * Y * F(0, 1))
    assert discounts == (F(1, 3), F(3, 2), 3)
    D1, D2, D3 = discounts
    assert model.discounts(2) == pytest.approx((float(D1), float(D2), float(D3)), abs=1e-15)

    # Continuation counts N1+(• w): the {the, sat} 2, cat {the} 1, sat {cat} 1, ran {cat} 1, dog 0; sum 5.
    # Count-of-counts n1 = 3, n2 = 1, n3 = 0 leave D2 undefined, so the fallback (1/2, 1, 3/2) applies.
    assert model.discounts(1, continuation=True) == FALLBACK_DISCOUNTS
    d1, d2 = F(1, 2), F(1)
    gamma = (3 * d1 + 1 * d2) / 5
    p1 = [(2 - d2) / 5 + gamma / 5, (1 - d1) / 5 + gamma / 5, (1 - d1) / 5 + gamma / 5, (1 - d1) / 5 + gamma / 5]
    p1.append(gamma / 5)  # dog
    assert sum(p1) == 1

    # Context "the": c = 4 from the·the 1 (discount D1) and the·cat 3 (discount D3+).
    gamma_the = (D1 + D3) / 4
    p_the = [gamma_the * p for p in p1]
    p_the[the] += (1 - D1) / 4
    p_the[cat] += (3 - D3) / 4
    # Context "cat": c = 3 from cat·sat 2 (D2) and cat·ran 1 (D1).
    gamma_cat = (D2 + D1) / 3
    p_cat = [gamma_cat * p for p in p1]
    p_cat[sat] += (2 - D2) / 3
    p_cat[ran] += (1 - D1) / 3
    # Context "dog" was never seen: all its mass goes to the lower order.
    expected = [p_the, p_cat, p1]

    probs = model.next_token_probs(torch.tensor([[the, cat, dog]]))[0]  # (3, 5)
    for row, want in zip(probs.tolist(), expected, strict=True):
        assert row == pytest.approx([float(p) for p in want], abs=1e-9, rel=0)


def test_trigram_kneser_ney_matches_hand_computation() -> None:
    vocab = ["to", "be", "or", "not", "that"]  # "that" never occurs
    be, or_, not_ = 1, 2, 3
    model = fitted(encode("to be or be or be or be not to", vocab), 5, 3)

    # Trigram counts: to·be·or 1, be·or·be 3, or·be·or 2, or·be·not 1, be·not·to 1 -> n = (3, 1, 1, 0).
    Y = F(3, 3 + 2 * 1)
    discounts = (1 - 2 * Y * F(1, 3), 2 - 3 * Y * F(1, 1), 3 - 4 * Y * F(0, 1))
    assert discounts == (F(3, 5), F(1, 5), 3)
    D1, D2, D3 = discounts
    assert model.discounts(3) == pytest.approx((float(D1), float(D2), float(D3)), abs=1e-15)
    # Lower orders (continuation counts) all have n3 = 0: fallback discounts.
    d1, d2 = F(1, 2), F(1)

    # Unigram continuation counts from distinct bigrams: to 1 (not·), be 2 (to·, or·), or 1, not 1, that 0; sum 5.
    g1 = (3 * d1 + 1 * d2) / 5
    p1 = [(1 - d1) / 5 + g1 / 5, (2 - d2) / 5 + g1 / 5, (1 - d1) / 5 + g1 / 5, (1 - d1) / 5 + g1 / 5, g1 / 5]
    # Bigram continuation counts from distinct trigrams, context "be": be·or 2 (to·, or·), be·not 1 (or·); sum 3.
    g2 = (d2 + d1) / 3
    p2_be = [g2 * p for p in p1]
    p2_be[or_] += (2 - d2) / 3
    p2_be[not_] += (1 - d1) / 3
    # Raw trigram counts, context "or be": or·be·or 2 (D2), or·be·not 1 (D1); sum 3.
    g3 = (D2 + D1) / 3
    p3 = [g3 * p for p in p2_be]
    p3[or_] += (2 - D2) / 3
    p3[not_] += (1 - D1) / 3
    # Position 0 sees only "or": the bigram model fits, with raw bigram counts at its top order.
    # Raw bigram counts: to·be 1, be·or 3, or·be 3, be·not 1, not·to 1 -> n2 = 0 -> fallback; context "or": or·be 3.
    g_or = F(3, 2) / 3
    p2_or = [g_or * p for p in p1]
    p2_or[be] += (3 - F(3, 2)) / 3
    assert sum(p3) == 1 and sum(p2_or) == 1

    probs = model.next_token_probs(torch.tensor([[or_, be]]))[0]  # (2, 5)
    assert probs[0].tolist() == pytest.approx([float(p) for p in p2_or], abs=1e-9, rel=0)
    assert probs[1].tolist() == pytest.approx([float(p) for p in p3], abs=1e-9, rel=0)


def test_add_k_matches_its_formula() -> None:
    vocab = ["a", "b", "c", "d"]
    a, b, d = 0, 1, 3
    k, V = 0.5, 4
    model = fitted(encode("a b a b a c b a", vocab), V, 3, smoothing="add_k", k=k)
    probs = model.next_token_probs(torch.tensor([[b, a, d]]))[0]  # (3, 4)
    # Position 0 ("b"): only bigram history; bigram counts b·a 3 -> (c + k) / (3 + kV).
    assert probs[0].tolist() == pytest.approx([(3 + k) / (3 + k * V)] + [k / (3 + k * V)] * 3, abs=1e-12)
    # Position 1 ("b a"): trigram counts b·a·b 1, b·a·c 1 -> (c + k) / (2 + kV), and 2 + kV = 4.
    assert probs[1].tolist() == pytest.approx([k / 4, (1 + k) / 4, (1 + k) / 4, k / 4], abs=1e-12)
    # Position 2 ("a d"): unseen context -> uniform.
    assert probs[2].tolist() == pytest.approx([1 / V] * V, abs=1e-12)


def test_higher_order_fits_training_text_better() -> None:
    ids, V = sonnet_ids()
    T = 32
    windows = torch.from_numpy(ids[: (len(ids) - 1) // T * T + 1].astype(np.int64))
    x, y = windows[:-1].view(-1, T), windows[1:].view(-1, T)  # (B, T)
    ppl = []
    for order in (1, 2, 3, 4):
        log_probs = fitted(ids, V, order, block_size=T)(x)  # (B, T, V)
        ppl.append(torch.exp(-log_probs.gather(-1, y.unsqueeze(-1)).mean()).item())
    assert all(hi < lo for lo, hi in itertools.pairwise(ppl)), ppl


@pytest.mark.parametrize("smoothing", ["kneser_ney", "add_k"])
def test_window_start_uses_the_order_that_fits(smoothing: str) -> None:
    ids, V = sonnet_ids()
    idx = torch.from_numpy(ids[100:110].astype(np.int64)).unsqueeze(0)  # (1, 10)
    full = fitted(ids, V, 4, smoothing=smoothing).next_token_probs(idx)
    for order, t in ((2, 0), (3, 1)):
        short = fitted(ids, V, order, smoothing=smoothing).next_token_probs(idx)
        torch.testing.assert_close(full[:, t], short[:, t], atol=1e-12, rtol=0)
    assert not torch.allclose(full[:, 3:], fitted(ids, V, 3, smoothing=smoothing).next_token_probs(idx)[:, 3:])


def test_ngram_is_causal() -> None:
    ids, V = sonnet_ids()
    model = fitted(ids, V, 4)
    idx = torch.from_numpy(ids[:12].astype(np.int64)).unsqueeze(0)  # (1, 12)
    changed = idx.clone()
    changed[0, 6] = (idx[0, 6] + 1) % V
    a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :6], b[:, :6], atol=0, rtol=0)
    assert not torch.allclose(a[:, 6], b[:, 6])


@pytest.mark.parametrize("smoothing", ["kneser_ney", "add_k"])
def test_state_dict_round_trip_into_a_fresh_model(smoothing: str) -> None:
    ids, V = sonnet_ids()
    model = fitted(ids, V, 3, smoothing=smoothing)
    state = model.state_dict()
    assert sorted(state) == sorted(f"{kind}_{n}" for kind in ("keys", "counts") for n in (1, 2, 3))
    fresh = NGram(model.config)
    assert fresh.num_parameters() == 0
    fresh.load_state_dict(state)
    assert fresh.num_parameters() == model.num_parameters() > 0
    idx = torch.from_numpy(ids[:16].astype(np.int64)).view(2, 8)
    torch.testing.assert_close(fresh(idx), model(idx), atol=0, rtol=0)
    assert not any(True for _ in model.parameters())


def test_unfitted_model_is_uniform() -> None:
    model = NGram(NGramConfig(vocab_size=6, block_size=4, order=3))
    probs = model.next_token_probs(torch.zeros(1, 4, dtype=torch.long))
    torch.testing.assert_close(probs, torch.full((1, 4, 6), 1 / 6, dtype=torch.float64))


def test_counts_match_brute_force_for_every_order_and_chunking(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 7, 2_000).astype(np.uint16)
    path = tmp_path / "train.bin"
    ids.tofile(path)
    memmap = np.memmap(path, dtype=np.uint16, mode="r")
    for chunk_tokens in (1 << 24, 333):
        model = NGram(NGramConfig(vocab_size=7, block_size=8, order=4))
        model.fit(memmap, chunk_tokens=chunk_tokens)
        for n in range(1, 5):
            want = Counter(tuple(ids[i : i + n].tolist()) for i in range(len(ids) - n + 1))
            keys, counts = model.get_buffer(f"keys_{n}").numpy(), model.get_buffer(f"counts_{n}").numpy()
            got = {
                tuple(int(k) // 7 ** (n - 1 - j) % 7 for j in range(n)): int(c)
                for k, c in zip(keys, counts, strict=True)
            }
            assert got == dict(want)
            assert (np.diff(keys) > 0).all()


def test_fitting_a_5gram_on_200k_ids_is_vectorised() -> None:
    ids = np.random.default_rng(0).integers(0, 50, 200_000).astype(np.uint16)
    model = fitted(ids, 50, 5)
    for n in range(1, 6):
        assert int(model.get_buffer(f"counts_{n}").sum()) == len(ids) - n + 1
    refit = NGram(model.config)
    refit.fit(ids, chunk_tokens=30_000)
    for name, value in model.state_dict().items():
        assert torch.equal(refit.state_dict()[name], value), name


def test_refit_replaces_previous_counts() -> None:
    model = fitted([0, 1, 0, 1], 3, 2)
    model.fit(np.array([2, 2, 2], dtype=np.uint16))
    assert model.get_buffer("keys_1").tolist() == [2] and model.get_buffer("counts_1").tolist() == [3]


def test_config_validation_names_the_fix() -> None:
    with pytest.raises(LmlabError, match=r"model\.order=5 is larger than model\.block_size=4"):
        NGramConfig(order=5, block_size=4)
    with pytest.raises(LmlabError, match="kneser_ney, add_k"):
        NGramConfig(smoothing="witten_bell")
    with pytest.raises(LmlabError, match=r"model\.k"):
        NGramConfig(smoothing="add_k", k=0.0)
    with pytest.raises(LmlabError, match=r"model\.order<=4"):
        NGramConfig(vocab_size=50257, order=5)
    with pytest.raises(LmlabError, match=r"model\.order=0"):
        NGramConfig(order=0)


def test_bad_ids_are_refused() -> None:
    model = NGram(NGramConfig(vocab_size=4, block_size=8, order=2))
    with pytest.raises(LmlabError, match=r"model\.vocab_size=4"):
        model.fit(np.array([0, 1, 4], dtype=np.uint16))
    with pytest.raises(LmlabError, match="1-D integer"):
        model.fit(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(LmlabError, match=r"block_size=8"):
        model(torch.zeros(1, 9, dtype=torch.long))


@pytest.mark.gpu
def test_cuda_matches_cpu_after_loading_onto_the_gpu() -> None:
    ids, V = sonnet_ids()
    model = fitted(ids, V, 4)
    fresh = NGram(model.config).cuda()
    fresh.load_state_dict(model.state_dict())
    assert fresh.get_buffer("raw4_weight").is_cuda
    idx = torch.from_numpy(ids[:64].astype(np.int64)).view(4, 16)
    torch.testing.assert_close(
        fresh.next_token_probs(idx.cuda()).cpu(), model.next_token_probs(idx), atol=1e-12, rtol=0
    )
    fresh.fit(ids[:300])  # refitting on the GPU keeps the counts there
    assert fresh.get_buffer("keys_4").is_cuda
