"""A short generated sample at every validation, as a W&B table and TensorBoard text."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger

from lmlab.generation import sample_continuation
from lmlab.tasks import CausalLMTask


class GeneratedSamples(pl.Callback):
    """After each validation of a causal LM, continue `prompt` and log the text.

    W&B gets the table `val/samples` (step, prompt, sample), re-logged with all rows so far so its latest version
    reads as the history; TensorBoard gets the text `val/sample`. Costs `max_new_tokens` decoding steps on every
    rank (the same on each, so a sharded model's forward works; rank 0 logs). Does nothing without such a logger,
    for other tasks, or with `max_new_tokens: 0`. The fixed `seed` makes samples of different steps differ only by
    the weights.
    """

    def __init__(
        self,
        prompt: str = "\n",
        max_new_tokens: int = 64,
        temperature: float = 0.8,
        top_k: int | None = 40,
        seed: int = 0,
    ) -> None:
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_k = top_k
        self.seed = seed
        self.rows: list[list[Any]] = []
        self.sampled_step: int | None = None
        """Step of the latest sample: the same weights, validated again, are not sampled twice."""

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:

        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger | TensorBoardLogger)]
        tokenizer = getattr(trainer.datamodule, "tokenizer", None)
        if (
            trainer.sanity_checking
            or not loggers
            or self.max_new_tokens <= 0
            or tokenizer is None
            or not isinstance(pl_module, CausalLMTask)
            or self.sampled_step == trainer.global_step  # the final whole-split validation after fit's last one
        ):
            return
        self.sampled_step = trainer.global_step  # on every rank, so that all of them skip the same validations
        text = self.sample(pl_module, tokenizer)  # on every rank: a sharded model's forward needs them all
        if not trainer.is_global_zero:
            return
        step = trainer.global_step
        self.rows.append([step, self.prompt, text])
        for logger in loggers:
            if isinstance(logger, WandbLogger):
                logger.log_text("val/samples", columns=["step", "prompt", "sample"], data=self.rows, step=step)
            else:
                logger.experiment.add_text("val/sample", f"```\n{self.prompt}{text}\n```", global_step=step)

    def sample(self, pl_module: Any, tokenizer: Any) -> str:
        """The continuation of the prompt (the prompt itself left out)."""
        block_size = pl_module.model_config.block_size
        options = {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_k": self.top_k}
        text = sample_continuation(pl_module.model, tokenizer, block_size, self.prompt, seed=self.seed, **options)
        return text[len(self.prompt) :] if text.startswith(self.prompt) else text
