"""Read and edit activations by name: `run_with_cache` and `run_with_hooks`, in TransformerLens's spirit.

lmlab's GPT and BERT carry `HookPoint`s whose module paths are TransformerLens's names (`blocks.0.hook_resid_post`,
`blocks.0.attn.hook_pattern`, ...). A Hugging Face causal model (`model=hf_causal`) is hooked through its own
module names (`model.layers.0.mlp`, ...; a module returning a tuple is read at its first element) plus the names
the tools below need everywhere: `hook_embed`, `blocks.{i}.hook_resid_pre`, `blocks.{i}.hook_resid_post` and
`ln_final.hook_normalized`. A hook is `fn(activation, name)`; it may return a tensor to replace the activation.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.models.layers import HookPoint

HookFn = Callable[[torch.Tensor, str], torch.Tensor | None]
"""`fn(activation, name)`: reads the activation, or returns a tensor of the same shape to use instead."""

Names = Iterable[str] | Callable[[str], bool] | str | None
"""Which hook points: a list of names, one name, a predicate on names, or None for all."""


@dataclass(frozen=True)
class Site:
    """Where a name is hooked: a module, and whether its input (`pre`) or its output is the activation."""

    module: nn.Module
    pre: bool = False


def hook_sites(model: nn.Module) -> dict[str, Site]:
    """Every name `model` can be hooked at, in forward order; an error for a family without hook points."""
    points = {m.name: Site(m) for m in model.modules() if isinstance(m, HookPoint)}
    if points:
        return points
    from lmlab.models.hf_causal import HFCausal

    if isinstance(model, HFCausal):
        return hf_sites(model.model)
    family = getattr(getattr(model, "config", None), "family", type(model).__name__)
    raise LmlabError(
        f"a {family} model has no hook points (no layers or residual stream to look into); "
        "use a gpt, bert or hf_causal checkpoint"
    )


def hf_sites(model: nn.Module) -> dict[str, Site]:
    """A transformers model's module names, plus lmlab's residual-stream names on its decoder layers."""
    layers = decoder_layers(model)
    sites = {"hook_embed": Site(model.get_input_embeddings())}
    for i, layer in enumerate(layers):
        sites[f"blocks.{i}.hook_resid_pre"] = Site(layer, pre=True)
        sites[f"blocks.{i}.hook_resid_post"] = Site(layer)
    norm = final_norm(model, layers)
    if norm is not None:
        sites["ln_final.hook_normalized"] = Site(norm)
    sites.update({name: Site(module) for name, module in model.named_modules() if name})
    return sites


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder layers of a transformers model: the ModuleList as long as its `num_hidden_layers`."""
    depth = int(model.config.num_hidden_layers)
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == depth:
            return module
    raise LmlabError(f"found no list of {depth} decoder layers in {type(model).__name__}; hook it by module name")


def final_norm(model: nn.Module, layers: nn.ModuleList) -> nn.Module | None:
    """The norm after the last decoder layer (`norm`, `ln_f` or `final_layernorm` beside the layer list)."""
    for module in model.modules():
        if any(child is layers for child in module.children()):
            for attr in ("norm", "ln_f", "final_layernorm"):
                if isinstance(getattr(module, attr, None), nn.Module):
                    return getattr(module, attr)
    return None


def resolve_names(sites: dict[str, Site], names: Names) -> list[str]:
    """The hook names `names` selects, in forward order; an unknown name is an error that lists the valid ones."""
    if names is None:
        return list(sites)
    if callable(names):
        return [name for name in sites if names(name)]
    wanted = [names] if isinstance(names, str) else list(names)
    unknown = [name for name in wanted if name not in sites]
    if unknown:
        raise LmlabError(f"unknown hook name {unknown[0]!r}; valid names: {describe_names(sites)}")
    return [name for name in sites if name in set(wanted)]


def describe_names(sites: dict[str, Site]) -> str:
    """The hook names in short: one `blocks.{0..N}.x` per kind of per-layer name (the valid choices in errors)."""
    kinds: dict[str, list[int]] = {}
    for name in sites:
        match = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
        key = f"blocks.{{i}}.{match[2]}" if match else name
        kinds.setdefault(key, []).append(int(match[1]) if match else -1)
    shown = []
    for key, layers in kinds.items():
        shown.append(key.replace("{i}", f"{{{min(layers)}..{max(layers)}}}") if "{i}" in key else key)
    text = ", ".join(shown)
    return text if len(text) <= 600 else text[:600] + ", ... (see `hook_names(model)`)"


def hook_names(model: nn.Module) -> list[str]:
    """Every name `model` can be hooked at, in forward order."""
    return list(hook_sites(model))


@contextmanager
def hooks_attached(model: nn.Module, hooks: Iterable[tuple[str, HookFn]]) -> Iterator[None]:
    """Attach `hooks` (name, fn) for the duration of the block; they are removed even if it raises."""
    sites = hook_sites(model)
    handles = []
    try:
        for name, fn in hooks:
            (name,) = resolve_names(sites, [name])
            handles.append(attach(sites[name], name, fn))
        yield
    finally:
        for handle in handles:
            handle.remove()


def attach(site: Site, name: str, fn: HookFn) -> torch.utils.hooks.RemovableHandle:
    """Register `fn` on `site`'s module; a tuple output or a keyword input is unpacked to its hidden states."""
    if site.pre:

        def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple | None:
            hidden = args[0] if args else kwargs["hidden_states"]
            new = fn(hidden, name)
            if new is None:
                return None
            return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})

        return site.module.register_forward_pre_hook(pre_hook, with_kwargs=True)

    def hook(module: nn.Module, args: tuple, output: torch.Tensor | tuple) -> torch.Tensor | tuple | None:
        hidden = output[0] if isinstance(output, tuple) else output
        new = fn(hidden, name)
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return site.module.register_forward_hook(hook)


def run_with_hooks(
    model: nn.Module, ids: torch.Tensor, hooks: Iterable[tuple[str, HookFn]], **forward_kwargs: object
) -> torch.Tensor:
    """`model(ids)` (logits) with `hooks` attached for this call only."""
    with hooks_attached(model, hooks):
        return model(ids, **forward_kwargs)


class ActivationCache(dict[str, torch.Tensor]):
    """Activations by hook name (detached), as `run_with_cache` returns them; `save` writes safetensors."""

    def layer_stack(self, kind: str) -> torch.Tensor:
        """`blocks.{i}.<kind>` of every layer cached, stacked: (L, ...) in layer order."""
        found = sorted(
            (int(m[1]), name) for name in self if (m := re.fullmatch(rf"blocks\.(\d+)\.{re.escape(kind)}", name))
        )
        if not found:
            raise LmlabError(f"no blocks.{{i}}.{kind} in the cache; run_with_cache with names including it")
        return torch.stack([self[name] for _, name in found])

    def save(self, path: str | Path) -> Path:
        """Write the cache to a safetensors file; returns the path."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # copies: one tensor can sit under two names (a block's resid_post is the next one's resid_pre)
        save_file({name: tensor.detach().to("cpu", copy=True).contiguous() for name, tensor in self.items()}, str(path))
        return path


def run_with_cache(
    model: nn.Module, ids: torch.Tensor, names: Names = None, device: str | torch.device | None = None,
    **forward_kwargs: object,
) -> tuple[torch.Tensor, ActivationCache]:  # fmt: skip
    """`logits, cache = run_with_cache(model, ids, names=[...])`: the forward pass's logits and the activations at
    the named hook points only (all of them for None), detached, on `device` (default: where they were made)."""
    cache = ActivationCache()

    def keep(activation: torch.Tensor, name: str) -> None:
        cache[name] = activation.detach() if device is None else activation.detach().to(device)

    selected = resolve_names(hook_sites(model), names)
    with torch.no_grad():
        logits = run_with_hooks(model, ids, [(name, keep) for name in selected], **forward_kwargs)
    return logits, ActivationCache((name, cache[name]) for name in selected if name in cache)
