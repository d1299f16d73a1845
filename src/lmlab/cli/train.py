"""`lmlab train`: compose the config, build each component, fit, report. Read this file to see the system."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf, open_dict

from lmlab.cli.runner import build_group, hydra_entry, instantiate_config, reports_errors
from lmlab.config.validate import check_run_config

if TYPE_CHECKING:
    import pytorch_lightning as pl

    from lmlab.data import LMDataModule
    from lmlab.tasks import CausalLMTask
    from lmlab.tokenizers import Tokenizer

log = logging.getLogger("lmlab")


def command_line_overrides() -> list[str]:
    """The `key=value` overrides this run was started with (empty outside a Hydra run, e.g. in tests)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def use_starting_point(cfg: DictConfig) -> None:
    """`task.init_from`: fine-tune an lmlab checkpoint, whose model config and tokenizer replace `cfg.model` and
    `cfg.tokenizer` (so the rest of the pipeline, and the saved run config, see them as if chosen here)."""
    if not cfg.task.get("init_from"):
        return
    from lmlab.tasks.finetune import starting_point_configs

    log.info("starting from checkpoint %s: its model config and tokenizer", cfg.task.init_from)
    model, tokenizer = starting_point_configs(cfg.task.init_from, command_line_overrides())
    with open_dict(cfg):
        cfg.model, cfg.tokenizer = model, tokenizer


def build_datamodule(cfg: DictConfig) -> LMDataModule:
    """Tokenizer recipe + data config -> a DataModule whose token cache is built (or found) and loaded."""
    from hydra.utils import instantiate

    log.info("instantiating tokenizer <%s>", cfg.tokenizer._target_)
    tokenizer_config = instantiate(cfg.tokenizer)
    log.info("instantiating data <%s>", cfg.data._target_)
    datamodule = instantiate(cfg.data, _partial_=True)(tokenizer=tokenizer_config)
    datamodule.setup()
    return datamodule


def build_task(cfg: DictConfig, tokenizer: Tokenizer, datamodule: Any = None) -> CausalLMTask:
    """Model config (sized by the tokenizer) + optimizer + scheduler (+ what the task reads from the data, e.g. the
    classes) -> the task that trains it."""
    from hydra.utils import get_class, instantiate

    log.info("instantiating model <%s>", cfg.model._target_)
    model_config = instantiate_config(cfg.model, "model", vocab_size=tokenizer.vocab_size)
    log.info("instantiating task <%s>", cfg.task._target_)
    task_class = get_class(cfg.task._target_)
    return instantiate(cfg.task, _partial_=True)(
        model=model_config,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        **task_class.tokenizer_arguments(tokenizer),
        **(task_class.data_arguments(datamodule) if datamodule is not None else {}),
    )


def build_trainer(cfg: DictConfig, extra_callbacks: Sequence[pl.Callback] = ()) -> pl.Trainer:
    """Callbacks, loggers and the Trainer of the chosen hardware profile."""
    import torch
    from hydra.utils import instantiate

    from lmlab.checkpoints.writing import trainer_plugins
    from lmlab.compute.hardware import check_hardware

    strategy = cfg.trainer.get("strategy", "auto")
    strategy = OmegaConf.to_container(strategy) if isinstance(strategy, DictConfig) else strategy
    check_hardware(cfg.trainer.accelerator, strategy, cfg.trainer.get("precision"))
    callbacks = [*build_group(cfg.get("callbacks"), "callback"), *extra_callbacks]
    loggers = build_group(cfg.get("logger"), "logger")
    log.info("instantiating trainer <%s>", cfg.trainer._target_)
    plugins = trainer_plugins(instantiate(cfg.trainer.get("plugins")))  # + atomic checkpoint writes, SLURM requeue
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=plugins)
    if trainer.strategy.root_device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 tensor cores for what runs in fp32 (as nanoGPT, litgpt)
    set_accumulation(trainer, cfg)
    return trainer


def set_accumulation(trainer: pl.Trainer, cfg: DictConfig) -> None:
    """Derive gradient accumulation from `batch.global_size` / `batch.global_tokens` and the world size."""
    from lmlab.compute.batching import accumulation_steps, describe_batch

    world_size = trainer.num_devices * trainer.num_nodes
    micro, block_size = cfg.data.batch_size, cfg.data.get("block_size")
    batch = cfg.get("batch") or {}
    trainer.accumulate_grad_batches = accumulation_steps(
        micro, world_size, batch.get("global_size"), batch.get("global_tokens"), block_size,
        configured=trainer.accumulate_grad_batches,
    )  # fmt: skip
    if isinstance(trainer.val_check_interval, int):  # Lightning counts it in micro-batches; lmlab in optimizer steps
        trainer.val_check_interval *= trainer.accumulate_grad_batches
    log.info("batch: %s", describe_batch(micro, world_size, trainer.accumulate_grad_batches, block_size))


def train(cfg: DictConfig) -> dict[str, float]:
    """Train as `cfg` says; return the final metrics."""
    import pytorch_lightning as pl

    from lmlab.callbacks import CheckpointMetadata, GracefulInterrupt, WallClock, safety_callbacks
    from lmlab.callbacks.reliability import exit_on_interrupt
    from lmlab.cli.run_identity import name_tracking_runs
    from lmlab.compute.preflight import preflight
    from lmlab.config.resume import finished, resume_run
    from lmlab.generation import sample_continuation
    from lmlab.runs.provenance import write_provenance
    from lmlab.runs.quiet import quiet_third_party
    from lmlab.runs.summary import performance, print_run_summary, write_summary
    from lmlab.runs.timing import split_wall_time, take_process_start
    from lmlab.tasks import CausalLMTask
    from lmlab.tokenizers import save_tokenizer

    clock = WallClock(take_process_start())  # from the process start (`lmlab train`), else now
    quiet_third_party()  # other libraries' start-up tips and deprecations, by their exact messages
    use_starting_point(cfg)
    cfg, resume_from = resume_run(cfg, command_line_overrides())  # `resume=...`: the earlier run's folder and config
    if resume_from and (done := finished(cfg)) is not None:
        return done  # a complete run, resumed again: nothing to train, and its summary and logs stay as they are
    run_dir = Path(cfg.paths.output_dir)
    name_tracking_runs(cfg)  # W&B run name = the overrides, group = the sweep (a resumed run keeps its own)
    resolved: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    check_run_config(resolved)  # keys, types and cross-field checks before any compute
    pl.seed_everything(cfg.seed, workers=True)

    datamodule = build_datamodule(cfg)
    tokenizer = datamodule.tokenizer
    task = build_task(cfg, tokenizer, datamodule)
    interrupt = GracefulInterrupt()
    extra_callbacks = [CheckpointMetadata(tokenizer.to_dict(), resolved), *safety_callbacks(interrupt), clock]
    trainer = build_trainer(cfg, extra_callbacks)
    preflight(task, trainer, datamodule, **cfg.get("preflight", {}))  # parameters, tokens/step, memory; or refuse
    if trainer.is_global_zero:  # the run's files, once: other processes (other nodes) may have folders of their own
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(resolved))
        write_provenance(run_dir, command_line_overrides())  # overrides, git commit (+ diff), package versions
        save_tokenizer(tokenizer, run_dir / "tokenizer.json")
    for logger in trainer.loggers:
        logger.log_hyperparams(resolved)

    if cfg.get("initial_validation"):
        trainer.validate(task, datamodule=datamodule, verbose=False)  # logged at step 0
    started = time.perf_counter()
    if cfg.trainer.max_steps != 0:  # 0: no training (e.g. the zero-shot baseline of a fine-tuning recipe)
        with exit_on_interrupt(interrupt, run_dir):  # never unpickle code from a checkpoint: weights_only
            trainer.fit(task, datamodule=datamodule, ckpt_path=resume_from or cfg.get("ckpt_path"), weights_only=True)
    fit_seconds = time.perf_counter() - started
    perf = performance(trainer)  # tokens/s and MFU of the training steps, peak memory
    if trainer.fast_dev_run:
        return {}
    fit_metrics = dict(trainer.callback_metrics)  # the last step's train/*, which a validation after fit clears
    if task.last_val_step != trainer.global_step:  # the budget ended between evaluations, or they scored a sample
        trainer.validate(task, datamodule=datamodule, verbose=False)  # the final weights on the whole split
    if cfg.trainer.max_steps == 0:
        save_starting_model(trainer, run_dir)
    final = fit_metrics | trainer.callback_metrics
    metrics = {k: float(v) for k, v in final.items() if k.startswith(("val/", "train/"))}  # not val_sample/*
    if cfg.get("test"):  # the final weights on the held-out test split
        metrics |= {k: float(v) for k, v in trainer.test(task, datamodule=datamodule, verbose=False)[0].items()}
    sample = None
    if isinstance(task, CausalLMTask):
        from lmlab.compute.parallel import whole_model

        model = whole_model(task.model, task.model_config)  # FSDP: gathered from the shards
        sample = sample_continuation(model, tokenizer, task.model_config.block_size, seed=cfg.seed, **cfg.sample)
    if trainer.is_global_zero:  # one summary per run, not one per process
        timing = split_wall_time(*clock.marks())  # start-up, training, validation, end
        print_run_summary(run_dir, metrics, trainer.checkpoint_callback, sample, perf, timing)
        write_summary(run_dir, task, datamodule, metrics, fit_seconds, perf, timing)
    return metrics


def save_starting_model(trainer: pl.Trainer, run_dir: Path) -> Path:
    """`trainer.max_steps=0`: the model as it starts (pretrained, `task.init_from`'s, or freshly initialised) saved
    as the run's `last.ckpt`, so that `lmlab eval`, `generate` and `chat` take it like any run's."""
    callback = trainer.checkpoint_callback
    folder = Path(callback.dirpath) if callback is not None and callback.dirpath else run_dir / "checkpoints"
    path = folder / "last.ckpt"
    trainer.save_checkpoint(path, weights_only=False)  # with the callbacks' metadata: tokenizer, run config
    log.info("trainer.max_steps=0: nothing trained; the starting model is saved as %s", path)
    return path


@reports_errors
def run(cfg: DictConfig) -> float | None:
    """Hydra task function: train, always close the W&B run, return the optimized metric for sweepers."""
    from lmlab.runs.loggers import finish_wandb

    split_threads()
    ranks = sweep_ranks(cfg)
    if ranks > 1:  # one job of a sweep on several processes: its ranks start here (see lmlab.compute.launch)
        from lmlab.compute.launch import run_ranks

        OmegaConf.resolve(cfg)  # ${hydra:...} and ${now:...} resolve here, where Hydra's state is
        return run_ranks(functools.partial(run, cfg), ranks)
    try:
        metrics = train(cfg)
    finally:
        finish_wandb()
    return metrics.get(cfg.get("optimized_metric") or "")


def split_threads() -> None:
    """In a sweep launched by joblib (`hydra/launcher=joblib`), give this job its share of the cores as torch threads,
    so that `n_jobs` parallel jobs do not each start one thread per core."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or "joblib" not in str(HydraConfig.get().launcher.get("_target_", "")):
        return
    import torch

    from lmlab.compute.threads import available_cores, parallel_jobs, threads_per_job

    cores = available_cores()
    jobs = parallel_jobs(HydraConfig.get().launcher.get("n_jobs"), cores)
    torch.set_num_threads(threads := threads_per_job(cores, jobs))
    log.info("joblib launcher: %d jobs at once on %d cores, %d torch threads each", jobs, cores, threads)


def sweep_ranks(cfg: DictConfig) -> int:
    """How many rank processes this run must start itself: more than 1 only for a multi-process job of a sweep,
    where Lightning's re-run of the command line would re-run the sweep."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return 1
    from lmlab.compute.launch import ranks_to_start

    trainer = cfg.trainer
    return ranks_to_start(trainer.get("strategy", "auto"), trainer.get("devices", 1), trainer.get("num_nodes", 1))


main = hydra_entry("train", run)
