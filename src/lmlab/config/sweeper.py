"""Hydra's Optuna sweeper with two fixes for lmlab's presets: a search space naming a key the config lacks is refused
before any trial runs, and a study stored in SQLite resumes to `n_trials` in total instead of running `n_trials` more.

Hydra's Optuna sweeper (`_impl.py`) loads an existing study (`load_if_exists=True`) but then asks for `n_trials`
new trials, numbers their job folders from 0 again (overwriting the finished trials' run folders) and restarts a seeded
sampler from its seed (so the first new trials repeat the first old ones). The sweeper class
(`hydra_plugins/lmlab_optuna_sweeper.py`, where Hydra requires plugins to live) calls `prepare_sweep`, which reads the
stored study first and sets the remaining count, the first job number and a sampler seed that moves with the trials
already run.
"""

from __future__ import annotations

import logging
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lmlab.config.groups import config_dir, group_options, unknown_choice
from lmlab.errors import LmlabError

log = logging.getLogger("lmlab")
_ABSENT = object()


@dataclass(frozen=True)
class ResumePlan:
    """What is left of a stored study: how many trials to run and the job number (= trial number) of the first."""

    to_run: int
    first_job: int
    finished: int
    interrupted: list[dict[str, Any]]


def plan_resume(study: Any, n_trials: int) -> ResumePlan:
    """Count the study's finished trials; fail the ones an interruption left running and queue their parameters again
    (they run first, so an interrupted trial is retried rather than lost)."""
    from optuna.exceptions import ExperimentalWarning
    from optuna.trial import TrialState

    finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
    first_job = len(study.trials)
    interrupted = [t for t in study.trials if t.state == TrialState.RUNNING]
    for trial in interrupted:
        study.tell(trial.number, state=TrialState.FAIL)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)  # enqueue_trial is "experimental" in the pinned optuna
            study.enqueue_trial(trial.params)
    return ResumePlan(max(0, n_trials - finished), first_job, finished, [t.params for t in interrupted])


def check_search_space(config: DictConfig, overrides: list[str], preset: str | None) -> None:
    """Refuse a swept key that the composed config does not have (Hydra would only fail inside the first trial)."""
    where = f"conf/hparams_search/{preset}.yaml or the command line" if preset else "the command line"
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if override.is_add() or override.is_delete() or key.startswith("hydra"):
            continue
        if (config_dir() / key).is_dir():  # a config group: its choices must exist
            options = group_options(key)
            swept = override.sweep_string_iterator() if override.is_sweep_override() else []
            for choice in swept:
                if choice not in options:
                    raise LmlabError(f"hparams_search: {unknown_choice(key, choice, options)}")
        elif OmegaConf.select(config, key, default=_ABSENT, throw_on_missing=False) is _ABSENT:
            parent = key.rsplit(".", 1)[0] if "." in key else ""
            node = OmegaConf.select(config, parent, default=None) if parent else config
            known = (
                f"; {parent or 'the config'} has: {', '.join(map(str, node))}" if isinstance(node, DictConfig) else ""
            )
            raise LmlabError(f"hparams_search parameter {key} is not in the config; fix it in {where}{known}")


def prepare_sweep(impl: Any, config: DictConfig, arguments: list[str]) -> None:
    """Before Hydra's Optuna sweep loop (`impl` is its `OptunaSweeperImpl`): check the search space, then continue a
    stored study where it stopped. A user error prints one line and exits 1 (the sweeper runs outside the task
    function, where `reports_errors` would catch it)."""
    try:
        params = [f"{k}={v}" for k, v in (impl.params or {}).items()]
        check_search_space(config, [*params, *arguments], config.hydra.runtime.choices.get("hparams_search"))
        if impl.storage is not None:
            _resume(impl, config)
    except LmlabError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


def _resume(impl: Any, config: DictConfig) -> None:
    """Open (or create) the stored study and set `impl` to run only what is left of it."""
    import optuna

    if not impl.study_name:
        raise LmlabError("hydra.sweeper.storage is set but study_name is not; give the study a fixed name")
    Path(config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)  # SQLite needs the folder to exist
    study = optuna.create_study(
        study_name=impl.study_name, storage=impl.storage, directions=impl._get_directions(), load_if_exists=True
    )
    if not study.trials:
        return
    plan = plan_resume(study, impl.n_trials)
    log.info(
        "resuming study %s (%s): %d of %d trials finished; running %d more from job %d%s",
        impl.study_name, impl.storage, plan.finished, impl.n_trials, plan.to_run, plan.first_job,
        f", first retrying {len(plan.interrupted)} interrupted" if plan.interrupted else "",
    )  # fmt: skip
    impl.n_trials, impl.job_idx = plan.to_run, plan.first_job
    sampler = config.hydra.sweeper.get("sampler")
    if sampler is not None and sampler.get("seed") is not None and not sampler.get("_partial_"):
        # A sampler restarted from its seed would propose the first trials' parameters again.
        impl.sampler = instantiate(sampler, seed=int(sampler.seed) + plan.first_job)
