"""Optimizers beyond one torch class: Muon on the hidden matrices with AdamW on everything else, as ONE optimizer.

Lightning steps, clips, schedules and checkpoints one `torch.optim.Optimizer` per run, so `MuonAdamW` is a thin
composite: its `param_groups` are the very group dicts of an inner `torch.optim.AdamW` (first) and an inner
`torch.optim.Muon` (after), and both share one `state` dict (their parameters are disjoint). A `LambdaLR` schedule
therefore scales every group from its own initial lr, and the standard `state_dict` round-trips.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

OUTPUT_HEADS = ("lm_head", "mlm_head")
"""Names of the modules that map hidden states to the vocabulary: not hidden matrices, so AdamW updates them."""

MUON_KEY = "muon"
"""A parameter group whose `MUON_KEY` is True goes to Muon (`split_hidden_matrices` sets it)."""


def hidden_matrices(model: nn.Module) -> set[int]:
    """Ids of the hidden matrices of `model`: 2-D weights of `nn.Linear` layers, except an output head
    (`OUTPUT_HEADS`) and any weight tied to an embedding (a tied head is the token table)."""
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return {
        id(module.weight)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and module.weight.dim() == 2
        and name.rsplit(".", 1)[-1] not in OUTPUT_HEADS
        and id(module.weight) not in tables
    }


def split_hidden_matrices(groups: list[dict[str, Any]], hidden: set[int]) -> list[dict[str, Any]]:
    """The task's groups with their hidden matrices (ids in `hidden`) moved to copies marked for Muon (placed after
    all others, so group 0 stays the AdamW group whose lr `train/lr` and the schedules' `min_lr` refer to)."""
    rest, muon = [], []
    for group in groups:
        params = list(group["params"])
        others = [p for p in params if id(p) not in hidden]
        matrices = [p for p in params if id(p) in hidden]
        if others:
            rest.append({**group, "params": others})
        if matrices:
            muon.append({**group, "params": matrices, MUON_KEY: True})
    return rest + muon


class MuonAdamW(Optimizer):
    """Muon (torch's, orthogonalised updates) on groups marked `muon: True`, AdamW on the others.

    Args:
        params: parameters or groups; groups marked by `split_hidden_matrices` go to Muon, all else to AdamW.
        lr, betas, eps, fused: AdamW's settings (embeddings, output head, norm gains, biases); `fused` as in
            `torch.optim.AdamW` (`fused: null` in the config picks the fused kernel, see `tasks.base.fused_option`).
        muon_lr: Muon's peak lr, before `adjust_lr_fn` scales it per matrix shape.
        muon_momentum, nesterov, ns_steps: Muon's momentum and Newton-Schulz iterations.
        muon_weight_decay: Muon's decoupled decay, replacing the task's `weight_decay` on its groups (that one is
            tuned for AdamW's lr; Muon's decay is multiplied by its own, larger lr).
        adjust_lr_fn: `original` (Keller Jordan's sqrt(max(1, rows/cols))) or `match_rms_adamw` (Moonlight's
            0.2·sqrt(max(rows, cols)), to reuse AdamW's lr); None = original.
    """

    splits_hidden_matrices = True
    """Asks `ModelTask.configure_optimizers` to mark the hidden matrices (`split_hidden_matrices`)."""
    split_groups = staticmethod(split_hidden_matrices)
    """How groups are marked, for callers that hold only the class (config checks bind it to dummy parameters)."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        fused: bool | None = None,
        muon_lr: float = 0.02,
        muon_momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        muon_weight_decay: float = 0.0,
        adjust_lr_fn: str | None = None,
    ) -> None:
        items = list(params)
        groups = [dict(g) for g in items] if items and isinstance(items[0], dict) else [{"params": items}]
        marked = [bool(g.pop(MUON_KEY, False)) for g in groups]
        adam_groups = [g for g, m in zip(groups, marked, strict=True) if not m]
        muon_groups = [{**g, "weight_decay": muon_weight_decay} for g, m in zip(groups, marked, strict=True) if m]
        self.adamw: Optimizer | None = None
        self.muon: Optimizer | None = None
        if adam_groups:
            self.adamw = torch.optim.AdamW(adam_groups, lr=lr, betas=tuple(betas), eps=eps, fused=fused)
        if muon_groups:
            self.muon = torch.optim.Muon(
                muon_groups, lr=muon_lr, momentum=muon_momentum, nesterov=nesterov, ns_steps=ns_steps,
                weight_decay=muon_weight_decay, adjust_lr_fn=adjust_lr_fn,
            )  # fmt: skip
        inner = [opt.param_groups for opt in self.inner()]
        super().__init__([group for groups in inner for group in groups], {"lr": lr})  # the inner groups themselves
        self._share()

    def inner(self) -> list[Optimizer]:
        """The inner optimizers that exist (AdamW first)."""
        return [opt for opt in (self.adamw, self.muon) if opt is not None]

    def _share(self) -> None:
        """Make the inner optimizers use this optimizer's group dicts and state (after init and after a load)."""
        n = len(self.adamw.param_groups) if self.adamw is not None else 0
        if self.adamw is not None:
            self.adamw.param_groups, self.adamw.state = self.param_groups[:n], self.state
        if self.muon is not None:
            self.muon.param_groups, self.muon.state = self.param_groups[n:], self.state

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One step of both (the closure, which computes loss and gradients, runs once first)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.inner():
            opt.step()
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)  # replaces `param_groups` and `state` with new objects
        self._share()
