"""Before the first step: parameters, tokens per step and memory per device, and a refusal of what cannot fit.

The memory estimate is deliberately plain (bytes per parameter for weights, gradients and AdamW's two moments, by
precision and sharding, plus activations by a per-layer count), so a refusal means the configuration clearly cannot
fit; `preflight.enabled=false` skips the check when the estimate is wrong for a model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lmlab.compute.perf import compute_dtype, format_bytes
from lmlab.errors import LmlabError
from lmlab.models import parameter_counts

log = logging.getLogger("lmlab")

ACTIVATIONS_PER_LAYER = 16
"""Values a Transformer block keeps per token for backward, in units of its width: the block input and two norm
inputs, q/k/v (3), attention output and its projection's input (2), the MLP's input, pre- and post-GELU (1+4+4)
≈ 16; SDPA (flash / memory-efficient) keeps no T×T scores. With activation checkpointing a block keeps its input
(1) and one block at a time is recomputed."""


@dataclass
class MemoryEstimate:
    """Bytes one device holds at the peak of a training step."""

    weights: float
    grads: float
    optimizer: float
    activations: float

    @property
    def states(self) -> float:
        """Weights, gradients and optimizer state: what sharding (fsdp) or bf16-true shrinks."""
        return self.weights + self.grads + self.optimizer

    @property
    def total(self) -> float:
        return self.states + self.activations

    def describe(self) -> str:
        parts = (("weights", self.weights), ("grads", self.grads), ("AdamW", self.optimizer),
                 ("activations", self.activations))  # fmt: skip
        return " + ".join(f"{name} {format_bytes(value)}" for name, value in parts) + f" = {format_bytes(self.total)}"


def layer_shape(model: nn.Module) -> tuple[int, int, bool] | None:
    """(layers, width, activation checkpointing) of a layered model: lmlab's configs or a transformers config."""
    config = getattr(model, "config", None)
    for layers, width in (("n_layer", "n_hidden"), ("n_layer", "n_embd")):
        if hasattr(config, layers) and hasattr(config, width):
            return getattr(config, layers), getattr(config, width), bool(getattr(config, "activation_checkpointing", 0))
    for module in model.modules():  # a wrapped transformers model
        hf = getattr(module, "config", None)
        if hasattr(hf, "num_hidden_layers") and hasattr(hf, "hidden_size"):
            checkpointing = bool(getattr(module, "is_gradient_checkpointing", False))
            return int(hf.num_hidden_layers), int(hf.hidden_size), checkpointing
    return None


def shard_divisors(strategy: Any, world_size: int) -> tuple[int, int, int]:
    """How many devices share the (weights, gradients, optimizer state) under a strategy: FSDP and ZeRO-3 split
    all three, ZeRO-2 the last two, ZeRO-1 the optimizer; data parallel keeps a full replica on every device."""
    names = {cls.__name__ for cls in type(strategy).__mro__}
    if names & {"FSDPStrategy", "ModelParallelStrategy"} or any("FSDP" in n for n in names):
        return world_size, world_size, world_size
    if "DeepSpeedStrategy" in names:
        stage = (getattr(strategy, "config", None) or {}).get("zero_optimization", {}).get("stage", 0)
        return (world_size if stage >= 3 else 1), (world_size if stage >= 2 else 1), (world_size if stage >= 1 else 1)
    return 1, 1, 1


def estimate_memory(
    model: nn.Module,
    precision: str,
    micro_batch: int,
    seq_len: int,
    shards: tuple[int, int, int] = (1, 1, 1),
    lm_head: bool = True,
    compiled_loss: bool = False,
) -> MemoryEstimate:
    """Memory per device for training `model` with AdamW on micro-batches of `micro_batch` × `seq_len` tokens
    (`compiled_loss`: the token loss is compiled, as `model.compile=true` does, and keeps no fp32 logits)."""
    total, trainable = parameter_counts(model)
    dtype = compute_dtype(precision)
    true_half = str(precision).endswith("true") and dtype in (torch.bfloat16, torch.float16)
    param_bytes = 2 if true_half else (8 if dtype is torch.float64 else 4)
    weights = total * param_bytes
    if str(precision).endswith("mixed"):
        weights += total * 2  # autocast keeps a 16-bit copy of each weight during the step
    act_bytes = param_bytes if not str(precision).endswith("mixed") else 2
    per_token = 0.0
    shape = layer_shape(model) if trainable else None  # a counting model (n-gram) keeps no activations
    if shape is not None:
        layers, width, checkpointing = shape
        kept = layers * (1 if checkpointing else ACTIVATIONS_PER_LAYER) + (
            ACTIVATIONS_PER_LAYER if checkpointing else 0
        )
        per_token += (kept + 2) * width * act_bytes  # + embeddings and final norm
    vocab = getattr(getattr(model, "config", None), "vocab_size", 0)
    if lm_head and vocab and trainable:
        # logits and their gradient; eager, the loss's fp32 log-softmax takes the gradient's place at twice the size
        per_token += vocab * (2 * act_bytes if compiled_loss else act_bytes + 8)
    return MemoryEstimate(
        weights=weights / shards[0],
        grads=trainable * param_bytes / shards[1],
        optimizer=trainable * 2 * param_bytes / shards[2],
        activations=micro_batch * seq_len * per_token,
    )


def device_memory(device: torch.device, processes: int, model: nn.Module) -> tuple[float, str] | None:
    """(bytes, what they are) one device may use: a CUDA device's total memory, or the RAM available to each of
    the `processes` on this host plus what the model already holds (None when RAM cannot be read)."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return float(props.total_memory), f"the {format_bytes(props.total_memory)} of {props.name}"
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil comes with accelerate
        return None
    held = sum(p.numel() * p.element_size() for p in model.parameters())  # already allocated, part of the estimate
    available = psutil.virtual_memory().available / processes + held
    share = f" to each of {processes} processes" if processes > 1 else ""
    return available, f"the {format_bytes(available)} of RAM available{share}"


def preflight(
    task: Any, trainer: Any, datamodule: Any, enabled: bool = True, device_memory_gb: float | None = None
) -> MemoryEstimate | None:
    """Print parameters, tokens per optimizer step and the memory estimate; raise `LmlabError` naming the lever
    to pull when the estimate exceeds the device's memory (`device_memory_gb` overrides what the device reports)."""
    if not enabled:
        return None
    model = task.model
    micro = int(datamodule.batch_size)
    seq_len = int(getattr(datamodule, "block_size", 0) or getattr(task.model_config, "block_size", 1))
    total, trainable = parameter_counts(model)
    step_tokens = micro * seq_len * trainer.accumulate_grad_batches * trainer.world_size
    strategy = type(trainer.strategy).__name__
    estimate = estimate_memory(
        model, str(trainer.precision), micro, seq_len, shard_divisors(trainer.strategy, trainer.world_size),
        lm_head=getattr(task, "vocabulary_logits", True), compiled_loss=bool(getattr(task.model_config, "compile", 0)),
    )  # fmt: skip
    if trainer.is_global_zero:
        log.info(
            "preflight: %s parameters (%s trainable); micro-batch %d × %d tokens × %d accumulation × %d devices = "
            "%s tokens per optimizer step",
            f"{total:,}", f"{trainable:,}", micro, seq_len, trainer.accumulate_grad_batches, trainer.world_size,
            f"{step_tokens:,}",
        )  # fmt: skip
        log.info("preflight: memory per device (%s, %s): %s", trainer.precision, strategy, estimate.describe())
    device = trainer.strategy.root_device
    if device_memory_gb is not None:
        budget = (device_memory_gb * 2**30, f"preflight.device_memory_gb={device_memory_gb}")
    else:
        budget = device_memory(device, trainer.num_devices if device.type == "cpu" else 1, model)
    if budget is not None and estimate.total > budget[0]:
        raise LmlabError(f"estimated memory per device ({estimate.describe()}) exceeds {budget[1]}; "
                         f"{levers(estimate)} (preflight.enabled=false skips this check)")  # fmt: skip
    return estimate


def levers(estimate: MemoryEstimate) -> str:
    """The fix to name: activations shrink with the micro-batch, checkpointing and bf16; states with sharding."""
    if estimate.activations >= estimate.states:
        return ("lower data.batch_size (trainer.accumulate_grad_batches or batch.global_size keeps the global batch), "
                "set model.activation_checkpointing=true, or train in trainer.precision=bf16-mixed")  # fmt: skip
    return ("shard weights, gradients and AdamW state with hardware=fsdp over more devices (trainer.devices), "
            "train in trainer.precision=bf16-true, or choose a smaller model")  # fmt: skip
