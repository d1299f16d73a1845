"""An n-gram language model with interpolated modified Kneser-Ney (or add-k) smoothing; it trains by counting.

Counting is vectorised: an n-gram (w_1 .. w_n) is packed into one int64 key `((w_1 V + w_2) V + ..) V + w_n`, so
sorting keys groups every n-gram under its context and `key // V` is the context's key. The top order is counted
with one sort of the packed keys (in chunks, merged), each lower order is reduced from the order above it in linear
time. Only the distinct n-grams of each order (sorted keys and counts) are stored, as buffers.

Interpolated modified Kneser-Ney (Chen & Goodman 1998, eq. 26) at order n, with context h and counts c:

    p_n(w | h) = max(c(h w) - D(c(h w)), 0) / c(h •) + gamma(h) p_{n-1}(w | h'),
    gamma(h) = (D1 N1(h •) + D2 N2(h •) + D3+ N3+(h •)) / c(h •),    p_0(w) = 1 / V,

where c is the raw count at the top order N and the continuation count N1+(• h w) below it. An unseen context
gives all its mass to the lower order (gamma = 1). The discounts of each order come from its count-of-counts
n1..n4: Y = n1 / (n1 + 2 n2), D1 = 1 - 2Y n2/n1, D2 = 2 - 3Y n3/n2, D3+ = 3 - 4Y n4/n3. When n1, n2 or n3 is zero,
or a discount falls outside (0, k], that order uses the fallback (0.5, 1.0, 1.5), as KenLM's `--discount_fallback`.

A position near the window start sees fewer than N - 1 tokens of history; it uses the model of the order m that
fits (raw counts at order m over the continuation orders below), exactly what an m-gram model would predict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from lmlab.errors import LmlabError

SMOOTHINGS = ("kneser_ney", "add_k")
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)
"""D1, D2, D3+ of an order whose count-of-counts leave Chen & Goodman's estimate undefined or out of range."""
_LEVEL_FIELDS = ("ctx", "ptr", "word", "weight", "gamma", "discounts")
_MAX_KEY = 2**63 - 1


@dataclass
class NGramConfig:
    """An n-gram model: its order and smoothing."""

    vocab_size: int = 256
    """Number of token ids (set from the tokenizer)."""
    block_size: int = 64
    """Longest window the task feeds in; `order` must not exceed it."""
    order: int = 3
    """N of the N-gram: each prediction conditions on up to N - 1 previous tokens."""
    smoothing: str = "kneser_ney"
    """`kneser_ney` (interpolated modified Kneser-Ney, three discounts per order) or `add_k`."""
    k: float = 1.0
    """Pseudo-count added to every token (only for smoothing=add_k)."""

    family = "ngram"
    causal = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "order"):
            if getattr(self, name) < 1:
                raise LmlabError(f"model.{name}={getattr(self, name)} must be a positive integer")
        if self.order > self.block_size:
            raise LmlabError(
                f"model.order={self.order} is larger than model.block_size={self.block_size}; "
                "lower model.order or raise model.block_size"
            )
        if self.smoothing not in SMOOTHINGS:
            raise LmlabError(f"model.smoothing={self.smoothing!r} is unknown; choose one of: {', '.join(SMOOTHINGS)}")
        if not self.k > 0:
            raise LmlabError(f"model.k={self.k} must be positive, e.g. 1.0 (Laplace) or 0.1")
        if self.vocab_size**self.order > _MAX_KEY:
            top = max(n for n in range(1, self.order) if self.vocab_size**n <= _MAX_KEY)
            raise LmlabError(
                f"model.order={self.order} with model.vocab_size={self.vocab_size} has more possible n-grams than an "
                f"int64 key packs; use model.order<={top} for this vocabulary"
            )


def kn_discounts(n1: int, n2: int, n3: int, n4: int) -> tuple[float, float, float]:
    """Modified Kneser-Ney discounts (D1, D2, D3+) from count-of-counts, or `FALLBACK_DISCOUNTS` where undefined."""
    if min(n1, n2, n3) <= 0:
        return FALLBACK_DISCOUNTS
    y = n1 / (n1 + 2 * n2)
    discounts = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
    if not all(0 < d <= k for k, d in zip((1, 2, 3), discounts, strict=True)):
        return FALLBACK_DISCOUNTS
    return discounts


def _pack(window: np.ndarray, n: int, vocab_size: int) -> np.ndarray:
    """Packed keys of every n-gram in `window` (int64)."""
    length = len(window) - n + 1
    keys = window[:length].astype(np.int64, copy=True)  # a copy: never write through to a memmap
    for j in range(1, n):
        keys *= vocab_size
        keys += window[j : j + length]
    return keys


def _reduce_sorted(keys: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum the counts of equal keys in sorted `keys`."""
    if keys.size == 0:
        return keys, counts
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    return keys[starts], np.add.reduceat(counts, starts)


def _count_top(ids: np.ndarray, n: int, vocab_size: int, chunk_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct n-gram keys of `ids` and their counts, counted chunk by chunk and merged."""
    total = len(ids) - n + 1
    parts = []
    for start in range(0, max(total, 0), chunk_tokens):
        stop = min(start + chunk_tokens, total)  # n-grams that start in [start, stop)
        parts.append(np.unique(_pack(ids[start : stop + n - 1], n, vocab_size), return_counts=True))
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if len(parts) == 1:
        return parts[0][0], parts[0][1].astype(np.int64)
    keys = np.concatenate([k for k, _ in parts])
    counts = np.concatenate([c for _, c in parts]).astype(np.int64)
    order = np.argsort(keys, kind="stable")
    return _reduce_sorted(keys[order], counts[order])


def _count_lower(keys: np.ndarray, counts: np.ndarray, tail: int | None, vocab_size: int) -> tuple[np.ndarray, ...]:
    """Counts of order n - 1 from those of order n: sum over the last word, plus the corpus' final (n-1)-gram."""
    lower, lower_counts = _reduce_sorted(keys // vocab_size, counts)  # prefixes of sorted keys stay sorted
    if tail is not None:
        i = int(np.searchsorted(lower, tail))
        if i < lower.size and lower[i] == tail:
            lower_counts[i] += 1
        else:
            lower, lower_counts = np.insert(lower, i, tail), np.insert(lower_counts, i, 1)
    return lower, lower_counts


def _level_tables(keys: np.ndarray, counts: np.ndarray, vocab_size: int, config: NGramConfig) -> dict[str, np.ndarray]:
    """Lookup tables of one level from its sorted n-gram keys and counts (raw or continuation).

    Per context: its key `ctx` (C,), the span `ptr[i]:ptr[i + 1]` of its entries and `gamma`, the weight of the lower
    order; per entry: its `word` and `weight`, so that p(w | h) = weight(h w) + gamma(h) p_lower(w | h').
    """
    counts = counts.astype(np.int64)
    context = keys // vocab_size  # (E,), sorted because keys are
    starts = np.flatnonzero(np.r_[True, context[1:] != context[:-1]]) if keys.size else np.zeros(0, np.int64)
    ptr = np.r_[starts, keys.size].astype(np.int64)  # (C + 1,)
    owner = np.repeat(np.arange(starts.size), np.diff(ptr))  # context index of each entry, (E,)
    total = np.add.reduceat(counts, starts).astype(np.float64) if keys.size else np.zeros(0)  # c(h •), (C,)
    tables = {"ctx": context[starts], "ptr": ptr, "word": keys % vocab_size}
    if config.smoothing == "kneser_ney":
        n_k = np.bincount(np.minimum(counts, 5), minlength=6)[1:5]  # count-of-counts n1..n4
        discounts = np.array([0.0, *kn_discounts(*(int(n) for n in n_k))])
        discount = discounts[np.minimum(counts, 3)]  # D(c) per entry, (E,)
        gamma_mass = np.add.reduceat(discount, starts) if keys.size else np.zeros(0)  # D1 N1 + D2 N2 + D3+ N3+
        tables["weight"] = np.maximum(counts - discount, 0.0) / total[owner]
        tables["gamma"] = gamma_mass / total
        tables["discounts"] = discounts[1:]
    else:
        denominator = total + config.k * vocab_size  # c(h) + kV; each word's k / (c(h) + kV) is gamma / V
        tables["weight"] = counts / denominator[owner]
        tables["gamma"] = config.k * vocab_size / denominator
        tables["discounts"] = np.zeros(0)
    return tables


class NGram(nn.Module):
    """Counts n-grams with `fit`; `forward` maps ids (B, T) to next-token log-probabilities (B, T, V)."""

    counting = True

    def __init__(self, config: NGramConfig) -> None:
        super().__init__()
        self.config = config
        self.kneser_ney = config.smoothing == "kneser_ney"
        for n in range(1, config.order + 1):
            self.register_buffer(f"keys_{n}", torch.zeros(0, dtype=torch.long))
            self.register_buffer(f"counts_{n}", torch.zeros(0, dtype=torch.long))
        for name in self._level_names():
            for field in _LEVEL_FIELDS:
                self.register_buffer(f"{name}_{field}", torch.zeros(0), persistent=False)
        self._build_tables()

    def _level_names(self) -> list[str]:
        """`raw{n}` for every order, `cont{n}` (continuation counts) below the top order for Kneser-Ney."""
        raw = [f"raw{n}" for n in range(1, self.config.order + 1)]
        return raw + ([f"cont{n}" for n in range(1, self.config.order)] if self.kneser_ney else [])

    def fit(self, ids: np.ndarray, chunk_tokens: int = 1 << 24) -> None:
        """Count all n-grams of orders 1..N in the 1-D id array `ids`, replacing any previous counts."""
        ids = np.asarray(ids)
        V, N = self.config.vocab_size, self.config.order
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise LmlabError(f"NGram.fit needs a 1-D integer id array, got shape {ids.shape} of {ids.dtype}")
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= V):
            raise LmlabError(
                f"token ids span [{int(ids.min())}, {int(ids.max())}] but model.vocab_size={V}; "
                "set model.vocab_size from the tokenizer that made the ids"
            )
        keys, counts = _count_top(ids, N, V, chunk_tokens)
        device = self.keys_1.device
        for n in range(N, 0, -1):
            self._buffers[f"keys_{n}"] = torch.from_numpy(np.ascontiguousarray(keys)).to(device)
            self._buffers[f"counts_{n}"] = torch.from_numpy(np.ascontiguousarray(counts)).to(device)
            if n > 1:
                tail = int(_pack(ids[len(ids) - n + 1 :], n - 1, V)[0]) if len(ids) >= n - 1 else None
                keys, counts = _count_lower(keys, counts, tail, V)
        self._build_tables()

    def _build_tables(self) -> None:
        """Derive the lookup tables of every level from the stored counts (with numpy, on the CPU)."""
        V = self.config.vocab_size
        device = self._buffers["keys_1"].device
        for n in range(1, self.config.order + 1):
            keys = self._buffers[f"keys_{n}"].cpu().numpy()
            counts = self._buffers[f"counts_{n}"].cpu().numpy()
            self._set_level(f"raw{n}", _level_tables(keys, counts, V, self.config), device)
            if self.kneser_ney and n > 1:
                # N1+(• w_2 .. w_n): how many distinct words precede each (n-1)-gram.
                suffixes, cont = np.unique(keys % V ** (n - 1), return_counts=True)
                self._set_level(f"cont{n - 1}", _level_tables(suffixes, cont, V, self.config), device)

    def _set_level(self, name: str, tables: dict[str, np.ndarray], device: torch.device) -> None:
        for field, value in tables.items():
            self._buffers[f"{name}_{field}"] = torch.from_numpy(np.ascontiguousarray(value)).to(device)

    def _interpolate(self, name: str, query: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """In place on p (R, V): rows whose context key `query` (R,) the level knows become gamma p + weights."""
        ctx = self._buffers[f"{name}_ctx"]
        if ctx.numel() == 0 or query.numel() == 0:
            return p
        if name in ("raw1", "cont1"):  # order 1: one (empty) context, shared by every row
            dense = torch.zeros(p.shape[1], dtype=p.dtype, device=p.device)  # (V,)
            dense[self._buffers[f"{name}_word"]] = self._buffers[f"{name}_weight"]
            return p.mul_(self._buffers[f"{name}_gamma"]).add_(dense)
        j = torch.searchsorted(ctx, query).clamp_(max=ctx.numel() - 1)  # (R,)
        rows = (ctx[j] == query).nonzero().squeeze(1)  # rows whose context was seen, (S,)
        j = j[rows]
        p[rows] *= self._buffers[f"{name}_gamma"][j].unsqueeze(1)
        ptr = self._buffers[f"{name}_ptr"]
        start, fanout = ptr[j], ptr[j + 1] - ptr[j]  # (S,)
        entry_rows = rows.repeat_interleave(fanout)  # (E',)
        offset = (start - fanout.cumsum(0) + fanout).repeat_interleave(fanout)
        entries = torch.arange(entry_rows.numel(), device=p.device) + offset  # index into the level's entries
        words = self._buffers[f"{name}_word"][entries]
        p.index_put_((entry_rows, words), self._buffers[f"{name}_weight"][entries], accumulate=True)
        return p

    def _context_keys(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """Packed context keys (B * T,) of every order 1..N; -1 where the window start cuts the history."""
        B, T = idx.shape
        V = self.config.vocab_size
        keys = [torch.zeros(B, T, dtype=torch.long, device=idx.device)]  # order 1: the empty context
        for n in range(2, self.config.order + 1):
            shift = n - 2  # the token that joins the context at order n sits `shift` steps back
            key = torch.full_like(keys[-1], -1)
            key[:, shift:] = keys[-1][:, shift:] + idx[:, : T - shift] * V**shift
            keys.append(key)
        return [key.reshape(-1) for key in keys]

    def next_token_probs(self, idx: torch.Tensor) -> torch.Tensor:
        """Map ids (B, T) to float64 probabilities (B, T, V) of the next token at each position."""
        B, T = idx.shape
        V, N = self.config.vocab_size, self.config.order
        if self.config.block_size < T:
            raise LmlabError(f"input of {T} tokens is longer than model.block_size={self.config.block_size}")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= V):
            raise LmlabError(f"token ids must lie in [0, {V}) for model.vocab_size={V}")
        keys = self._context_keys(idx.long())  # N × (B * T,)
        top = (torch.arange(T, device=idx.device) + 2).clamp(max=N).repeat(B)  # order each position fits, (B * T,)
        p = torch.full((B * T, V), 1.0 / V, dtype=torch.float64, device=idx.device)  # p_0
        early = []
        for n in range(1, N):
            rows = (top == n).nonzero().squeeze(1)
            if rows.numel():
                lower = p[rows] if self.kneser_ney else torch.full_like(p[rows], 1.0 / V)  # copies
                early.append((rows, self._interpolate(f"raw{n}", keys[n - 1][rows], lower)))
            if self.kneser_ney:
                self._interpolate(f"cont{n}", keys[n - 1], p)
        self._interpolate(f"raw{N}", keys[N - 1], p)  # add-k: p is still uniform here
        for rows, probs in early:
            p[rows] = probs
        return p.view(B, T, V)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Map token ids (B, T) to next-token log-probabilities (B, T, vocab_size), float32."""
        return self.next_token_probs(idx).log().float()

    def discounts(self, order: int, continuation: bool = False) -> tuple[float, float, float]:
        """Kneser-Ney (D1, D2, D3+) used at `order` on raw or continuation counts."""
        name = f"{'cont' if continuation else 'raw'}{order}_discounts"
        if name not in self._buffers or self._buffers[name].numel() != 3:
            raise LmlabError(f"no Kneser-Ney discounts for order {order} (continuation={continuation})")
        return tuple(self._buffers[name].tolist())

    def num_parameters(self) -> int:
        """Stored n-gram entries over all orders (the model has no trainable parameters)."""
        return sum(self._buffers[f"keys_{n}"].numel() for n in range(1, self.config.order + 1))

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> NGram:
        # `.half()` or `.to(torch.bfloat16)` would cast the float64 tables: rebuild them from the integer counts.
        super()._apply(fn, *args, **kwargs)
        if self._buffers["raw1_weight"].dtype != torch.float64:
            self._build_tables()
        return self

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # Counts of a fitted model have other sizes than the empty buffers of a fresh one: resize before copying.
        for n in range(1, self.config.order + 1):
            for name in (f"keys_{n}", f"counts_{n}"):
                value, buffer = state_dict.get(prefix + name), self._buffers[name]
                if isinstance(value, torch.Tensor) and value.shape != buffer.shape:
                    self._buffers[name] = torch.empty(value.shape, dtype=buffer.dtype, device=buffer.device)
        super()._load_from_state_dict(state_dict, prefix, *args)
        self._build_tables()
