"""Folding LoRA adapters into plain weights, so a LoRA-tuned backbone loads as the model it adapts."""

from __future__ import annotations

from typing import Any

import torch


def merge_lora_state(state: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """A state dict with peft's LoRA layers (`X.base_layer.weight`, `X.lora_A.<adapter>.weight`,
    `X.lora_B.<adapter>.weight`) turned into plain ones: `X.weight = W + scale * B @ A`, `X.bias` kept."""
    adapters: dict[str, dict[str, torch.Tensor]] = {}
    merged: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for part in ("lora_A", "lora_B"):
            if f".{part}." in key:
                adapters.setdefault(key.split(f".{part}.")[0], {})[part] = value
                break
        else:
            merged[key.replace(".base_layer.", ".")] = value
    for prefix, pair in adapters.items():
        weight = merged[f"{prefix}.weight"]
        delta = pair["lora_B"].float() @ pair["lora_A"].float()  # (out, r) @ (r, in) -> (out, in)
        merged[f"{prefix}.weight"] = (weight.float() + scale * delta).to(weight.dtype)
    return merged


def merged_backbone_state(state: dict[str, torch.Tensor], hyper_parameters: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The backbone state of a checkpoint, LoRA adapters merged when its task trained with `finetune=lora`."""
    if hyper_parameters.get("finetune") != "lora":
        return state
    return merge_lora_state(state, float(hyper_parameters["lora_alpha"]) / float(hyper_parameters["lora_r"]))
