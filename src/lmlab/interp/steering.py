"""Activation steering (ActAdd, Turner et al. 2023; contrastive activation addition, Rimsky et al. 2024): add a fixed
direction to the residual stream while the model generates.

The direction is the mean residual stream at one layer over a set of positive texts minus that over a set of
negative texts (each text read as the mean over its tokens, or at its last token). Layer `L` is the stream entering
block L (`blocks.{L}.hook_resid_pre`, as `lmlab patch` numbers it), so layers run 0 .. n_layer - 1. While
`steering(model, vector, coeff)` is active, `coeff * vector` is added there at every position: the prompt's and each
generated token's, in the KV-cached loop and the windowed one alike.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.interp.hooks import hook_sites, hooks_attached, run_with_cache
from lmlab.interp.lens import n_layers
from lmlab.interp.probe import padded_batches
from lmlab.tasks.pooling import pool
from lmlab.tokenizers import Tokenizer

FORMAT = "lmlab.steering_vector/1"
"""`format` in a saved vector's safetensors header: what `SteeringVector.load` accepts."""

POSITIONS = ("mean", "last")
"""How one text's residual stream becomes one vector: the mean over its tokens, or its last token."""


@dataclass(eq=False)  # a tensor field: compare `vector` with torch.equal and the rest with `header()`
class SteeringVector:
    """A direction in one layer's residual stream, and how it was made."""

    vector: torch.Tensor = dataclasses.field(repr=False)
    """(C,): added to the residual stream, times the steering coefficient."""
    layer: int
    """The block whose input stream it is added to (0 .. n_layer - 1)."""
    hook: str
    """The hook point it is read and added at, `blocks.{layer}.hook_resid_pre`."""
    position: str = "mean"
    """How each text was read: `mean` over its tokens or its `last` token."""
    n_positive: int = 0
    """Texts averaged on the positive side."""
    n_negative: int = 0
    """Texts averaged on the negative side."""
    resid_norm: float = math.nan
    """Mean norm of the residual stream's tokens at the hook over all the texts: the scale `coeff * norm` meets."""
    source: str = ""
    """The checkpoint it was built on."""
    texts: str = ""
    """Where the texts came from (for the record)."""

    @property
    def width(self) -> int:
        return int(self.vector.numel())

    @property
    def norm(self) -> float:
        return float(self.vector.float().norm())

    def save(self, path: str | Path) -> Path:
        """Write the vector as safetensors (tensor `vector`), everything else as header metadata; returns the path."""
        from safetensors.torch import save_file

        from lmlab.io import atomic_write

        path = Path(path).expanduser()
        tensors = {"vector": self.vector.detach().to("cpu", copy=True).contiguous()}
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=self.header()))
        return path

    def header(self) -> dict[str, str]:
        """Every field but the tensor, as text (the safetensors header), and the file format."""
        fields = {f.name: str(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "vector"}
        return {"format": FORMAT, **fields}

    @classmethod
    def load(cls, path: str | Path) -> SteeringVector:
        """Read a vector `save` wrote; anything else is a one-line error naming the file."""
        from safetensors import SafetensorError, safe_open

        path = Path(path).expanduser()
        if not path.is_file():
            raise LmlabError(
                f"steering vector {path} does not exist; make one with lmlab steer ckpt=RUN ... out={path}"
            )
        try:
            with safe_open(str(path), framework="pt") as file:
                meta, names = file.metadata() or {}, list(file.keys())
                vector = file.get_tensor("vector") if "vector" in names else None
        except (SafetensorError, OSError, ValueError) as err:
            raise LmlabError(f"{path} is not a safetensors file ({err}); give a vector written by lmlab steer") from err
        if meta.get("format") != FORMAT or vector is None or vector.dim() != 1:
            raise LmlabError(f"{path} is not an lmlab steering vector (no {FORMAT} header with a 1-D `vector`); "
                             "make one with lmlab steer")  # fmt: skip
        kinds = {f.name: f.type for f in dataclasses.fields(cls)}
        try:
            values = {name: _parse(meta[name], kinds[name]) for name in kinds if name in meta and name != "vector"}
            return cls(vector=vector, **values)
        except (TypeError, ValueError) as err:
            raise LmlabError(f"{path} has a damaged header ({err}); build the vector again with lmlab steer") from err


def _parse(text: str, kind: str) -> object:
    """A metadata string back to its field's type (the annotations are strings under `from __future__`)."""
    return int(text) if kind == "int" else float(text) if kind == "float" else text


# --- checks -------------------------------------------------------------------------------------------------------


def check_steerable(model: nn.Module) -> int:
    """The number of blocks of a causal model with a residual stream; an error naming the fix for any other."""
    family = getattr(getattr(model, "config", None), "family", type(model).__name__)
    if not getattr(model.config, "causal", True):
        raise LmlabError(f"steering acts on a model while it generates, which a {family} model (an encoder) does "
                         "not; use a gpt or hf_causal checkpoint")  # fmt: skip
    try:
        hook_sites(model)
    except LmlabError as err:
        raise LmlabError(f"steering adds to the residual stream, which a {family} model has not; use a gpt or "
                         "hf_causal checkpoint") from err  # fmt: skip
    return n_layers(model)


def check_layer(model: nn.Module, layer: int) -> str:
    """The hook name of `layer` on a steerable model; a layer outside 0 .. n_layer - 1 is an error."""
    depth = check_steerable(model)
    if not 0 <= layer < depth:
        blocks = f"{depth} block{'s' * (depth != 1)}"
        raise LmlabError(f"steering layer {layer} is out of range; this model has {blocks}: choose a layer in "
                         f"0..{depth - 1} (the stream entering that block)")  # fmt: skip
    return f"blocks.{layer}.hook_resid_pre"


def residual_width(model: nn.Module) -> int:
    """Width of the residual stream: `n_embd` of lmlab's GPT, `hidden_size` of a transformers model."""
    width = getattr(model.config, "n_embd", None)
    return int(width if width is not None else model.model.config.hidden_size)


def middle_layer(model: nn.Module) -> int:
    """The default layer to steer at: the block in the middle of the stack."""
    return check_steerable(model) // 2


# --- building a vector ----------------------------------------------------------------------------------------------


def encode_texts(tokenizer: Tokenizer, texts: Sequence[str], block_size: int, side: str) -> list[list[int]]:
    """Token ids of each text, cut to the context; an empty set or a text without tokens is an error."""
    if not texts:
        raise LmlabError(f"the {side} texts are empty; give at least one {side} text")
    ids = [tokenizer.encode(text)[:block_size] for text in texts]
    for number, (text, row) in enumerate(zip(texts, ids, strict=True), start=1):
        if not row:
            raise LmlabError(f"{side} text {number} ({text!r}) has no tokens; drop it or give some text")
    return ids


def pooled_stream(
    model: nn.Module, ids: Sequence[list[int]], hook: str, position: str, batch_size: int
) -> tuple[torch.Tensor, float, int]:
    """Each text's residual stream at `hook`, pooled: (N, C) in float32; and the summed norm of every real token's
    stream and the count of those tokens (for the typical norm). Right padding is never read: the model is causal."""
    device = next(model.parameters()).device
    pooled, norm_sum, tokens = [], 0.0, 0
    for batch, mask in padded_batches(ids, 0, batch_size):
        _, cache = run_with_cache(model, batch.to(device), names=[hook])
        acts, mask = cache[hook].float(), mask.to(device)  # (B, T, C), (B, T)
        pooled.append(pool(acts, mask, position).cpu())  # (B, C)
        norm_sum += float((acts.norm(dim=-1) * mask).sum())
        tokens += int(mask.sum())
    return torch.cat(pooled), norm_sum, tokens


def contrast_vector(
    model: nn.Module,
    tokenizer: Tokenizer,
    positive: list[str],
    negative: list[str],
    layer: int,
    position: str = "mean",
    batch_size: int = 32,
) -> SteeringVector:
    """The mean residual stream entering block `layer` over the positive texts minus that over the negative texts;
    a text counts once, as the mean over its tokens (`position="mean"`) or its last token (`"last"`)."""
    if position not in POSITIONS:
        raise LmlabError(f"position={position!r} is unknown; choose one of: {', '.join(POSITIONS)}")
    if batch_size < 1:
        raise LmlabError(f"batch_size={batch_size} must be a positive integer")
    hook = check_layer(model, layer)
    block_size = int(model.config.block_size)
    sides = [encode_texts(tokenizer, texts, block_size, side) for texts, side in ((positive, "positive"),
                                                                                (negative, "negative"))]  # fmt: skip
    was_training = model.training
    model.eval()  # no dropout in the activations read
    try:
        (pos, pos_norm, pos_tokens), (neg, neg_norm, neg_tokens) = (
            pooled_stream(model, ids, hook, position, batch_size) for ids in sides
        )
    finally:
        model.train(was_training)
    vector = (pos.double().mean(0) - neg.double().mean(0)).float()  # (C,)
    resid_norm = (pos_norm + neg_norm) / (pos_tokens + neg_tokens)
    return SteeringVector(vector, layer, hook, position, len(positive), len(negative), resid_norm)


# --- steering -------------------------------------------------------------------------------------------------------


def hook_at(hook: str, layer: int) -> str:
    """`blocks.{i}.<kind>` moved to block `layer`."""
    return re.sub(r"^blocks\.\d+\.", f"blocks.{layer}.", hook)


@contextmanager
def steering(model: nn.Module, vector: SteeringVector, coeff: float, layer: int | None = None) -> Iterator[None]:
    """Within the block, add `coeff * vector` to the model's residual stream at the vector's hook (moved to block
    `layer` when given) at every position of every forward pass, cached or not; removed on leaving, even on error."""
    coeff = float(coeff)
    if not math.isfinite(coeff):
        raise LmlabError(f"the steering coefficient {coeff} is not a finite number; give e.g. steer.coeff=4.0")
    layer = vector.layer if layer is None else int(layer)
    check_layer(model, layer)
    width = residual_width(model)
    if vector.width != width:
        raise LmlabError(
            f"the steering vector is {vector.width} wide but this model's residual stream is {width} wide; build "
            "the vector on this model (lmlab steer ckpt=...)"
        )
    if not bool(torch.isfinite(vector.vector).all()):
        raise LmlabError("the steering vector holds NaN or infinite values; build it again with lmlab steer")
    device = next(model.parameters()).device
    delta = (coeff * vector.vector.float()).to(device)  # (C,)

    def add(x: torch.Tensor, name: str) -> torch.Tensor:
        return x + delta.to(x.dtype)  # (B, T, C) + (C,): every position

    with hooks_attached(model, [(hook_at(vector.hook, layer), add)]):
        yield
