"""Every option of every config group composes and instantiates; every experiment composes."""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lmlab.cli.train import build_datamodule, build_task, build_trainer, use_starting_point
from lmlab.config.groups import check_group_choices, config_dir, group_options
from lmlab.config.validate import check_run_config
from lmlab.data import ClassificationDataModule, LMDataModule, PreferenceDataModule, SFTDataModule
from lmlab.errors import LmlabError
from lmlab.tasks import ModelTask
from tests.helpers.companions import companions
from tests.helpers.compose import compose_train

GROUPS = ["model", "tokenizer", "data", "task", "optimizer", "scheduler", "hardware", "logger", "callbacks",
          "experiment", "debug", "paths", "hydra"]  # fmt: skip


def test_group_folders_are_the_documented_ones() -> None:
    found = {p.name for p in config_dir().iterdir() if p.is_dir()}
    assert set(GROUPS) <= found


def instantiate_all(cfg) -> None:
    """Build every component the way `lmlab train` does; a CUDA profile must refuse a CPU-only machine."""
    use_starting_point(cfg)  # task.init_from: model and tokenizer from a checkpoint
    check_run_config(OmegaConf.to_container(cfg, resolve=True))  # keys and types against every target's signature
    datamodule = build_datamodule(cfg)
    assert isinstance(datamodule, LMDataModule | ClassificationDataModule | SFTDataModule | PreferenceDataModule)
    task = build_task(cfg, datamodule.tokenizer, datamodule)
    assert isinstance(task, ModelTask)
    counting = getattr(task.model, "counting", False)  # n-grams count instead of taking optimizer steps
    assert isinstance(task.configure_optimizers(), type(None) if counting else dict | torch.optim.Optimizer)
    refusal = expected_refusal(cfg)
    if refusal is None:
        assert isinstance(build_trainer(cfg), pl.Trainer)
    else:  # profiles this machine cannot run must say so (tests/test_hardware.py builds them pointed at the CPU)
        with pytest.raises(LmlabError, match=refusal):
            build_trainer(cfg)


def expected_refusal(cfg) -> str | None:
    """The fix a profile must name on this machine: CUDA profiles without a GPU, DeepSpeed without its package."""
    if cfg.trainer.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        return "hardware=cpu"
    if "deepspeed" in str(cfg.trainer.get("strategy")).lower() and importlib.util.find_spec("deepspeed") is None:
        return "pip install deepspeed"
    return None


OPTIONS = [(g, o) for g in GROUPS if g not in ("hydra", "paths") for o in group_options(g)]


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_instantiates(tmp_path: Path, tiny_corpus: Path, group: str, option: str):
    overrides = [f"{group}={option}", *companions(group, option, tmp_path, tiny_corpus)]
    if (group != "data" or option == "text_files") and not any(o.startswith("data") for o in overrides[1:]):
        overrides += ["data=text_files", f"data.corpus.paths=[{tiny_corpus}]"]
    cfg = compose_train(tmp_path, overrides)
    OmegaConf.resolve(cfg)
    assert OmegaConf.missing_keys(cfg) == set()
    instantiate_all(cfg)


def test_optimizer_binds_parameter_groups(cfg_train) -> None:
    optimizer = instantiate(cfg_train.optimizer)
    assert isinstance(optimizer, functools.partial)
    params = [torch.nn.Parameter(torch.zeros(2, 2))]
    assert isinstance(optimizer(params), torch.optim.AdamW)


def test_experiments_start_with_their_command() -> None:
    for path in sorted((config_dir() / "experiment").glob("*.yaml")):
        lines = path.read_text().splitlines()
        assert lines[1].startswith("# lmlab train ") and f"experiment={path.stem}" in lines[1], path


def test_default_experiment_is_nanogpt_cpu_recipe(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path)
    with_defaults = compose_train(tmp_path, ["experiment=shakespeare_char"])
    assert cfg.task_name == with_defaults.task_name == "shakespeare_char"
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        full = compose("train")
    assert (full.model.n_layer, full.model.n_head, full.model.n_embd, full.model.block_size) == (
        4,
        4,
        128,
        64,
    )
    assert (full.data.batch_size, full.trainer.max_steps, full.model.dropout) == (12, 2000, 0.0)
    assert (full.optimizer.lr, full.scheduler.min_lr, full.scheduler.warmup_steps) == (1e-3, 1e-4, 100)


def compose_run(overrides: list[str]):
    """The train config as a run sees it, with the `hydra` node that names its folder (no tiny sizes)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        return compose("train", overrides=overrides, return_hydra_config=True)


def without_hydra(cfg) -> dict:
    """The resolved config of a run, as its task function receives it (task_name resolved before `hydra` goes)."""
    resolved = OmegaConf.to_container(cfg, resolve=False)
    resolved.pop("hydra")
    resolved["task_name"] = cfg.task_name
    resolved["paths"]["output_dir"] = "run"  # ${hydra:runtime.output_dir} is set only when Hydra starts the job
    return OmegaConf.to_container(OmegaConf.create(resolved), resolve=True)


def test_default_run_is_the_shakespeare_char_experiment() -> None:
    """The default recipe lives in the groups' defaults, not in an experiment that other choices inherit."""
    default, recipe = compose_run([]), compose_run(["experiment=shakespeare_char"])
    assert without_hydra(default) == without_hydra(recipe)
    assert default.hydra.run.dir.startswith("outputs/shakespeare_char/")


@pytest.mark.parametrize(
    ("overrides", "batch_size", "name"),
    [
        (["task=classification", "data=text_classification"], 32, "text_classification_char"),
        (["task=classification", "data=rotten_tomatoes", "tokenizer=bpe"], 32, "rotten_tomatoes_bpe"),
        (["data=text_files", "tokenizer=bpe"], 12, "text_files_bpe"),
        (["model=bert", "task=masked_lm", "experiment=null"], 12, "shakespeare_char"),
        (["experiment=shakespeare_bert"], 32, "shakespeare_bert"),
    ],
)
def test_data_and_task_choices_keep_their_own_settings_and_name(overrides, batch_size, name) -> None:
    """`data=`/`task=` without an experiment: that data's batch size, a run folder and W&B job type of its own
    (the default experiment used to impose batch 12 and `shakespeare_char` on every run)."""
    cfg = compose_run([o if o != "experiment=null" else "~experiment" for o in overrides])
    assert cfg.data.batch_size == batch_size
    assert cfg.task_name == name and cfg.logger.wandb.job_type == name
    assert cfg.hydra.run.dir.startswith(f"outputs/{name}/") and cfg.hydra.job.name == name


def test_command_headers_name_a_real_run_folder() -> None:
    """The `ckpt=outputs/<name>/...` examples at the top of the primary configs name folders runs really make."""
    names = {compose_run([]).task_name} | {
        OmegaConf.load(p).task_name for p in (config_dir() / "experiment").glob("*.yaml")
    }
    for command in ("eval", "generate", "export", "predict"):
        header = (config_dir() / f"{command}.yaml").read_text().split("defaults:")[0]
        folders = set(re.findall(r"ckpt=outputs/([^/\s]+)/", header))
        assert folders and folders <= names, (command, folders)


NO_OUTPUT_COMMANDS = ("eval", "generate", "chat", "serve", "export", "predict", "report")


@pytest.mark.parametrize("command", NO_OUTPUT_COMMANDS)
def test_no_output_commands_share_one_hydra_block(command: str) -> None:
    """Commands that write only what they are asked to take Hydra's settings from conf/hydra/no_output.yaml."""
    from hydra import compose, initialize_config_dir

    assert "hydra" not in OmegaConf.load(config_dir() / f"{command}.yaml")  # no copy of the block
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        hydra = compose(command, return_hydra_config=True).hydra
    assert (hydra.output_subdir, hydra.run.dir, hydra.job.chdir) == (None, ".", False)
    assert hydra.runtime.choices["hydra/job_logging"] == "none"


def test_lora_settings_have_one_home_and_one_default() -> None:
    """`task.finetune=lora` and `model.lora=true` (hf_causal) take rank, alpha and dropout from one file, and the
    Python defaults agree with it (they used to differ: dropout 0.05 vs 0.0)."""
    import inspect

    from lmlab.models import HFCausalConfig
    from lmlab.tasks import ClassificationTask

    home = OmegaConf.to_container(OmegaConf.load(config_dir() / "task" / "base" / "lora.yaml"))
    assert set(home) == {"lora_r", "lora_alpha", "lora_dropout"}
    task = compose_run(["task=classification", "data=rotten_tomatoes"]).task
    model = compose_run(["model=hf_causal"]).model
    signature = inspect.signature(ClassificationTask).parameters
    fields = HFCausalConfig.__dataclass_fields__
    for key, value in home.items():
        assert task[key] == model[key] == signature[key].default == fields[key].default == value, key
    for group in ("task", "model"):  # set in the one file only
        assert not any(re.search(r"^lora_r:", p.read_text(), re.M) for p in (config_dir() / group).glob("*.yaml"))


def test_data_choices_extend_bases_that_are_not_choices() -> None:
    """Shared data keys live in conf/data/base/ (not offered as data=...), not in a choice that others extend."""
    options = group_options("data")
    bases = sorted(p.stem for p in (config_dir() / "data" / "base").glob("*.yaml"))
    assert bases and not set(bases) & set(options) and "base" not in options
    for option in options:
        defaults = OmegaConf.load(config_dir() / "data" / f"{option}.yaml").get("defaults", [])
        named = {str(d) if isinstance(d, str) else str(next(iter(d.values()))) for d in defaults}
        assert not named & set(options), (option, named)
    with pytest.raises(LmlabError, match=r"unknown data 'base/labeled'; choose one of: (\w+, )*hf_dataset, imdb, "):
        check_group_choices("train", ["data=base/labeled"])
    labeled = [compose_run([f"data={o}", "task=classification"]).data for o in ("imdb", "text_classification")]
    assert set(labeled[0]) == set(labeled[1]) and labeled[0].batch_size == labeled[1].batch_size == 32
