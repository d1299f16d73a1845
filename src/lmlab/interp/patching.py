"""Activation patching: which activations carry the difference between a clean and a corrupted prompt.

Run the corrupted prompt, but with one activation taken from the clean run (the residual stream entering block
`i` at one position, `blocks.{i}.hook_resid_pre`; or one head's output at every position, `blocks.{i}.attn.hook_z`),
and see how much of the clean metric comes back. The metric is the logit difference of two answers at the last
position (or the log-probability of one answer); the normalised recovery is

    (patched - corrupted) / (clean - corrupted)

so 1 means the patched activation alone restores the clean behaviour and 0 means it changes nothing. Patching the
whole residual stream at any layer recovers exactly 1 (everything after it is computed from it); patching nothing
recovers 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.interp.hooks import hook_sites, hooks_attached, run_with_cache
from lmlab.interp.lens import n_layers

Scores = Callable[[torch.Tensor], torch.Tensor]
"""ids (B, T) -> scores (B, N) at the last position: next-token logits of a language model, or a classifier's class
logits; the hooks are on the model underneath."""

METRICS = ("logit_diff", "logprob")
"""`logit_diff`: score of answer 0 minus score of answer 1; `logprob`: log-softmax of the scores at answer 0."""


def metric_of(scores: torch.Tensor, answers: Sequence[int], metric: str) -> torch.Tensor:
    """The metric (B,) of scores (B, N) for the answer indices."""
    if metric == "logit_diff":
        if len(answers) != 2:
            raise LmlabError(f"metric=logit_diff compares two answers, got {len(answers)}; give answers=[a,b]")
        return scores[:, answers[0]] - scores[:, answers[1]]
    if metric == "logprob":
        return scores.float().log_softmax(-1)[:, answers[0]]
    raise LmlabError(f"metric={metric!r} is unknown; choose one of: {', '.join(METRICS)}")


def recovery(patched: torch.Tensor, clean: float, corrupted: float) -> torch.Tensor:
    """Normalised recovery (patched - corrupted) / (clean - corrupted): 1 = clean behaviour back, 0 = none."""
    return (patched - corrupted) / (clean - corrupted)


@dataclass
class PatchResult:
    """Metrics of the clean and corrupted runs, and of every patch (raw, not normalised)."""

    clean: float
    corrupted: float
    resid: torch.Tensor
    """(L, T): `blocks.{i}.hook_resid_pre` patched at position t."""
    heads: torch.Tensor | None
    """(L, H): head h of block i (`attn.hook_z`) patched at every position; None without per-head hooks."""

    def recovered(self, raw: torch.Tensor) -> torch.Tensor:
        return recovery(raw, self.clean, self.corrupted)


def patched_metric(
    model: nn.Module, scores: Scores, corrupted: torch.Tensor, answers: Sequence[int], metric: str,
    hooks: Sequence[tuple[str, Callable]] = (),
) -> torch.Tensor:  # fmt: skip
    """The metric (B,) of the corrupted ids (B, T) with `hooks` patching the model."""
    with torch.no_grad(), hooks_attached(model, hooks):
        return metric_of(scores(corrupted), answers, metric).float().cpu()


def replace_positions(clean: torch.Tensor) -> Callable[[torch.Tensor, str], torch.Tensor]:
    """A hook for a batch of T corrupted copies (T, T, C): row t gets the clean activation (1, T, C) at position t."""

    def hook(x: torch.Tensor, name: str) -> torch.Tensor:
        rows = torch.arange(x.size(0), device=x.device)
        x = x.clone()
        x[rows, rows] = clean[0, rows].to(x.dtype)
        return x

    return hook


def replace_heads(clean: torch.Tensor) -> Callable[[torch.Tensor, str], torch.Tensor]:
    """A hook for a batch of H corrupted copies (H, T, H, D): row h gets the clean output (1, T, H, D) of head h."""

    def hook(x: torch.Tensor, name: str) -> torch.Tensor:
        heads = torch.arange(x.size(0), device=x.device)
        x = x.clone()
        x[heads, :, heads] = clean[0, :, heads].transpose(0, 1).to(x.dtype)  # (H, T, D)
        return x

    return hook


def patch_grid(
    model: nn.Module, scores: Scores, clean: torch.Tensor, corrupted: torch.Tensor, answers: Sequence[int],
    metric: str = "logit_diff", heads: bool = True,
) -> PatchResult:  # fmt: skip
    """Patch every (layer, position) of the residual stream and (with `heads`, where the model has per-head hooks)
    every (layer, head) output from the clean ids (1, T) into the corrupted ids (1, T); one batched forward pass per
    layer and kind."""
    if clean.shape != corrupted.shape or clean.size(0) != 1:
        raise LmlabError(f"clean and corrupted must be one prompt each of equal length, got {clean.shape} and "
                         f"{corrupted.shape}")  # fmt: skip
    sites = hook_sites(model)
    L, T = n_layers(model), clean.size(1)
    has_z = heads and all(f"blocks.{i}.attn.hook_z" in sites for i in range(L))
    names = [f"blocks.{i}.hook_resid_pre" for i in range(L)]
    if has_z:
        names += [f"blocks.{i}.attn.hook_z" for i in range(L)]
    _, cache = run_with_cache(model, clean, names=names)
    clean_metric = float(patched_metric(model, scores, clean, answers, metric)[0])
    corrupted_metric = float(patched_metric(model, scores, corrupted, answers, metric)[0])
    if abs(clean_metric - corrupted_metric) < 1e-6:
        raise LmlabError(f"the clean and corrupted prompts give the same {metric} ({clean_metric:.4f}): nothing to "
                         "recover; choose prompts whose answers differ")  # fmt: skip
    resid = torch.stack([
        patched_metric(model, scores, corrupted.expand(T, T), answers, metric,
                       [(name, replace_positions(cache[name]))])
        for name in names[:L]
    ])  # fmt: skip
    per_head = None
    if has_z:
        H = cache[names[L]].size(2)
        per_head = torch.stack([
            patched_metric(model, scores, corrupted.expand(H, T), answers, metric,
                           [(name, replace_heads(cache[name]))])
            for name in names[L:]
        ])  # fmt: skip
    return PatchResult(clean_metric, corrupted_metric, resid, per_head)


def whole_layer_recovery(
    model: nn.Module, scores: Scores, clean: torch.Tensor, corrupted: torch.Tensor, answers: Sequence[int],
    layer: int, metric: str = "logit_diff",
) -> float:  # fmt: skip
    """Recovery when the whole residual stream entering block `layer` comes from the clean run (1 by design)."""
    name = f"blocks.{layer}.hook_resid_pre"
    _, cache = run_with_cache(model, clean, names=[name])
    values = [float(patched_metric(model, scores, ids, answers, metric)[0]) for ids in (clean, corrupted)]
    hook = (name, lambda x, _: cache[name].to(x.dtype))
    patched = patched_metric(model, scores, corrupted, answers, metric, [hook])
    return float(recovery(patched, values[0], values[1])[0])
