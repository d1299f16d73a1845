"""The logit lens (nostalgebraist, 2020): read every layer's residual stream through the model's final norm and
unembedding, as if the model stopped there; and the tuned lens (Belrose et al., 2023): one learned affine map per
layer before that readout, trained to match the final layer's predictions on the frozen model.

Layer `embed` is the stream entering the first block (`blocks.0.hook_resid_pre`), layer `i` the stream after block i
(`blocks.{i}.hook_resid_post`): the last layer read through the lens is the model's own output.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.errors import LmlabError
from lmlab.interp.hooks import decoder_layers, final_norm, run_with_cache

Readout = Callable[[torch.Tensor], torch.Tensor]
"""Residual stream (..., C) -> next-token logits (..., vocab_size)."""


def readout(model: nn.Module) -> Readout:
    """The model's final norm and unembedding as one function; a model without a next-token head is an error."""
    from lmlab.models.gpt import GPT
    from lmlab.models.hf_causal import HFCausal

    if isinstance(model, GPT):
        return lambda residual: model.lm_head(model.ln_f(residual))
    if isinstance(model, HFCausal):
        hf = model.model
        norm, head = final_norm(hf, decoder_layers(hf)), hf.get_output_embeddings()
        if norm is None or head is None:
            raise LmlabError(f"found no final norm or output embedding in {type(hf).__name__}; the lens needs both")
        vocab = model.config.vocab_size
        return lambda residual: head(norm(residual))[..., :vocab]
    family = getattr(getattr(model, "config", None), "family", type(model).__name__)
    raise LmlabError(f"the logit lens reads a causal LM's next-token head, which a {family} model has not; "
                     "use a gpt or hf_causal checkpoint")  # fmt: skip


def n_layers(model: nn.Module) -> int:
    """Transformer blocks of a GPT or a transformers model."""
    config = model.config
    return int(getattr(config, "n_layer", 0) or model.model.config.num_hidden_layers)


def residual_names(depth: int) -> list[str]:
    """Hook names of the residual stream at layers 0 (embedding) .. depth (after the last block)."""
    return ["blocks.0.hook_resid_pre", *(f"blocks.{i}.hook_resid_post" for i in range(depth))]


def layer_labels(depth: int) -> list[str]:
    """`embed`, then `i` for the stream after block i (as `lmlab probe` names layers)."""
    return ["embed", *(str(i) for i in range(depth))]


def residual_streams(model: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's logits (B, T, V) and its residual stream at every layer, stacked: (L+1, B, T, C)."""
    names = residual_names(n_layers(model))
    logits, cache = run_with_cache(model, ids, names=names)
    return logits, torch.stack([cache[name] for name in names])


def logit_lens(model: nn.Module, ids: torch.Tensor, translators: TunedLens | None = None) -> torch.Tensor:
    """Next-token logits read from every layer: (L+1, B, T, V); `translators` makes it the tuned lens."""
    _, streams = residual_streams(model, ids)
    read = readout(model)
    with torch.no_grad():
        if translators is not None:
            streams = translators(streams)
        return read(streams)


class TunedLens(nn.Module):
    """One affine map per layer but the last (which the model reads as it is), starting at the identity."""

    def __init__(self, depth: int, width: int) -> None:
        super().__init__()
        self.maps = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        for linear in self.maps:
            nn.init.eye_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, streams: torch.Tensor) -> torch.Tensor:
        """(L+1, ..., C) -> (L+1, ..., C): layer l mapped by its translator, the last layer unchanged."""
        mapped = [linear(stream) for linear, stream in zip(self.maps, streams[:-1], strict=True)]
        return torch.stack([*mapped, streams[-1]])


@dataclass
class LensStats:
    """How well each layer's lens predicts the next token, over the scored tokens of some text."""

    labels: list[str]
    loss: list[float]
    """Mean cross-entropy (nats) of each layer's lens against the true next token."""
    kl_to_final: list[float]
    """Mean KL(final || layer) in nats: how far each layer's prediction is from the model's own."""
    agreement: list[float]
    """Share of tokens where the layer's top prediction is the model's top prediction."""
    tokens: int = 0

    def rows(self) -> list[dict[str, float | str]]:
        return [{"layer": label, "loss": loss, "kl_to_final": kl, "agreement": agree}
                for label, loss, kl, agree in zip(self.labels, self.loss, self.kl_to_final, self.agreement,
                                                   strict=True)]  # fmt: skip


def lens_stats(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device,
    translators: TunedLens | None = None,
) -> LensStats:  # fmt: skip
    """Per-layer loss, KL to the final layer and top-1 agreement over `(x, y)` batches (y < 0 is not scored)."""
    model = model.to(device).eval()
    depth = n_layers(model)
    sums = torch.zeros(3, depth + 1, dtype=torch.float64)  # loss, kl, agreement per layer
    count = 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        lens = logit_lens(model, x, translators).float()  # (L+1, B, T, V)
        scored = y >= 0  # (B, T)
        logp = lens.log_softmax(-1)[:, scored]  # (L+1, N, V)
        target = y[scored]  # (N,)
        final = logp[-1]
        sums[0] += (
            F.nll_loss(logp.flatten(0, 1), target.repeat(depth + 1), reduction="none")
            .view(depth + 1, -1)
            .sum(-1)
            .double()
            .cpu()
        )
        sums[1] += (final.exp() * (final - logp)).sum(-1).sum(-1).double().cpu()
        sums[2] += (logp.argmax(-1) == final.argmax(-1)).sum(-1).double().cpu()
        count += int(scored.sum())
    if count == 0:
        raise LmlabError("no tokens to score through the lens; give a longer text")
    loss, kl, agreement = (sums / count).tolist()
    return LensStats(layer_labels(depth), loss, kl, agreement, tokens=count)


@dataclass
class TopTokens:
    """Each layer's most likely next token at each position of one text (for the lens picture and CSV)."""

    labels: list[str]
    inputs: list[str]
    """The input token at each position, as text."""
    tokens: list[list[str]]
    """(L+1) x T: each layer's top prediction."""
    probs: list[list[float]]
    """(L+1) x T: its probability."""


def top_tokens(model: nn.Module, ids: torch.Tensor, decode: Callable[[list[int]], str],
               translators: TunedLens | None = None) -> TopTokens:  # fmt: skip
    """The lens's top token per layer and position of one sequence ids (1, T)."""
    probs, best = logit_lens(model, ids, translators)[:, 0].float().softmax(-1).max(-1)  # (L+1, T) each
    labels = layer_labels(probs.size(0) - 1)
    inputs = [decode([int(i)]) for i in ids[0]]
    return TopTokens(labels, inputs, [[decode([int(i)]) for i in row] for row in best], probs.tolist())
