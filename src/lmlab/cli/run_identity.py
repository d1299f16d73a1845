"""Names a run for tracking servers from what Hydra knows: the job's overrides and the sweep it belongs to."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, open_dict

WANDB_TARGET = "lmlab.runs.loggers.wandb_logger"
TENSORBOARD_TARGET = "lmlab.runs.loggers.TensorBoardLogger"
MAX_GROUP_CHARS = 128  # W&B's limit on a group name
MAX_FOLDER_CHARS = 128  # a readable run name, well under file systems' 255 bytes


def hydra_run_identity() -> tuple[str | None, str | None]:
    """(name, group): the job's override string (`model=lstm,optimizer.lr=0.001`, None without overrides) and,
    in a multirun, the sweep directory (None for a single run or outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None, None
    hydra_cfg = HydraConfig.get()
    name = hydra_cfg.job.override_dirname or None
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return name, None
    return name, sweep_group(hydra_cfg.sweep.dir, hydra_cfg.runtime.cwd)


def sweep_group(sweep_dir: str, cwd: str) -> str:
    """The sweep directory as the group name: relative to the launch directory when inside it, at most 128
    characters (the tail, which holds the date and time)."""
    path = Path(sweep_dir)
    if path.is_absolute() and path.is_relative_to(cwd):
        path = path.relative_to(cwd)
    return str(path)[-MAX_GROUP_CHARS:]


def name_tracking_runs(cfg: DictConfig) -> None:
    """Fill `name` and `group` of the W&B logger, and the `version` (sub-folder) of the TensorBoard logger, where the
    config leaves them null: TensorBoard names a run by its folder, so a sweep there reads as W&B's does."""
    name, group = hydra_run_identity()
    for node in (cfg.get("logger") or {}).values():
        if not isinstance(node, DictConfig):
            continue
        with open_dict(node):
            if node.get("_target_") == WANDB_TARGET:
                node.name = node.get("name") or name
                node.group = node.get("group") or group
            elif node.get("_target_") == TENSORBOARD_TARGET and node.get("version") is None:
                node.version = folder_name(name)


def folder_name(name: str | None) -> str:
    """A run name as one folder name: `/` (e.g. in a path override) would nest folders; at most 128 characters."""
    return (name or "").replace("/", "_").replace("\\", "_")[:MAX_FOLDER_CHARS]
