"""Starting a fine-tuning run: backbone weights from a checkpoint, and which parameters train (full, frozen, LoRA)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from lmlab.errors import LmlabError
from lmlab.models import ModelConfig, model_config_from_dict
from lmlab.models.lora import merged_backbone_state
from lmlab.tokenizers import FixedTokenizerConfig, tokenizer_from_dict

FINETUNE_MODES = ("full", "frozen", "lora")
"""`full`: every weight trains; `frozen`: only the head; `lora`: low-rank adapters on the attention and MLP linears,
plus the head."""


def checkpoint_tokenizer(path: str) -> FixedTokenizerConfig:
    """The tokenizer saved in an lmlab checkpoint, as a tokenizer config (a config `_target_`): `train` returns it."""
    from lmlab.checkpoints.load import read_checkpoint

    return FixedTokenizerConfig(tokenizer_from_dict(read_checkpoint(path)["lmlab"]["tokenizer"]))


def starting_point_configs(init_from: str, overrides: Sequence[str] = ()) -> tuple[dict[str, Any], dict[str, Any]]:
    """Config nodes (model, tokenizer) that rebuild the model config and tokenizer of an lmlab checkpoint.

    `overrides` are the run's command-line overrides: choosing a model or tokenizer there contradicts the checkpoint
    and is refused.
    """
    from lmlab.checkpoints.load import read_checkpoint, resolve_checkpoint

    file = resolve_checkpoint(init_from)
    config = model_config_from_dict(read_checkpoint(file)["hyper_parameters"]["model"])
    fields = dataclasses.asdict(config)
    conflicting = [o for o in overrides if o.lstrip("+~").split("=")[0].split(".")[0] in ("model", "tokenizer")]
    if conflicting:
        shape = ", ".join(f"{k}={v}" for k, v in fields.items() if k != "hf_config")
        raise LmlabError(
            f"task.init_from takes the model and tokenizer from {file} ({config.family}: {shape}); drop "
            f"{' '.join(conflicting)}"
        )
    target = f"{type(config).__module__}.{type(config).__qualname__}"
    tokenizer = {"_target_": f"{__name__}.checkpoint_tokenizer", "path": str(file)}
    return {"_target_": target, **fields}, tokenizer


def load_backbone(model: nn.Module, init_from: str | Path, config: ModelConfig) -> None:
    """Copy the model weights of an lmlab checkpoint (causal LM, masked LM or classifier) into `model`."""
    from lmlab.checkpoints.load import read_checkpoint, resolve_checkpoint

    file = resolve_checkpoint(init_from)
    checkpoint = read_checkpoint(file)
    saved = model_config_from_dict(checkpoint["hyper_parameters"]["model"])
    if saved != config:
        raise LmlabError(
            f"task.init_from={init_from} holds a {saved.family} of another shape than the model to fine-tune; "
            "take the model config from the checkpoint (lmlab train does) and drop model overrides"
        )
    state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    try:
        model.load_state_dict(merged_backbone_state(state, checkpoint["hyper_parameters"]))
    except RuntimeError as err:
        raise LmlabError(
            f"the weights in {file} do not fit a {saved.family} of the saved shape; is it corrupt?"
        ) from err


def block_linear_names(model: nn.Module) -> list[str]:
    """Names of the Linear layers inside repeated blocks (attention and MLP), e.g. `blocks.0.attn.qkv`.

    A name with a numeric part (`blocks.3...`, `encoder.layer.3...`) lies in a block; embeddings, language-model
    heads and poolers do not, so LoRA leaves them alone.
    """
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and any(part.isdigit() for part in name.split("."))
    ]


def add_lora(model: nn.Module, family: str, r: int, alpha: float, dropout: float) -> nn.Module:
    """Inject LoRA adapters (peft) into the block linears; afterwards only the adapters require gradients."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = block_linear_names(model)
    if not targets:
        raise LmlabError(
            f"task.finetune=lora adapts attention and MLP linear layers, and model={family} has none; "
            "use task.finetune=full or task.finetune=frozen"
        )
    if r < 1:
        raise LmlabError(f"task.lora_r={r} must be a positive integer, e.g. 8")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    return inject_adapter_in_model(config, model)


def apply_finetune_mode(model: nn.Module, mode: str, family: str, r: int, alpha: float, dropout: float) -> nn.Module:
    """Set which backbone parameters train; returns the (possibly adapter-injected) backbone."""
    if mode not in FINETUNE_MODES:
        raise LmlabError(f"task.finetune={mode!r} is unknown; choose one of: {', '.join(FINETUNE_MODES)}")
    if mode == "frozen":
        model.requires_grad_(False)
    elif mode == "lora":
        model = add_lora(model, family, r, alpha, dropout)
        for name, param in model.named_parameters():
            param.requires_grad_("lora_" in name)
    return model


def class_weight_list(spec: str | list[float] | None, counts: list[int] | None, num_classes: int) -> list[float] | None:
    """Cross-entropy class weights: None, explicit per-class weights, or `balanced` (n / (classes * count))."""
    if spec is None:
        return None
    if spec == "balanced":
        if counts is None or len(counts) != num_classes or min(counts) == 0:
            raise LmlabError("task.class_weights=balanced needs every class in the training data; check the labels")
        total = sum(counts)
        return [total / (num_classes * c) for c in counts]
    if isinstance(spec, str):
        raise LmlabError(f"task.class_weights={spec!r} is unknown; give null, balanced or one weight per class")
    weights = [float(w) for w in spec]
    if len(weights) != num_classes or min(weights) < 0:
        raise LmlabError(
            f"task.class_weights has {len(weights)} weights for {num_classes} classes; give one non-negative "
            "weight per class (or balanced)"
        )
    return weights
