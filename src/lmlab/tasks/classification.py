"""Text classification: a pooled linear head on any backbone (GPT, LSTM, BERT, a pretrained HF encoder)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import SumMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score

from lmlab.errors import LmlabError
from lmlab.models import ModelConfig, model_config_to_dict, parameter_counts
from lmlab.tasks.base import ModelTask, OptimizerFactory, SchedulerFactory, decay_groups
from lmlab.tasks.finetune import apply_finetune_mode, class_weight_list, load_backbone
from lmlab.tasks.pooling import default_pooling, pool
from lmlab.tokenizers import Tokenizer

log = logging.getLogger("lmlab")

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""ids (B, T), attention mask (B, T), labels (B,)."""


class ClassificationTask(ModelTask):
    """Fine-tunes (or trains from scratch) a backbone with a classification head; logs `val/acc`, `val/f1`, `val/loss`.

    Args:
        model, optimizer, scheduler, weight_decay: see `ModelTask`; `optimizer`'s lr is the backbone's.
        num_classes, label_names: the classes, from the data; the names are saved with the checkpoint.
        pooling: `last`, `mean` or `cls`; None = `last` for causal models, `cls` for encoders.
        finetune: `full`, `frozen` (head only) or `lora` (adapters on attention/MLP linears + head).
        head_lr: learning rate of the head; None = the optimizer's.
        head_dropout: dropout before the head.
        class_weights: None, `balanced`, or one cross-entropy weight per class.
        class_counts: training examples per class (for `balanced`).
        lora_r, lora_alpha, lora_dropout: LoRA rank, scale and dropout.
        init_from: an lmlab checkpoint (or run directory) whose model weights the backbone starts from.
        init_weights: False keeps the backbone's random weights: `init_from` then gives only the model config and
            tokenizer (the from-scratch control of a pretrain -> fine-tune comparison).
        tokenizer_kind: kind of the run's tokenizer, checked against the model (a HF encoder needs its own).
    """

    vocabulary_logits = False

    def __init__(
        self,
        model: ModelConfig | dict[str, Any],
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        weight_decay: float = 0.01,
        num_classes: int = 2,
        label_names: Sequence[str] | None = None,
        pooling: str | None = None,
        finetune: str = "full",
        head_lr: float | None = None,
        head_dropout: float = 0.1,
        class_weights: str | Sequence[float] | None = None,
        class_counts: Sequence[int] | None = None,
        lora_r: int = 8,
        lora_alpha: float = 16.0,
        lora_dropout: float = 0.05,
        init_from: str | None = None,
        init_weights: bool = True,
        tokenizer_kind: str | None = None,
    ) -> None:
        super().__init__(model, optimizer, scheduler, weight_decay)
        names = [str(n) for n in label_names] if label_names is not None else [str(i) for i in range(num_classes)]
        if num_classes < 2 or len(names) != num_classes:
            raise LmlabError(f"a classifier needs at least two classes and one name per class; got {names}")
        config = self.model_config
        if config.family == "hf_encoder" and tokenizer_kind not in (None, "hf"):
            raise LmlabError(
                f"model=hf_encoder needs the model's own tokenizer, not tokenizer={tokenizer_kind}; use tokenizer=hf "
                "tokenizer.name_or_path=<the model folder> (experiment=sentiment_minilm does)"
            )
        if init_from and init_weights:
            load_backbone(self.model, init_from, config)
        self.pooling = default_pooling(config.causal, pooling)
        self.finetune = finetune
        self.model = apply_finetune_mode(self.model, finetune, config.family, lora_r, lora_alpha, lora_dropout)
        if finetune == "frozen":
            self.model.eval()  # a fixed feature extractor: no dropout (Lightning keeps each module's mode)
        self.head = nn.Sequential(nn.Dropout(head_dropout), nn.Linear(feature_width(self.model), num_classes))
        weights = class_weight_list(class_weights, list(class_counts) if class_counts else None, num_classes)
        self.register_buffer("class_weights", torch.tensor(weights) if weights else None)
        self.head_lr = head_lr
        self.label_names = names
        self.hparams.update(
            model=model_config_to_dict(config),  # a HF encoder records its architecture while loading
            num_classes=num_classes, label_names=names, pooling=self.pooling, finetune=finetune, head_lr=head_lr,
            head_dropout=head_dropout, class_weights=weights, lora_r=lora_r, lora_alpha=lora_alpha,
            lora_dropout=lora_dropout, init_from=str(init_from) if init_from else None, init_weights=init_weights,
        )  # fmt: skip
        self.metrics = nn.ModuleDict({split: split_metrics(num_classes) for split in ("val", "test")})

    def check_model(self, config: ModelConfig) -> None:
        if getattr(config, "family", "") == "ngram":
            raise LmlabError(
                "model=ngram counts n-grams and has no hidden states to fine-tune; use model=gpt, lstm, bert or "
                "hf_encoder with task=classification"
            )

    @staticmethod
    def tokenizer_arguments(tokenizer: Tokenizer) -> dict[str, Any]:
        return {"tokenizer_kind": getattr(tokenizer, "kind", None)}

    @staticmethod
    def data_arguments(datamodule: Any) -> dict[str, Any]:
        """The classes (count, names, training counts) of a labeled DataModule."""
        if not hasattr(datamodule, "label_names"):
            raise LmlabError(
                "task=classification needs labeled data; use data=rotten_tomatoes, data=imdb or "
                "data=text_classification"
            )
        names = datamodule.label_names
        return {"num_classes": len(names), "label_names": names, "class_counts": datamodule.class_counts()}

    def train(self, mode: bool = True) -> ClassificationTask:
        super().train(mode)
        if self.finetune == "frozen":
            self.model.eval()  # a frozen backbone is a fixed feature extractor: no dropout noise
        return self

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits (B, num_classes) of ids (B, T) with attention mask (B, T) (None: no padding)."""
        mask = torch.ones_like(ids) if mask is None else mask
        # Causal models need no mask: right padding comes after every real token, so it never reaches them.
        args = (ids,) if self.model_config.causal else (ids, mask)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.finetune != "frozen"):
            h = self.model.hidden_states(*args)  # (B, T, C)
        return self.head(pool(h, mask, self.pooling).float())

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return F.cross_entropy(logits, labels, weight=self.class_weights, reduction=reduction)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        ids, mask, labels = batch
        loss = self.loss(self(ids, mask), labels)
        self.log_train_loss(loss)
        return loss

    def param_groups(self) -> list[dict[str, Any]]:
        """Backbone groups at the optimizer's lr, head groups at `head_lr`; decay on ≥2-D weights only."""
        backbone = decay_groups(self.model, self.weight_decay)
        head = decay_groups(self.head, self.weight_decay)
        if self.head_lr is not None:
            head = [{**group, "lr": self.head_lr} for group in head]
        return [group for group in [*backbone, *head] if group["params"]]

    def on_fit_start(self) -> None:
        super().on_fit_start()
        total, trainable = parameter_counts(self)
        log.info(
            "task.finetune=%s: %s of %s parameters trainable (%.2f %%)",
            self.finetune, f"{trainable:,}", f"{total:,}", 100 * trainable / max(total, 1),
        )  # fmt: skip

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self.update_metrics("val", batch)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self.update_metrics("test", batch)

    def update_metrics(self, split: str, batch: Batch) -> None:
        ids, mask, labels = batch
        logits = self(ids, mask)
        metrics = self.metrics[split]
        metrics["nats"].update(self.loss(logits, labels, reduction="sum"))
        metrics["count"].update(torch.tensor(float(labels.numel()), device=labels.device))
        preds = logits.argmax(dim=-1)
        for name in ("acc", "f1", "confusion"):
            metrics[name].update(preds, labels)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self.finish_metrics("val", save_figure=not self.trainer.sanity_checking)

    def on_test_epoch_end(self) -> None:
        self.finish_metrics("test", save_figure=True)

    def finish_metrics(self, split: str, save_figure: bool) -> None:
        """Log `split/loss`, `split/acc`, `split/f1`; draw the confusion matrix into the run directory."""
        metrics = self.metrics[split]
        values = {name: metric.compute() for name, metric in metrics.items()}
        for metric in metrics.values():
            metric.reset()
        if values["count"] <= 0:
            return
        self.log(f"{split}/loss", values["nats"] / values["count"], prog_bar=split == "val")
        self.log(f"{split}/acc", values["acc"], prog_bar=split == "val")
        self.log(f"{split}/f1", values["f1"])
        if save_figure and self.trainer.is_global_zero:
            self.save_confusion_matrix(split, values["confusion"].cpu().numpy())

    def save_confusion_matrix(self, split: str, matrix: Any) -> None:
        """`confusion_matrix.png` (validation) or `confusion_matrix_test.png`; also a W&B image when logging there."""
        from pytorch_lightning.loggers import WandbLogger

        from lmlab.analysis.plots import plot_confusion_matrix

        name = "confusion_matrix.png" if split == "val" else f"confusion_matrix_{split}.png"
        title = f"{split}, step {self.global_step}"
        path = plot_confusion_matrix(matrix, self.label_names, Path(self.trainer.default_root_dir) / name, title)
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=f"{split}/confusion_matrix", images=[str(path)], step=self.global_step)


def split_metrics(num_classes: int) -> nn.ModuleDict:
    """Summed loss and example count, micro accuracy, macro F1 and the confusion matrix of one split."""
    return nn.ModuleDict(
        {
            "nats": SumMetric(),
            "count": SumMetric(),
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "f1": MulticlassF1Score(num_classes, average="macro"),
            "confusion": MulticlassConfusionMatrix(num_classes),
        }
    )


def feature_width(model: nn.Module) -> int:
    """Width of the hidden states a backbone's `hidden_states` returns."""
    config = getattr(model, "config", None)
    for name in ("n_hidden", "n_embd"):
        width = getattr(model, name, None) or getattr(config, name, None)
        if width:
            return int(width)
    raise LmlabError(f"cannot tell the hidden width of {type(model).__name__}; it needs an n_embd attribute")
