"""Typed config schemas: each model and tokenizer config dataclass, registered in Hydra's ConfigStore.

A config file extends its schema in its defaults list (`- /schema/model/gpt@_here_`), so Hydra checks every value's
type and refuses keys the dataclass does not have while it composes, before anything runs. The schemas are made
from the dataclasses themselves (their fields plus `_target_`): the dataclass stays the one source of truth.

Groups whose targets take open-ended or heavy-to-import arguments (data, task, optimizer, scheduler, trainer,
callbacks, loggers) are checked against their targets' signatures before training instead (`lmlab.config.validate`).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from omegaconf import MISSING

SCHEMA_GROUP = "schema"
"""ConfigStore group holding the schemas: `schema/model/gpt`, `schema/tokenizer/char`, ..."""


RUNTIME_FIELDS = ("vocab_size",)
"""Fields the CLI fills in at run time (from the tokenizer): null in the composed config, not a made-up default."""


def schema_of(cls: type, target: str | None = None) -> type:
    """A dataclass with `_target_` (defaulting to `target`, else the class path) and every field of `cls`.

    Field types are resolved (the models use postponed annotations) so OmegaConf can check values against them.
    """
    hints = typing.get_type_hints(cls)
    fields: list[tuple[str, Any, Any]] = [("_target_", str, dataclasses.field(default=target or _path(cls)))]
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        default: Any
        if f.default is not dataclasses.MISSING:
            default = dataclasses.field(default=f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = dataclasses.field(default_factory=f.default_factory)
        else:
            default = dataclasses.field(default="???")  # must be given in the config file
        kind = hints[f.name]
        if f.name in RUNTIME_FIELDS:
            kind, default = kind | None, dataclasses.field(default=None)
        fields.append((f.name, kind, default))
    return dataclasses.make_dataclass(cls.__name__, fields)


def _path(cls: type) -> str:
    """`lmlab.models.GPTConfig` style import path of a class, using the shortest public module that exports it."""
    package = cls.__module__.rsplit(".", 1)[0]
    module = __import__(package, fromlist=[cls.__name__])
    public = getattr(module, cls.__name__, None) is cls
    return f"{package if public else cls.__module__}.{cls.__name__}"


def schemas() -> dict[str, dict[str, type]]:
    """Schema dataclasses by group and name: one per registered model family, one per tokenizer kind."""
    from lmlab import tokenizers
    from lmlab.models import FAMILIES

    tokenizer_classes = {
        "char": tokenizers.CharTokenizerConfig,
        "bpe": tokenizers.BPETokenizerConfig,
        "hf": tokenizers.HFTokenizerConfig,
    }
    return {
        "model": {name: schema_of(family.config) for name, family in FAMILIES.items()},
        "tokenizer": {name: schema_of(cls) for name, cls in tokenizer_classes.items()},
    }


# Primary configs of the commands that read a checkpoint: their keys and types (values: conf/<command>.yaml).


@dataclasses.dataclass
class SteerSettings:
    vector: str | None = MISSING
    coeff: float = MISSING
    layer: int | None = MISSING


@dataclasses.dataclass
class GenerateSchema:
    ckpt: str = MISSING
    prompt: str | None = MISSING
    prompt_file: str | None = MISSING
    max_new_tokens: int = MISSING
    temperature: float = MISSING
    top_k: int | None = MISSING
    top_p: float | None = MISSING
    min_p: float | None = MISSING
    repetition_penalty: float = MISSING
    processors: list[Any] = MISSING
    stop: list[str] = MISSING
    num_samples: int = MISSING
    seed: int = MISSING
    stream: bool | None = MISSING
    device: str = MISSING
    chat: bool = MISSING
    use_cache: bool = MISSING
    regex: str | None = MISSING
    json_schema: Any = MISSING  # a JSON string, a .json file path, or a mapping
    steer: SteerSettings = dataclasses.field(default_factory=SteerSettings)


@dataclasses.dataclass
class ChatSchema:
    ckpt: str | None = MISSING
    pretrained: str = MISSING
    system: str | None = MISSING
    input: str | None = MISSING
    context: int = MISSING
    max_new_tokens: int = MISSING
    temperature: float = MISSING
    top_k: int | None = MISSING
    top_p: float | None = MISSING
    min_p: float | None = MISSING
    repetition_penalty: float = MISSING
    processors: list[Any] = MISSING
    stop: list[str] = MISSING
    seed: int = MISSING
    device: str = MISSING
    use_cache: bool = MISSING
    steer: SteerSettings = dataclasses.field(default_factory=SteerSettings)


@dataclasses.dataclass
class ServeSchema:
    ckpt: str | None = MISSING
    pretrained: str = MISSING
    model_name: str | None = MISSING
    host: str = MISSING
    port: int = MISSING
    api_key: str | None = MISSING
    system: str | None = MISSING
    context: int | None = MISSING
    max_tokens: int = MISSING
    max_tokens_limit: int = MISSING
    max_batch: int = MISSING
    max_queue: int = MISSING
    max_body_bytes: int = MISSING
    device: str = MISSING
    log_level: str = MISSING


@dataclasses.dataclass
class EvalSchema:
    data: Any = None  # a data config group choice (untyped: any data config), or null
    ckpt: str = MISSING
    text_file: str | None = MISSING
    split: str = MISSING
    batch_size: int | None = MISSING
    max_tokens: int | None = MISSING
    generate: bool = MISSING
    max_examples: int | None = MISSING
    max_new_tokens: int = MISSING
    wandb: bool = MISSING
    device: str = MISSING
    cache_dir: str = MISSING


@dataclasses.dataclass
class InspectSchema:
    task_name: str = MISSING
    output_dir: str = MISSING
    ckpt: str = MISSING
    text: str | None = MISSING
    input: str | None = MISSING
    top_k: int = MISSING
    attention: bool = MISSING
    layers: list[int] | None = MISSING
    cache: bool = MISSING
    cache_names: list[str] | None = MISSING
    tensorboard: bool = MISSING
    wandb: bool = MISSING
    device: str = MISSING


@dataclasses.dataclass
class LensSchema:
    data: Any = None  # a data config group choice (untyped: any data config), or null
    task_name: str = MISSING
    output_dir: str = MISSING
    ckpt: str = MISSING
    input: str | None = MISSING
    max_tokens: int | None = MISSING
    batch_size: int | None = MISSING
    text: str | None = MISSING
    positions: int = MISSING
    tuned: bool = MISSING
    tuned_steps: int = MISSING
    tuned_lr: float = MISSING
    tensorboard: bool = MISSING
    wandb: bool = MISSING
    device: str = MISSING
    cache_dir: str = MISSING


@dataclasses.dataclass
class BenchmarkSchema:
    task_name: str = MISSING
    output_dir: str = MISSING
    ckpt: str = MISSING
    tasks: list[str] = MISSING
    limit: int | None = MISSING
    batch_size: int = MISSING
    lm_eval_tasks: bool = MISSING
    seed: int = MISSING
    tensorboard: bool = MISSING
    wandb: bool = MISSING
    device: str = MISSING


@dataclasses.dataclass
class PredictSchema:
    ckpt: str = MISSING
    input: str = MISSING
    output: str = MISSING
    text_column: str = MISSING
    batch_size: int = MISSING
    device: str = MISSING


@dataclasses.dataclass
class ExportSchema:
    ckpt: str = MISSING
    format: str = MISSING
    out: str = MISSING
    overwrite: bool = MISSING


@dataclasses.dataclass
class ProbeSettings:
    layer: str | None = MISSING  # an int or `embed` (read as text), or null for every layer
    label: str | None = MISSING
    pooling: str = MISSING
    max_examples: int = MISSING
    epochs: int = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING
    batch_size: int = MISSING


@dataclasses.dataclass
class ProbeSchema:
    data: Any = None  # a data config group choice (untyped: any data config), or null
    logger: Any = None
    paths: Any = None
    task_name: str = MISSING
    ckpt: str = MISSING
    seed: int = MISSING
    batch_size: int = MISSING
    device: str = MISSING
    probe: ProbeSettings = dataclasses.field(default_factory=ProbeSettings)


@dataclasses.dataclass
class PatchSchema:
    paths: Any = None
    task_name: str = MISSING
    ckpt: str = MISSING
    clean: str = MISSING
    corrupted: str = MISSING
    answers: list[str] = MISSING
    metric: str = MISSING
    heads: bool = MISSING
    device: str = MISSING


@dataclasses.dataclass
class SteerSchema:
    data: Any = None  # a data config group choice (untyped: any data config), or null
    ckpt: str = MISSING
    positive: list[str] | None = MISSING
    negative: list[str] | None = MISSING
    positive_file: str | None = MISSING
    negative_file: str | None = MISSING
    labeled_file: str | None = MISSING
    positive_label: str | None = MISSING
    negative_label: str | None = MISSING
    max_examples: int | None = MISSING
    layer: int | None = MISSING
    position: str = MISSING
    batch_size: int = MISSING
    out: str | None = MISSING
    device: str = MISSING


COMMAND_SCHEMAS = {
    "generate": GenerateSchema,
    "chat": ChatSchema,
    "serve": ServeSchema,
    "eval": EvalSchema,
    "predict": PredictSchema,
    "inspect": InspectSchema,
    "lens": LensSchema,
    "benchmark": BenchmarkSchema,
    "export": ExportSchema,
    "probe": ProbeSchema,
    "patch": PatchSchema,
    "steer": SteerSchema,
}


def register_schemas() -> None:
    """Store every schema in Hydra's ConfigStore (again after a family is registered: storing is idempotent).

    A registered model family without a file in `conf/model/` also becomes a `model=<name>` choice with its config
    dataclass's defaults, so a family added in Python composes, trains and evaluates with no YAML to write.
    """
    from hydra.core.config_store import ConfigStore

    from lmlab.config.groups import config_dir

    store = ConfigStore.instance()
    for group, named in schemas().items():
        for name, node in named.items():
            store.store(group=f"{SCHEMA_GROUP}/{group}", name=name, node=node)
            if not (config_dir() / group / f"{name}.yaml").is_file():
                store.store(group=group, name=name, node=node)
    for name, node in COMMAND_SCHEMAS.items():
        store.store(group=f"{SCHEMA_GROUP}/command", name=name, node=node)
