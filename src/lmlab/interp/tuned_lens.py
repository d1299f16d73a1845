"""Training the tuned lens: a LightningModule whose only parameters are the per-layer translators; the model it
reads stays frozen, and each layer is trained to predict what the final layer predicts (KL to the final layer)."""

from __future__ import annotations

import warnings

import pytorch_lightning as pl
import torch
from torch import nn

from lmlab.interp.lens import TunedLens, readout, residual_streams


class TunedLensTask(pl.LightningModule):
    """Fits `TunedLens` translators on a frozen model: loss = mean over layers of KL(final || layer's tuned lens)."""

    def __init__(self, model: nn.Module, width: int, depth: int, lr: float = 1e-3) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.lens = TunedLens(depth, width)
        self.lr = lr

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x = batch[0]
        logits, streams = residual_streams(self.model, x)  # (B, T, V), (L+1, B, T, C): no grad, frozen model
        target = logits.float().log_softmax(-1)  # (B, T, V)
        predicted = readout(self.model)(self.lens(streams)[:-1]).float().log_softmax(-1)  # (L, B, T, V)
        kl = (target.exp() * (target - predicted)).sum(-1)  # (L, B, T)
        loss = kl.mean()
        self.log("tuned_lens/kl", loss, prog_bar=True)
        return loss

    def train(self, mode: bool = True) -> TunedLensTask:
        super().train(mode)
        self.model.eval()  # no dropout in the model being read
        return self

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.lens.parameters(), lr=self.lr, weight_decay=0.0)


def fit_tuned_lens(
    model: nn.Module, loader: torch.utils.data.DataLoader, steps: int, lr: float, accelerator: str
) -> TunedLens:
    """Train translators for `steps` batches of `loader` ((x, y) windows) and return them (in eval mode)."""
    from lmlab.inference.evaluate import lightning_quiet
    from lmlab.interp.lens import n_layers

    width = int(getattr(model.config, "n_embd", 0) or model.model.config.hidden_size)
    task = TunedLensTask(model, width, n_layers(model), lr)
    trainer = pl.Trainer(max_steps=steps, accelerator=accelerator, devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    with lightning_quiet(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode")  # the frozen model, on purpose
        trainer.fit(task, train_dataloaders=loader)
    return task.lens.eval()
