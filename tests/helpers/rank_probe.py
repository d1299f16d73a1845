"""A callback for the multi-process sweep tests: every rank writes what it trains with into its run folder.

Used from a subprocess as `+callbacks.rank_probe._target_=tests.helpers.rank_probe.RecordRank`
(repository root on PYTHONPATH).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytorch_lightning as pl


class RecordRank(pl.Callback):
    """At the start of training, write `rank<N>.json`: the rank's optimizer settings, model config and process."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimizer = trainer.optimizers[0]
        model_config = getattr(pl_module, "model_config", None)
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "strategy": type(trainer.strategy).__name__,
            "pid": os.getpid(),
            "lr": optimizer.defaults["lr"],
            "model": dataclasses.asdict(model_config) if dataclasses.is_dataclass(model_config) else None,
            "weights_sum": float(sum(p.detach().double().sum() for p in pl_module.parameters())),
        }
        path = Path(trainer.default_root_dir) / f"rank{trainer.global_rank}.json"
        path.write_text(json.dumps(record, default=str))
