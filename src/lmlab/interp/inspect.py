"""Inspecting one text: the loss on each token with the model's top predictions, the attention patterns of every
layer and head, and (when asked) the activations at named hook points."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.interp.hooks import ActivationCache, Names, hook_sites, resolve_names, run_with_cache
from lmlab.interp.page import TokenLoss


def encode_text(text: str, encode: Callable[[str], list[int]], block_size: int) -> torch.Tensor:
    """Token ids (1, T) of a text that fits the model's context; too long or empty is an error naming the fix."""
    ids = encode(text)
    if len(ids) < 2:
        raise LmlabError(f"the text has {len(ids)} token(s); give at least two, so one can be predicted")
    if len(ids) > block_size:
        raise LmlabError(
            f"the text is {len(ids)} tokens, longer than the model's context (block_size={block_size}); shorten it, "
            "or score a whole file in windows with `lmlab eval text_file=...`"
        )
    return torch.tensor([ids], dtype=torch.long)


def token_losses(
    logits: torch.Tensor, ids: torch.Tensor, decode: Callable[[list[int]], str], top_k: int
) -> list[TokenLoss]:
    """Each token of ids (1, T) with its loss under logits (1, T, V) from the position before, and the top_k
    predictions made for it."""
    logp = logits[0].float().log_softmax(-1)  # (T, V)
    probs, best = logp[:-1].exp().topk(min(top_k, logp.size(-1)), dim=-1)  # (T-1, k) predictions for tokens 1..T-1
    targets = ids[0, 1:]
    losses = (-logp[:-1].gather(-1, targets[:, None]))[:, 0].tolist()  # (T-1,)
    tokens = [TokenLoss(decode([int(ids[0, 0])]), None, [])]
    for position, token in enumerate(targets.tolist()):
        top = [(decode([int(i)]), float(p)) for i, p in zip(best[position], probs[position], strict=True)]
        tokens.append(TokenLoss(decode([token]), losses[position], top))
    return tokens


@dataclass
class Inspection:
    """What `inspect_text` found."""

    tokens: list[TokenLoss]
    patterns: dict[int, torch.Tensor]
    """Layer -> its attention pattern (H, T, T) for the text; empty when not asked."""
    cache: ActivationCache | None

    @property
    def mean_loss(self) -> float:
        losses = [t.loss for t in self.tokens if t.loss is not None]
        return sum(losses) / len(losses)


def pattern_names(model: nn.Module, layers: Iterable[int] | None) -> dict[int, str]:
    """Layer -> its `attn.hook_pattern` name; a layer out of range or a model without patterns is an error."""
    sites = hook_sites(model)
    available = {int(name.split(".")[1]): name for name in sites if name.endswith(".attn.hook_pattern")}
    if not available:
        raise LmlabError("this model exposes no attention patterns (lmlab's gpt and bert do); set attention=false")
    wanted = sorted(available) if layers is None else list(layers)
    for layer in wanted:
        if layer not in available:
            raise LmlabError(f"layer {layer} is out of range: the model has layers 0..{max(available)}")
    return {layer: available[layer] for layer in wanted}


def inspect_text(
    model: nn.Module,
    ids: torch.Tensor,
    decode: Callable[[list[int]], str],
    top_k: int = 5,
    attention_layers: Iterable[int] | None = None,
    attention: bool = True,
    cache_names: Names | bool = False,
) -> Inspection:
    """One forward pass over ids (1, T) that reads the per-token losses, the attention patterns of
    `attention_layers` (None: all) when `attention`, and the activations `cache_names` selects (False: none,
    True or None: all)."""
    model.eval()
    patterns = pattern_names(model, attention_layers) if attention else {}
    cached = (
        [] if cache_names is False else resolve_names(hook_sites(model), None if cache_names is True else cache_names)
    )
    wanted = list(dict.fromkeys([*patterns.values(), *cached]))
    if wanted:
        logits, cache = run_with_cache(model, ids, names=wanted, device="cpu")
    else:
        with torch.no_grad():
            logits, cache = model(ids), ActivationCache()
    return Inspection(
        tokens=token_losses(logits, ids, decode, top_k),
        patterns={layer: cache[name][0] for layer, name in patterns.items()},
        cache=None if cache_names is False else ActivationCache((name, cache[name]) for name in cached),
    )
