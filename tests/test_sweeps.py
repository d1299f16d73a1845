"""Sweeps: Optuna presets and resumable SQLite studies, multi-process jobs inside sweeps, launcher presets, and the
one-line errors for a bad search space or an unknown launcher. End-to-end runs are `slow`."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.types import RunMode
from omegaconf import OmegaConf

from lmlab.compute.launch import ranks_to_start, run_ranks
from lmlab.config.groups import check_group_choices, config_dir, group_options, hydra_group_options
from lmlab.config.sweeper import check_search_space, plan_resume
from lmlab.errors import LmlabError
from tests.helpers.cli import run_cli
from tests.helpers.compose import TINY_OVERRIDES, compose_train, tiny_model

ROOT = Path(__file__).resolve().parents[1]
PROBE = "+callbacks.rank_probe._target_=tests.helpers.rank_probe.RecordRank"  # each rank writes rank<N>.json


def compose_with_hydra(overrides: list[str]):
    """The train config with its `hydra` node (sweeper, launcher), as the CLI composes it."""
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        return compose("train", overrides=overrides, return_hydra_config=True)


# --- config groups and bad input ----------------------------------------------------------------------------------


def test_unknown_launcher_and_preset_name_the_choices() -> None:
    launchers = hydra_group_options("hydra/launcher")
    assert {"basic", "joblib", "slurm", "slurm_local", "submitit_local", "submitit_slurm"} <= set(launchers)
    with pytest.raises(LmlabError, match=r"^unknown hydra/launcher 'nope'; choose one of: basic, joblib, slurm, "):
        check_group_choices("train", ["-m", "hydra/launcher=nope"])
    with pytest.raises(LmlabError, match=r"^unknown hparams_search 'optuna'; choose one of: sentiment_optuna, "):
        check_group_choices("train", ["hparams_search=optuna"])
    check_group_choices(
        "train", ["hydra/launcher=slurm_local", "hparams_search=shakespeare_optuna", "hydra.job.chdir=1"]
    )


@pytest.mark.parametrize("preset", group_options("hparams_search"))
def test_every_preset_searches_keys_that_exist(preset: str) -> None:
    cfg = compose_with_hydra([f"hparams_search={preset}"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.lmlab_optuna_sweeper.LmlabOptunaSweeper"
    storage = OmegaConf.to_container(sweeper)["storage"]  # unresolved: the study lives inside the sweep folder
    assert storage == "sqlite:///${hydra.sweep.dir}/optuna.db" and sweeper.study_name
    assert sweeper.sampler._target_.endswith("TPESampler") and sweeper.sampler.seed is not None
    assert cfg.hydra.mode == RunMode.MULTIRUN  # no -m needed
    higher_is_better = cfg.optimized_metric.split("/")[-1] in ("acc", "f1")
    assert sweeper.direction == ("maximize" if higher_is_better else "minimize")
    params = [f"{k}={v}" for k, v in sweeper.params.items()]
    assert len(params) >= 2
    check_search_space(cfg, params, preset)  # raises if a key is missing


def test_search_space_typos_are_refused_before_trials(tmp_path) -> None:
    cfg = compose_train(tmp_path)
    message = r"^hparams_search parameter optimizer.lrr is not in the config; fix it in conf/hparams_search/p.yaml or"
    with pytest.raises(LmlabError, match=message + r" the command line; optimizer has: .*\blr\b"):
        check_search_space(cfg, ["optimizer.lrr=interval(1e-4, 1e-3)"], "p")
    with pytest.raises(
        LmlabError, match=r"^hparams_search: unknown model 'gtp'; did you mean gpt\? choose one of: bert, gpt"
    ):
        check_search_space(cfg, ["model=choice(gpt, gtp)"], "p")
    check_search_space(cfg, ["optimizer.lr=interval(1e-4, 1e-3)", "model=choice(gpt, lstm)", "+extra=1"], None)


def test_bad_search_space_from_the_shell_is_one_line_and_runs_nothing(tmp_path) -> None:
    result = run_cli(
        "train",
        "hparams_search=shakespeare_optuna",
        '++hydra.sweeper.params={optimizer.lrr:"interval(1e-4, 1e-3)"}',  # ++ adds a key to the preset's space
        f"hydra.sweep.dir={tmp_path}/sweep",
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: hparams_search parameter optimizer.lrr is not in the config")
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "sweep").exists()


# --- resuming a stored study --------------------------------------------------------------------------------------


def test_plan_resume_counts_finished_trials_and_retries_interrupted(tmp_path) -> None:
    import optuna
    from optuna.distributions import UniformDistribution
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path}/optuna.db")
    space = {"x": UniformDistribution(0.0, 1.0)}
    for _ in range(2):
        trial = study.ask(space)
        study.tell(trial, trial.params["x"])
    interrupted = study.ask(space)  # a trial whose process was killed: RUNNING forever

    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/optuna.db")  # as a new process sees it
    plan = plan_resume(study, n_trials=3)
    assert (plan.to_run, plan.first_job, plan.finished) == (1, 3, 2)
    assert plan.interrupted == [interrupted.params]
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]
    assert study.ask(space).params == interrupted.params  # the retry runs first, with the same parameters
    assert plan_resume(study, n_trials=2).to_run == 0


# --- ranks of a multi-process sweep job ---------------------------------------------------------------------------


@pytest.fixture
def no_cluster(monkeypatch):
    for name in (
        "LOCAL_RANK",
        "SLURM_NTASKS",
        "SLURM_JOB_NAME",
        "TORCHELASTIC_RUN_ID",
        "LSB_JOBID",
        "OMPI_COMM_WORLD_SIZE",
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_ranks_to_start(no_cluster) -> None:
    assert ranks_to_start("ddp", 2, 1) == 2
    assert ranks_to_start("auto", "2", 1) == 2  # Lightning's auto picks ddp for several devices
    assert ranks_to_start("fsdp", [0, 1, 2], 1) == 3
    assert ranks_to_start({"_target_": "DDPStrategy", "start_method": "popen"}, 2, 1) == 2
    for in_process in ("ddp_spawn", "ddp_fork", "ddp_notebook", {"start_method": "spawn"}):
        assert ranks_to_start(in_process, 2, 1) == 1  # Lightning starts these ranks without the command line
    assert ranks_to_start("ddp", 1, 1) == ranks_to_start("auto", "auto", 1) == 1  # one process (no GPU here)
    with pytest.raises(LmlabError, match=r"trainer.num_nodes=2 inside a sweep needs a cluster.*hydra/launcher=slurm"):
        ranks_to_start("ddp", 2, 2)
    no_cluster.setenv("LOCAL_RANK", "1")  # a rank lmlab (or torchrun) started
    assert ranks_to_start("ddp", 2, 1) == 1
    no_cluster.delenv("LOCAL_RANK")
    no_cluster.setenv("SLURM_NTASKS", "2")  # srun started one task per device
    no_cluster.setenv("SLURM_JOB_NAME", "train")
    assert ranks_to_start("ddp", 2, 2) == 1


def _record_rank(folder: str) -> str:
    rank = os.environ["LOCAL_RANK"]
    env = {k: os.environ[k] for k in ("WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    Path(folder, f"rank{rank}.json").write_text(json.dumps({"pid": os.getpid(), **env}))
    return f"result of rank {rank}"


def test_run_ranks_forks_each_rank_and_returns_rank_zero(tmp_path, no_cluster) -> None:
    import functools

    assert run_ranks(functools.partial(_record_rank, str(tmp_path)), 2) == "result of rank 0"
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["pid"] != ranks[1]["pid"] != os.getpid()
    assert ranks[0]["WORLD_SIZE"] == "2" and ranks[0]["MASTER_PORT"] == ranks[1]["MASTER_PORT"]
    assert "LOCAL_RANK" not in os.environ  # the job's own process is left as it was


def _fail_on_rank_one() -> None:
    if os.environ["LOCAL_RANK"] == "1":
        sys.exit(3)
    time.sleep(60)  # rank 0 would wait in a collective; the failure of rank 1 must stop it


def test_a_failing_rank_stops_the_job(no_cluster) -> None:
    started = time.perf_counter()
    with pytest.raises(SystemExit) as exit_:
        run_ranks(_fail_on_rank_one, 2)
    assert exit_.value.code == 3 and time.perf_counter() - started < 30


def test_slurm_preset_asks_one_task_per_device() -> None:
    cfg = compose_with_hydra(["hydra/launcher=slurm", "hardware=ddp_cpu", "+trainer.num_nodes=2"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (cfg.trainer.devices, 2, 2)
    local = compose_with_hydra(["hydra/launcher=slurm_local"]).hydra.launcher
    assert local._target_.endswith("LocalLauncher") and local.tasks_per_node == 1


def test_slurm_preset_makes_an_sbatch_script(tmp_path, monkeypatch) -> None:
    """The preset's values pass submitit's checks and become one task per device in the sbatch script (a fake `srun`
    on PATH lets submitit's SLURM executor start without a cluster)."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    (tmp_path / "srun").write_text("#!/bin/sh\n")
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    cfg = compose_with_hydra(["hydra/launcher=slurm", "hardware=ddp_cpu", "hydra.launcher.partition=gpu"])
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    params = {k: v for k, v in params.items() if k not in ("_target_", "submitit_folder", "max_num_timeout")}
    base = set(OmegaConf.structured(BaseQueueConf).keys())  # the renaming Hydra's SlurmLauncher.launch does
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    script = executor._executor._make_submission_file_text("python -m lmlab", "uid")
    for line in ("--ntasks-per-node=2", "--gpus-per-node=2", "--nodes=1", "--partition=gpu", "--time=240"):
        assert f"#SBATCH {line}" in script


def test_threads_per_job_splits_the_cores() -> None:
    from lmlab.compute.threads import parallel_jobs, threads_per_job

    assert [threads_per_job(8, n) for n in (1, 2, 3, 4, 8, 16)] == [8, 4, 2, 2, 1, 1]
    assert threads_per_job(2, 2) == 1 and threads_per_job(1, 0) == 1
    assert [parallel_jobs(n, 8) for n in (None, 0, 1, 2, -1, -2, -20)] == [1, 1, 1, 2, 8, 7, 1]


def test_joblib_preset_composes_and_splits_threads(monkeypatch) -> None:
    import torch
    from hydra.core.hydra_config import HydraConfig

    from lmlab.cli.train import split_threads
    from lmlab.compute.threads import available_cores, threads_per_job

    assert "joblib" in hydra_group_options("hydra/launcher")
    cfg = compose_with_hydra(["hydra/launcher=joblib", "optimizer.lr=1e-3"])
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher") and cfg.hydra.launcher.n_jobs == 2
    before = torch.get_num_threads()
    HydraConfig.instance().set_config(cfg)
    try:
        split_threads()
        assert torch.get_num_threads() == threads_per_job(available_cores(), 2)
    finally:
        HydraConfig.instance().cfg = None
        torch.set_num_threads(before)


# --- end to end (slow) --------------------------------------------------------------------------------------------


def tiny_args(tmp_path: Path) -> list[str]:
    corpus = tmp_path / "corpus.txt"
    from tests.helpers.compose import TINY_TEXT

    corpus.write_text(TINY_TEXT, encoding="utf-8")
    return [
        *TINY_OVERRIDES,
        *tiny_model([]),
        "data=text_files",
        f"data.corpus.paths=[{corpus}]",
        f"paths.cache_dir={tmp_path}/cache",
    ]


def run_sweep(tmp_path: Path, *args: str, timeout: int = 600):
    """`lmlab train ARGS` with tiny sizes; the repository root is importable so that the rank probe loads."""
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = run_cli("train", *args, *tiny_args(tmp_path), cwd=tmp_path, env=env, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def rank_records(job_dir: Path) -> list[dict]:
    """What each rank of a job trained with; asserts that both ranks had the same parameters and model."""
    records = [json.loads((job_dir / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in records] == [0, 1] and all(r["world_size"] == 2 for r in records)
    assert records[0]["pid"] != records[1]["pid"]
    for key in ("lr", "model", "weights_sum"):
        assert records[0][key] == records[1][key], (job_dir, key, records)
    assert list((job_dir / "checkpoints").glob("*.ckpt"))
    return records


def job_dirs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def load_study(sweep: Path):
    import optuna

    # study_name: ${task_name}, named after the choices of tiny_args (data=text_files, tokenizer=char)
    return optuna.load_study(study_name="text_files_char", storage=f"sqlite:///{sweep}/optuna.db")


# Merged into the preset's space (++ adds keys). Its model.n_layer/n_embd are fixed by the tiny sizes, and fixed
# values leave the search space.
SEARCH = '++hydra.sweeper.params={optimizer.lr:"tag(log, interval(1e-4, 3e-3))",model.dropout:"choice(0.0, 0.1)"}'


@pytest.mark.slow
def test_optuna_study_resumes_without_repeating_finished_trials(tmp_path) -> None:
    from optuna.distributions import LogUniformDistribution
    from optuna.trial import TrialState

    sweep = tmp_path / "sweep"
    common = ["hparams_search=shakespeare_optuna", SEARCH, f"hydra.sweep.dir={sweep}"]
    run_sweep(tmp_path, *common, "hydra.sweeper.n_trials=2")
    first = [t.params for t in load_study(sweep).trials]
    assert len(first) == 2 and [p.name for p in job_dirs(sweep)] == ["0", "1"]
    stamps = {p: p.stat().st_mtime_ns for p in sweep.glob("[01]/**/*") if p.is_file()}
    # A third trial killed mid-run: asked from the study, never told.
    killed = load_study(sweep).ask({"optimizer.lr": LogUniformDistribution(1e-4, 3e-3)})

    run_sweep(tmp_path, *common, "hydra.sweeper.n_trials=3")
    trials = load_study(sweep).trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 3 and [t.params for t in complete[:2]] == first
    assert trials[killed.number].state == TrialState.FAIL
    assert complete[2].number == 3 and complete[2].params["optimizer.lr"] == killed.params["optimizer.lr"]
    assert [p.name for p in job_dirs(sweep)] == ["0", "1", "3"]  # job folder = trial number; none overwritten
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    run_sweep(tmp_path, *common, "hydra.sweeper.n_trials=4")  # one more, sampled: the seeded sampler moved on
    trials = load_study(sweep).trials
    assert len(trials) == 5 and trials[4].state == TrialState.COMPLETE
    assert trials[4].params["optimizer.lr"] not in [t.params["optimizer.lr"] for t in trials[:4]]

    result = run_sweep(tmp_path, *common, "hydra.sweeper.n_trials=4")  # already complete: runs nothing
    assert len(load_study(sweep).trials) == 5 and "Launching" not in result.stdout + result.stderr
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert best.best_value == min(t.value for t in load_study(sweep).trials if t.state == TrialState.COMPLETE)


@pytest.mark.slow
def test_grid_sweep_with_two_processes_per_job(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    run_sweep(tmp_path, "-m", "hardware=ddp_cpu", "optimizer.lr=1e-3,3e-3", PROBE, f"hydra.sweep.dir={sweep}")
    jobs = job_dirs(sweep)
    assert [p.name for p in jobs] == ["0", "1"]
    assert [rank_records(job)[0]["lr"] for job in jobs] == [1e-3, 3e-3]


@pytest.mark.slow
def test_optuna_sweep_with_two_processes_per_job(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    run_sweep(tmp_path, "hparams_search=shakespeare_optuna", SEARCH, "hardware=ddp_cpu", "hydra.sweeper.n_trials=2",
              PROBE, f"hydra.sweep.dir={sweep}")  # fmt: skip
    trials = load_study(sweep).trials
    jobs = job_dirs(sweep)
    assert [p.name for p in jobs] == ["0", "1"] and len(trials) == 2
    for job, trial in zip(jobs, trials, strict=True):  # every rank trained with the parameters Optuna sampled
        record = rank_records(job)[0]
        assert (
            record["lr"] == trial.params["optimizer.lr"] and record["model"]["dropout"] == trial.params["model.dropout"]
        )


@pytest.mark.slow
def test_single_run_with_two_processes(tmp_path) -> None:
    run_sweep(tmp_path, "hardware=ddp_cpu", "optimizer.lr=2e-3", PROBE, f"hydra.run.dir={tmp_path}/run")
    assert rank_records(tmp_path / "run")[0]["lr"] == 2e-3  # rank 1 came from Lightning re-running the command


@pytest.mark.slow
def test_submitit_local_sweep_with_two_processes_per_job(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    run_sweep(tmp_path, "-m", "hydra/launcher=slurm_local", "hardware=ddp_cpu", "optimizer.lr=1e-3,3e-3", PROBE,
              f"hydra.sweep.dir={sweep}")  # fmt: skip
    jobs = job_dirs(sweep)
    assert [p.name for p in jobs] == ["0", "1"] and (sweep / ".submitit").is_dir()
    assert sorted(rank_records(job)[0]["lr"] for job in jobs) == [1e-3, 3e-3]


@pytest.mark.slow
def test_joblib_sweep_runs_jobs_in_parallel_processes(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    result = run_sweep(tmp_path, "-m", "hydra/launcher=joblib", "optimizer.lr=1e-3,3e-3", "trainer.max_steps=2",
                       "trainer.val_check_interval=1", f"hydra.sweep.dir={sweep}")  # fmt: skip
    assert [p.name for p in job_dirs(sweep)] == ["0", "1"]
    assert all((job / "summary.json").is_file() for job in job_dirs(sweep))
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    for job in job_dirs(sweep):  # each job took its share of the cores
        assert "joblib launcher: 2 jobs at once on" in "".join(log.read_text() for log in job.glob("*.log"))
