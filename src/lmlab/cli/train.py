"""`lmlab train`: compose the config, build each component, fit, report. Read this file to see the system."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from lmlab.cli.configs import config_dir
from lmlab.cli.runner import build_group, reports_errors

log = logging.getLogger("lmlab")


def train(cfg: DictConfig) -> dict[str, float]:
    """Train as `cfg` says; return the final metrics."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from lmlab.callbacks import CheckpointMetadata
    from lmlab.hardware import check_accelerator
    from lmlab.reporting import print_run_summary, sample_text
    from lmlab.tokenizers import save_tokenizer

    check_accelerator(cfg.trainer.accelerator)
    run_dir = Path(cfg.paths.output_dir)
    resolved: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(resolved))
    pl.seed_everything(cfg.seed, workers=True)

    log.info("instantiating tokenizer <%s>", cfg.tokenizer._target_)
    tokenizer_config = instantiate(cfg.tokenizer)
    log.info("instantiating data <%s>", cfg.data._target_)
    datamodule = instantiate(cfg.data, _partial_=True)(tokenizer=tokenizer_config)
    tokenizer = datamodule.tokenizer  # builds or loads the token cache
    save_tokenizer(tokenizer, run_dir / "tokenizer.json")

    log.info("instantiating model <%s>", cfg.model._target_)
    model_config = instantiate(cfg.model, vocab_size=tokenizer.vocab_size)
    log.info("instantiating task <%s>", cfg.task._target_)
    task = instantiate(cfg.task, _partial_=True)(
        model=model_config,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        token_bytes=tokenizer.token_bytes(),
    )

    callbacks = [
        *build_group(cfg.get("callbacks"), "callback"),
        CheckpointMetadata(tokenizer.to_dict(), resolved),
    ]
    loggers = build_group(cfg.get("logger"), "logger")
    log.info("instantiating trainer <%s>", cfg.trainer._target_)
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in loggers:
        logger.log_hyperparams(resolved)

    trainer.fit(task, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    if trainer.fast_dev_run or trainer.sanity_checking:
        return {}
    if trainer.global_step % int(cfg.trainer.val_check_interval):
        trainer.validate(task, datamodule=datamodule, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "train/"))}
    sample = sample_text(task.model, tokenizer, model_config.block_size, seed=cfg.seed, **cfg.sample)
    print_run_summary(run_dir, metrics, trainer.checkpoint_callback, sample)
    return metrics


@reports_errors
def run(cfg: DictConfig) -> float | None:
    """Hydra task function: train, always close the loggers, return the optimized metric for sweepers."""
    from lmlab.tracking import finish_wandb

    try:
        metrics = train(cfg)
    finally:
        finish_wandb()
    return metrics.get(cfg.get("optimized_metric") or "")


def main() -> None:
    hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")(run)()
