"""`resume=auto | <run dir> | <checkpoint>`: continue an earlier run in its own directory, and report interruptions.

Hydra makes a fresh folder for every invocation; a resumed run instead keeps writing into the earlier run's folder
(checkpoints, CSV/W&B logs, config), so one run is one folder however often it was stopped. The fresh folder keeps
only this invocation's Hydra record (`.hydra/`, `train.log`), and `<run dir>/resumes.log` lists every resume.

The resumed run uses the earlier run's saved `config.yaml`. Keys given on this command line override it, except
those the checkpoint depends on (`PROTECTED`), which must keep their saved value.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from lmlab.checkpoints.find import RUN_CONFIG, checkpoint_step, checkpoints_of, latest_checkpoint, locate
from lmlab.compute.ranks import is_first_process
from lmlab.errors import LmlabError
from lmlab.runs.loggers import trim_metrics

log = logging.getLogger("lmlab")

PROTECTED = ("model", "tokenizer", "data", "task", "optimizer", "scheduler", "seed")
"""Top-level keys a resumed run must share with its checkpoint (weights, data position, optimizer state)."""
NOT_COMPARED = ("resume", "ckpt_path", "initial_validation", "paths", "logger")  # where things are, not what
# (`logger`: where metrics go; its W&B name and group are filled in per run)
_ABSENT = object()


def resume_run(cfg: DictConfig, overrides: list[str]) -> tuple[DictConfig, str | None]:
    """The config to train with and the checkpoint to continue from (`None`: a fresh run, `cfg` unchanged).

    A run that already reached its budget (`finished`) is left as it is, but for a line in `resumes.log`; the train
    command then does nothing.
    """
    choice = cfg.get("resume")
    if not choice:
        return cfg, None
    if cfg.get("ckpt_path"):
        raise LmlabError("both resume and ckpt_path are set; keep one (resume continues in the run's own folder)")
    fresh_dir = Path(cfg.paths.output_dir)
    if str(choice) == "auto":
        run_dir = latest_matching_run(cfg, fresh_dir)
        if run_dir is None:
            log.warning("resume=auto: no earlier run of this configuration with a checkpoint; starting a new run")
            return cfg, None
        checkpoint = latest_checkpoint(run_dir)
    else:
        run_dir, checkpoint = locate(Path(str(choice)).expanduser())
    resumed = resumed_config(cfg, read_run_config(run_dir), run_dir, overrides)
    complete = finished(resumed) is not None  # e.g. the docs' one restart command, repeated after the end
    if is_first_process():  # every rank runs this command (before its Trainer exists); the folder is tidied once
        note_resume(run_dir, fresh_dir, checkpoint, complete)
        for metrics in () if complete else run_dir.glob("*/metrics.csv"):  # rows after the checkpoint come again
            trim_metrics(metrics, checkpoint_step(checkpoint))
    if complete:
        log.info(
            "resume: the run in %s is complete (its summary.json shows the training budget reached); nothing to do. "
            "To train further, raise trainer.max_steps", run_dir,
        )  # fmt: skip
    else:
        quiet_resume_warnings()
        log.info("resuming %s from %s", run_dir, checkpoint)
    return resumed, str(checkpoint)


def finished(cfg: DictConfig) -> dict[str, float] | None:
    """The final metrics of the resumed run `cfg` when it has already reached its budget (None: train on)."""
    from lmlab.runs.summary import finished_metrics

    trainer = cfg.trainer
    return finished_metrics(Path(cfg.paths.output_dir), trainer.max_steps, trainer.get("max_epochs"))


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """The resolved config a run saved at its start."""
    path = run_dir / RUN_CONFIG
    if not path.is_file():
        raise LmlabError(f"resume: {run_dir} has no {RUN_CONFIG}, so it is not an lmlab training run folder")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)  # type: ignore[return-value]


def comparable(config: dict[str, Any], run_dir: str) -> dict[str, Any]:
    """`config` without what says where things live: the run folder and every `paths.*` folder become placeholders
    in every value (e.g. `data.cache_dir`), so runs of one config compare equal wherever they were made."""
    config = relocate(config, run_dir.rstrip("/"), "<run>")
    folders = {k: v for k, v in (config.get("paths") or {}).items() if isinstance(v, str) and v}
    for key, folder in sorted(folders.items(), key=lambda kv: -len(kv[1])):
        config = relocate(config, folder.rstrip("/"), f"<paths.{key}>")
    return {k: v for k, v in config.items() if k not in NOT_COMPARED}


def relocate(value: Any, old: str, new: str) -> Any:
    """Every string in `value` that lies under the folder `old` moved under `new`."""
    if isinstance(value, dict):
        return {k: relocate(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [relocate(v, old, new) for v in value]
    if isinstance(value, str) and (value == old or value.startswith(old + "/")):
        return new + value[len(old) :]
    return value


def latest_matching_run(cfg: DictConfig, fresh_dir: Path) -> Path | None:
    """The run beside this one (`outputs/<task_name>/*/*`) with the same config and the newest checkpoint."""
    root = fresh_dir.parents[1] if len(fresh_dir.parents) > 1 else fresh_dir.parent
    wanted = comparable(OmegaConf.to_container(cfg, resolve=True), str(fresh_dir))  # type: ignore[arg-type]
    newest: tuple[float, Path] | None = None
    for config_file in root.glob(f"*/*/{RUN_CONFIG}"):
        run_dir = config_file.parent
        if run_dir.resolve() == fresh_dir.resolve() or not (found := checkpoints_of(run_dir)):
            continue
        saved = read_run_config(run_dir)
        if comparable(saved, str(saved.get("paths", {}).get("output_dir", run_dir))) != wanted:
            continue
        mtime = found[0].stat().st_mtime
        if newest is None or mtime > newest[0]:
            newest = (mtime, run_dir)
    return None if newest is None else newest[1]


def resumed_config(cfg: DictConfig, saved: dict[str, Any], run_dir: Path, overrides: list[str]) -> DictConfig:
    """The saved config (moved to where the run folder is now) with this command line's allowed overrides."""
    saved = relocate(saved, str(saved.get("paths", {}).get("output_dir", run_dir)).rstrip("/"), str(run_dir))
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)  # so overridden keys that point into the run resolve to the old folder
    current = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    merged = OmegaConf.create(saved)
    choices = saved_choices(run_dir)
    for override in overrides:
        key, _, value = override.partition("=")
        key = key.lstrip("+")
        if key in NOT_COMPARED or key.startswith(("hydra.", "hydra/")) or choices.get(key, _ABSENT) == value:
            continue  # also: a config group chosen as the run chose it (the first command line, repeated)
        if key.startswith("~") or OmegaConf.select(current, key, default=_ABSENT) is _ABSENT:
            raise LmlabError(
                f"resume: {override} replaces or removes a part of the saved config; set single keys instead "
                "(e.g. trainer.max_steps=...), or start a new run without resume"
            )
        new, old = OmegaConf.select(current, key), OmegaConf.select(merged, key)
        if key.split(".")[0] in PROTECTED and new != old:
            raise LmlabError(
                f"resume: {override} changes {key} of the run in {run_dir}, and its checkpoint depends on it; drop "
                f"the override, or {new_run_instead(merged)}"
            )
        OmegaConf.update(merged, key, new, force_add=True)
    with open_dict(merged):
        merged.resume = cfg.resume
        merged.initial_validation = False  # the run's first part already logged it
    return merged


def new_run_instead(saved: DictConfig) -> str:
    """The advice for a refused change: a new run, from the checkpoint's weights where the task can (`init_from`,
    which only the classification task has)."""
    if "init_from" in (saved.get("task") or {}):
        return "start a new run from its weights (leave out resume, add task.init_from=<checkpoint>)"
    return "start a new run (leave out resume)"


def quiet_resume_warnings() -> None:
    """Silence Lightning's warnings that are wrong for an lmlab resume: the data position is restored (by the
    DataModule, not the DataLoader), and the CSV logger and checkpoint folder are meant to be the existing ones."""
    for message in (
        "You're resuming from a checkpoint that ended before the epoch ended",
        "Experiment logs directory .* exists and is not empty",
        "Checkpoint directory .* exists and is not empty",
    ):
        warnings.filterwarnings("ignore", message=message)


def saved_choices(run_dir: Path) -> dict[str, Any]:
    """The config-group choices of the run's first invocation (`hardware: ddp_cpu`, …), from Hydra's record."""
    path = run_dir / ".hydra" / "hydra.yaml"
    if not path.is_file():
        return {}
    choices = OmegaConf.load(path).hydra.runtime.get("choices") or {}
    return {str(k): "null" if v is None else str(v) for k, v in choices.items()}


def note_resume(run_dir: Path, fresh_dir: Path, checkpoint: Path, complete: bool = False) -> None:
    """Append to `<run dir>/resumes.log` (so `lmlab report` knows this invocation's folder is not a run of its own),
    and drop temporary files an earlier kill left among the checkpoints."""
    for stale in (run_dir / "checkpoints").glob(".*.tmp"):
        log.info("resume: removing %s, left by an interrupted checkpoint write", stale)
        stale.unlink(missing_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    what = f"found the run complete at {checkpoint}; nothing done" if complete else f"resumed from {checkpoint}"
    with open(run_dir / "resumes.log", "a", encoding="utf-8") as file:
        file.write(f"{stamp} {what} (this invocation's Hydra folder: {fresh_dir})\n")
