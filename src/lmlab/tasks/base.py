"""What every training task shares: building the model from its config, and optimizer wiring."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.plugins.precision import MixedPrecision, Precision
from pytorch_lightning.utilities import GradClipAlgorithmType
from torch import nn
from torch.optim import Optimizer
from torchmetrics import Metric

from lmlab.models import ModelConfig, build_model, model_config_from_dict, model_config_to_dict
from lmlab.tasks.optimizers import MuonAdamW, hidden_matrices
from lmlab.tokenizers import Tokenizer

OptimizerFactory = Callable[..., Optimizer]
SchedulerFactory = Callable[[Optimizer], Any]


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices (≥2-D: linear and embedding weights), none on biases and norm gains."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


VAL_PREFIX, SAMPLE_PREFIX = "val/", "val_sample/"
"""Metrics of the whole validation split, and of the fixed sample that validations during fit may score instead."""

FUSED_DEVICES = ("cuda", "cpu")
"""Where `fused: null` picks torch's fused AdamW kernel: one launch per step on CUDA, and on the CPU far cheaper
than the default per-tensor loop (timings: docs/benchmarks.md)."""


def fused_option(optimizer_factory: OptimizerFactory, device: torch.device, loss_scaling: bool = False) -> dict:
    """`fused: null` in the optimizer config of Adam, AdamW or MuonAdamW (for its AdamW part) means: the fused kernel
    on CUDA and CPU (`FUSED_DEVICES`), torch's default elsewhere, for other optimizers (fused SGD has no FSDP2
    sharding rule), or under fp16 loss scaling (Lightning cannot clip the gradients of an optimizer that unscales them
    itself). Returns the keyword to add to the factory's call."""
    keywords = getattr(optimizer_factory, "keywords", {})
    optimizer_class = getattr(optimizer_factory, "func", None)
    adam = isinstance(optimizer_class, type) and issubclass(
        optimizer_class, (torch.optim.Adam, torch.optim.AdamW, MuonAdamW)
    )
    if adam and keywords.get("fused", False) is None and device.type in FUSED_DEVICES and not loss_scaling:
        return {"fused": True}
    return {}


def token_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean", ignore_index: int = -100
) -> torch.Tensor:
    """Cross-entropy of logits (..., V) against integer targets (...), in fp32 (bf16 logits are upcast)."""
    return F.cross_entropy(
        logits.flatten(0, -2).float(), targets.flatten(), reduction=reduction, ignore_index=ignore_index
    )  # (N, V) against (N,)


class ModelTask(pl.LightningModule):
    """A LightningModule that owns one model built from a config, and an optimizer + schedule for it.

    Args:
        model: the model's config (dataclass or its dict form); the task builds the module, so the saved
            hyper-parameters are a small dict, never a module.
        optimizer: partial optimizer, called with parameter groups.
        scheduler: partial LR scheduler, called with the optimizer; stepped every optimizer step.
        weight_decay: decay applied to ≥2-D weights only.
    """

    vocabulary_logits = True
    """Whether a step computes logits over the vocabulary for every token (language models; a classifier does not):
    they dominate activation memory at large vocabularies, so the preflight estimate counts them."""

    def __init__(
        self,
        model: ModelConfig | dict[str, Any],
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        weight_decay: float = 0.1,
    ) -> None:
        super().__init__()
        config = model_config_from_dict(model) if isinstance(model, dict) else model
        self.check_model(config)
        self.model = build_model(config)
        # After building: a pretrained family records what it read (e.g. `hf_config`) so checkpoints rebuild it.
        self.save_hyperparameters({"model": model_config_to_dict(config), "weight_decay": weight_decay})
        self.model_config = config
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.weight_decay = weight_decay
        self.last_val_step = -1
        """Global step of the latest whole-split validation, so the CLI knows whether the final weights were evaluated
        (a validation of the data's sample during fit does not count)."""
        self._loss_sum: torch.Tensor | float = 0.0
        self._loss_count = 0
        self.token_loss: Callable[..., torch.Tensor] = token_cross_entropy  # compiled with the model

    def check_model(self, config: ModelConfig) -> None:
        """Refuse a model this objective cannot train (raise `LmlabError` naming the fix)."""

    @staticmethod
    def tokenizer_arguments(tokenizer: Tokenizer) -> dict[str, Any]:
        """Constructor arguments this task takes from the tokenizer (e.g. bytes per token, the mask id)."""
        return {}

    @staticmethod
    def data_arguments(datamodule: Any) -> dict[str, Any]:
        """Constructor arguments this task takes from the DataModule (e.g. a classifier's classes)."""
        return {}

    def param_groups(self) -> list[dict[str, Any]]:
        """What the optimizer updates: decay on ≥2-D weights only (tasks with a head add its groups)."""
        return decay_groups(self.model, self.weight_decay)

    def configure_optimizers(self) -> Any:
        groups = self.param_groups()
        if not any(group["params"] for group in groups):
            return None  # a counting model (n-gram) trains without gradient steps
        if self.optimizer_factory is None:
            raise RuntimeError(f"{type(self).__name__} was built without an optimizer; pass optimizer=... to train")
        optimizer_class = getattr(self.optimizer_factory, "func", None)
        if getattr(optimizer_class, "splits_hidden_matrices", False):  # e.g. Muon's matrices (MuonAdamW)
            groups = optimizer_class.split_groups(groups, hidden_matrices(self.model))
        loss_scaling = self._trainer is not None and getattr(self.trainer.precision_plugin, "scaler", None) is not None
        optimizer = self.optimizer_factory(groups, **fused_option(self.optimizer_factory, self.device, loss_scaling))
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(
        self, optimizer: Optimizer, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        """Clip as Lightning does, except under bf16 autocast with a fused optimizer, which Lightning's mixed-precision
        plugin refuses because such an optimizer unscales fp16 gradients itself: bf16 has no loss scaler, so the
        gradients are clipped as in fp32."""
        plugin = self.trainer.precision_plugin
        if isinstance(plugin, MixedPrecision) and plugin.scaler is None:
            algorithm = GradClipAlgorithmType(gradient_clip_algorithm or GradClipAlgorithmType.NORM)
            Precision.clip_gradients(plugin, optimizer, gradient_clip_val or 0.0, algorithm)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_model(self) -> None:
        """Trainer hook, once per process before each stage: FSDP2 sharding when the strategy set up a device mesh
        (`hardware=fsdp`), then `model.compile=true` compiles the inner model (never this LightningModule, which
        Lightning then fails to train) and the token loss: its upcast, log-softmax and gradient become fused kernels
        that never write the fp32 (tokens, vocabulary) logits, which at GPT-2's vocabulary is most of the loss's
        memory traffic (timings: docs/benchmarks.md)."""
        if self.device_mesh is not None:
            from lmlab.compute.parallel import shard_modules

            shard_modules(self, self.device_mesh["data_parallel"])
        if getattr(self.model_config, "compile", False) and getattr(self.model, "_compiled_call_impl", None) is None:
            self.model.compile()  # in place: parameter names, state dicts and checkpoints stay unchanged
            self.token_loss = torch.compile(token_cross_entropy)

    def log_train_loss(self, loss: torch.Tensor) -> None:
        """Collect one micro-batch's loss; `train/loss` is logged once per optimizer step as the mean over the
        global batch (all accumulated micro-batches, all processes), not the last micro-batch of one process."""
        self._loss_sum = self._loss_sum + loss.detach()
        self._loss_count += 1

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        if self._loss_count:
            mean = self._loss_sum / self._loss_count
            if self.is_logging_step():
                if self.trainer.world_size > 1:
                    mean = self.trainer.strategy.reduce(mean, reduce_op="mean")  # all processes, on the device
                # Logged as a CPU value: Lightning reads progress-bar values back on every step, which for a GPU
                # tensor would make every step wait for the GPU; this way it waits once per logging step.
                self.log("train/loss", mean.detach().cpu(), prog_bar=True)
            self._loss_sum, self._loss_count = 0.0, 0

    def is_logging_step(self) -> bool:
        """Whether the optimizer step being computed reaches the loggers (every `trainer.log_every_n_steps` steps, and
        the last): Lightning writes only those steps' values, and each `self.log` costs about a millisecond of Python,
        a few % of a small model's step when paid on every step."""
        trainer = self._trainer
        if trainer is None or trainer.fast_dev_run:
            return True
        step = trainer.global_step + 1
        return step % max(trainer.log_every_n_steps, 1) == 0 or 0 < trainer.max_steps <= step

    def on_fit_start(self) -> None:
        # A `trainer.validate` before fitting leaves metric states as inference tensors; fitting updates them in place.
        for module in self.modules():
            if isinstance(module, Metric):
                module.reset()

    def on_validation_epoch_end(self) -> None:
        if self._trainer is None or not (self._trainer.sanity_checking or self.validating_sample()):
            self.last_val_step = self.global_step

    def validating_sample(self) -> bool:
        """Whether the running validation scores the data's fixed sample (during fit, `data.val_sample_tokens`) rather
        than the whole split, as the DataModule says; DataModules without a sample always score the whole split."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        sampled = getattr(datamodule, "validation_is_sampled", None)
        return bool(sampled()) if callable(sampled) else False

    def log(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        """`LightningModule.log`, except that a validation of the sample logs `val/<metric>` as `val_sample/<metric>`:
        a sample's number never passes for the whole split's, while each task logs its metrics one way."""
        if name.startswith(VAL_PREFIX) and self.validating_sample():
            name = SAMPLE_PREFIX + name.removeprefix(VAL_PREFIX)
        super().log(name, value, *args, **kwargs)
