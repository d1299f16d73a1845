"""Config checks before anything runs: composition errors as one line with the fix, and every `_target_` node's
keys and simple types checked against its target's signature."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from lmlab.config.groups import did_you_mean
from lmlab.errors import LmlabError

HYDRA_KEYS = frozenset({"_target_", "_partial_", "_convert_", "_recursive_", "_args_"})
SIMPLE_TYPES = (bool, int, float, str)


def suggestion(name: str, valid: list[str]) -> str:
    """`did you mean X? ` for the closest valid key, and the valid keys."""
    return f"{did_you_mean(name, valid)}valid keys: {', '.join(sorted(valid))}"


def typed_run(args: list[str]) -> bool:
    """Register the typed schemas for a run, not for `--help`/`--cfg`/`--info`, which must stay fast: the schemas
    come from the model config dataclasses, whose modules import torch. Without them the configs compose untyped."""
    if any(a in ("--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--shell-completion") for a in args):
        return False
    from lmlab.config.schemas import register_schemas

    register_schemas()
    return True


# --- compose time -------------------------------------------------------------------------------------------------


def check_override_syntax(overrides: list[str]) -> None:
    """Refuse a `key=value` override that Hydra's grammar cannot read, in one line with the fix. The common case is
    text with non-ASCII characters (`sample.prompt=中国`, a file name), which Hydra reads only inside quotes."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    for override in overrides:
        if override.startswith("-") or "=" not in override:
            continue
        try:
            parser.parse_overrides([override])
        except OverrideParseException as err:
            key, _, value = override.partition("=")
            if not value.isascii():
                raise LmlabError(
                    f"{override}: Hydra reads non-ASCII text only inside quotes; quote the value: "
                    f"'{key}={_quoted(value)}'"
                ) from err
            reason = str(err).strip().splitlines()[0]
            raise LmlabError(f"cannot read the override {override} ({reason}); close its brackets or quote the value: "
                             f"'{key}=\"...\"'") from err  # fmt: skip


def _quoted(value: str) -> str:
    """The value in double quotes, or each item of a `[a,b]` list (a list in quotes would be one string)."""
    if value.startswith("[") and value.endswith("]"):
        return "[" + ",".join(_quoted(item.strip()) for item in value[1:-1].split(",")) + "]"
    return value if value[:1] in ("'", '"') else f'"{value}"'


def check_overrides(command: str, overrides: list[str]) -> None:
    """Compose the command's config with `overrides`, and once more with each value of a grid sweep, and turn a
    composition error caused by a wrong type or an unknown key into a one-line `LmlabError` naming the key path and
    the fix, before Hydra starts a sweep's first job.

    Hydra would refuse them too, but over several lines; errors this does not recognise are left to Hydra.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException
    from omegaconf.errors import OmegaConfBaseException

    from lmlab.config.groups import config_dir

    split = _split_overrides(overrides)
    if split is None:
        return
    plain, grid = split
    variants = grid_jobs(plain, grid) or [plain]  # not `plain` alone: a swept key's default may not fit the others
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir()), job_name=command):
            for variant in variants:
                try:
                    cfg = compose(command, overrides=variant, return_hydra_config=True)
                except ConfigCompositionException as err:
                    cause = err.__cause__
                    if isinstance(cause, OmegaConfBaseException):
                        raise LmlabError(composition_message(command, variant, err, cause)) from err
                    if (found := _FILE_KEY_ERROR.search(str(err))) is not None:  # a config file's key
                        raise LmlabError(file_key_message(found)) from err
                    raise
                if variant is variants[0]:
                    check_run_dir(cfg, multirun=any(o in ("-m", "--multirun") for o in overrides))
    except LmlabError:
        raise
    except Exception:  # anything else (a missing plugin, a bad sweep): Hydra reports it in its own words
        return


def check_run_dir(cfg: Any, multirun: bool) -> None:
    """The run (or sweep) folder Hydra is about to create must be creatable: Hydra itself fails with a traceback."""
    from omegaconf import OmegaConf

    from lmlab.io import check_writable

    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    folder = OmegaConf.select(cfg, key, default=None)
    if folder and str(folder) != ".":
        check_writable(Path(str(folder)), key, folder=True)


MAX_SWEEP_CHECKS = 64
"""At most this many swept values are composed before the sweep starts (the rest are left to each job)."""


def _split_overrides(overrides: list[str]) -> tuple[list[str], list[list[str]]] | None:
    """The `key=value` overrides that are not sweeps, and `key=value` for each value of each grid sweep (`a=1,2`,
    `choice(...)`, `range(...)`; Optuna's `interval(...)` has no values to list); None when they cannot be parsed
    (Hydra will say why)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    candidates = [o for o in overrides if not o.startswith("-") and "=" in o]
    try:
        parsed = OverridesParser.create().parse_overrides(candidates)
    except Exception:
        return None
    plain = [o.input_line for o in parsed if not o.is_sweep_override() and o.input_line is not None]
    grid = []
    for override in (o for o in parsed if o.is_sweep_override()):
        try:
            grid.append([f"{override.get_key_element()}={value}" for value in override.sweep_string_iterator()])
        except Exception:  # an interval or another sweep that cannot be enumerated
            continue
    return plain, [values for values in grid if values]


def grid_jobs(plain: list[str], grid: list[list[str]]) -> list[list[str]]:
    """Jobs of the grid that together use every swept value once: each dimension's values in turn, the other
    dimensions at their first value (every one of them is a job the sweep will run); at most `MAX_SWEEP_CHECKS`."""
    firsts = [values[0] for values in grid]
    jobs = []
    for i, values in enumerate(grid):
        for value in values[1:] if i else values:
            jobs.append([*plain, *firsts[:i], value, *firsts[i + 1 :]])
    return jobs[:MAX_SWEEP_CHECKS]


def composition_message(command: str, overrides: list[str], err: BaseException, cause: Any) -> str:
    """One line for a composition error: the key path, what is wrong, and the fix."""
    key = str(getattr(cause, "full_key", "") or "")
    text = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
    if not key:
        return f"config error: {str(err).splitlines()[0]}: {text}"
    parent, _, name = key.rpartition(".")
    if "not in struct" in text or ("not in" in text and "Key" in text):
        valid, kind = _valid_keys(command, overrides, parent)
        where = f"not a setting of {parent}{f' ({kind})' if kind else ''}" if parent else "not a top-level setting"
        fix = suggestion(name, valid) if valid else "remove it"
        return f"{key} is {where}; {fix}"
    expected = _expected_type(cause)
    fix = f"; give {key} a value of type {expected}" if expected else ""
    return f"config error at {key}: {text}{fix}"


_FILE_KEY_ERROR = re.compile(
    r"In '(?P<file>[^']+)': \w+ raised while composing config:\s*Key '(?P<name>[^']+)' not in '(?P<kind>[^']+)'"
    r"\s*full_key: (?P<key>\S+)"
)


def file_key_message(found: re.Match[str]) -> str:
    """One line for a key set by a config file (e.g. an experiment) that the chosen group's schema lacks."""
    from lmlab.config.schemas import schemas

    key, kind = found["key"], found["kind"]
    schema = next((c for named in schemas().values() for c in named.values() if c.__name__ == kind), None)
    valid = sorted({f.name for f in dataclasses.fields(schema)} - HYDRA_KEYS) if schema else []
    fix = suggestion(found["name"], valid) if valid else "remove it"
    parent = key.rpartition(".")[0]
    return (
        f"{key}, set in {found['file']}, is not a setting of {parent} ({kind}); {fix}; or choose a {parent} that has "
        "it (that config file may be meant for another one)"
    )


def _valid_keys(command: str, overrides: list[str], parent: str) -> tuple[list[str], str | None]:
    """Keys of the node at `parent` in the config composed with only the group choices of `overrides`, and the name
    of its schema (e.g. `LSTMConfig`) when it has one."""
    from hydra import compose
    from omegaconf import DictConfig, OmegaConf

    from lmlab.config.groups import config_dir

    choices = [o for o in overrides if (config_dir() / o.split("=", 1)[0].lstrip("+~")).is_dir()]
    try:
        cfg = compose(command, overrides=choices)
    except Exception:
        return [], None
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig):
        return [], None
    schema = OmegaConf.get_type(node)
    kind = schema.__name__ if schema is not None and schema is not dict else None
    return [str(k) for k in node if str(k) not in HYDRA_KEYS], kind


def _expected_type(cause: Any) -> str | None:
    """The declared type of the field a validation error is about, from its schema dataclass."""
    schema, key = getattr(cause, "object_type", None), getattr(cause, "key", None)
    if schema is None or not dataclasses.is_dataclass(schema):
        return None
    kind = {f.name: f.type for f in dataclasses.fields(schema)}.get(str(key))
    return getattr(kind, "__name__", None) or (str(kind) if kind is not None else None)


# --- before training: `_target_` nodes against their targets' signatures --------------------------------------------


def check_targets(config: Mapping[str, Any], path: str = "", skip: frozenset[str] = frozenset()) -> None:
    """Every `_target_` node of a resolved config: each key a parameter of its target, each simple value of the
    declared type. Raises `LmlabError` with the key path and the valid keys (closest match first)."""
    for key, node, target in _target_nodes(config, path):
        if key in skip:
            continue
        parameters = _parameters(target)
        if parameters is None:
            continue
        names, hints = parameters
        for name, value in node.items():
            if name in HYDRA_KEYS or (isinstance(value, Mapping) and "_target_" in value):
                continue
            if names is not None and name not in names:
                short = node["_target_"].rsplit(".", 1)[-1]
                raise LmlabError(f"{key}.{name} is not a setting of {short}; {suggestion(name, sorted(names))}")
            _check_type(f"{key}.{name}", value, hints.get(name))


def _target_nodes(config: Mapping[str, Any], path: str) -> Iterator[tuple[str, Mapping[str, Any], Callable]]:
    """(key path, node, target) of every node with a `_target_` that can be imported."""
    from hydra.utils import get_object

    if "_target_" in config:
        target = None
        with contextlib.suppress(Exception):  # an unimportable target fails when instantiated, in its own words
            target = get_object(str(config["_target_"]))
        if target is not None:
            yield path, config, target
    for name, value in config.items():
        if isinstance(value, Mapping) and name != "hydra":
            yield from _target_nodes(value, f"{path}.{name}" if path else str(name))


def _parameters(target: Callable) -> tuple[set[str] | None, dict[str, Any]] | None:
    """(parameter names, or None when it takes **kwargs; resolved type hints) of a callable or class."""
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return None
    params = signature.parameters.values()
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    names = None if open_ended else {p.name for p in params if p.kind is not inspect.Parameter.VAR_POSITIONAL}
    try:
        hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    except Exception:
        hints = {}
    return names, hints


def _check_type(key: str, value: Any, hint: Any) -> None:
    """Refuse a scalar whose type cannot be what a simple annotation (int, float, bool, str, X | None) asks."""
    allowed = _simple_types(hint)
    if allowed is None or value is None:  # null: many signatures say `x: int = None`; the target decides
        return
    if isinstance(value, bool) and bool not in allowed:
        ok = False
    elif isinstance(value, int) and not isinstance(value, bool):
        ok = int in allowed or float in allowed
    else:
        ok = isinstance(value, tuple(t for t in allowed if t is not type(None)))
    if not ok:
        raise LmlabError(f"{key}={value!r} has the wrong type; give a value of type {_names(allowed)}")


def _simple_types(hint: Any) -> tuple[type, ...] | None:
    """The member types of a hint made only of int/float/bool/str/None, else None (not checked). A tensor member
    is left out, as no config value can be one: torch's `lr: float | Tensor` is checked as a float."""
    if hint in SIMPLE_TYPES:
        return (hint,)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        torch = sys.modules.get("torch")  # a hint naming torch.Tensor has imported it
        members = tuple(m for m in typing.get_args(hint) if torch is None or m is not torch.Tensor)
        if all(m in SIMPLE_TYPES or m is type(None) for m in members) and set(members) & set(SIMPLE_TYPES):
            return members
    return None


def _names(kinds: tuple[type, ...]) -> str:
    return " or ".join("null" if k is type(None) else k.__name__ for k in kinds)


# --- cross-field checks ---------------------------------------------------------------------------------------------


def check_run_config(config: Mapping[str, Any]) -> None:
    """All checks of a resolved `lmlab train` config that need no data: keys and types of every `_target_` node,
    the model's own shape rules (its config dataclass), batch sizes and the step budget."""
    check_no_credentials(config)
    check_targets({"trainer": config.get("trainer") or {}})  # first: other groups interpolate its values
    check_targets({k: v for k, v in config.items() if k != "trainer"})
    model = config.get("model")
    if isinstance(model, Mapping) and "_target_" in model:
        _check_model_shape(model)
    if isinstance(config.get("optimizer"), Mapping):
        _check_optimizer(config["optimizer"])
    data = config.get("data") or {}
    for name in ("batch_size", "eval_batch_size"):
        value = data.get(name)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise LmlabError(f"data.{name}={value!r} must be a positive integer; e.g. data.{name}=8")
    trainer = config.get("trainer") or {}
    steps = trainer.get("max_steps")
    if isinstance(steps, int) and steps < -1:
        raise LmlabError(f"trainer.max_steps={steps} must be positive, 0 (no training: the starting model validated "
                         "and saved) or -1 (max_epochs); e.g. trainer.max_steps=100")  # fmt: skip
    interval = trainer.get("val_check_interval")
    if isinstance(interval, int | float) and not isinstance(interval, bool) and interval <= 0:
        raise LmlabError(f"trainer.val_check_interval={interval} must be positive; e.g. trainer.val_check_interval=100")
    if config.get("ckpt_path") and isinstance(model, Mapping):
        from lmlab.checkpoints.load import check_resume

        check_resume(config["ckpt_path"], dict(model))


def _check_optimizer(node: Mapping[str, Any]) -> None:
    """Bind the optimizer to one dummy parameter: its own argument checks (e.g. a negative learning rate) fail now,
    not after the data is tokenized and the Trainer started."""
    import torch
    from hydra.utils import instantiate

    try:
        factory = instantiate(dict(node))
        vector, matrix = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(2, 2))
        optimizer_class = getattr(factory, "func", None)
        if getattr(optimizer_class, "splits_hidden_matrices", False):  # MuonAdamW: check both parts
            factory(optimizer_class.split_groups([{"params": [vector, matrix]}], {id(matrix)}))
        elif callable(factory):
            factory([vector])
    except (ValueError, TypeError) as err:
        target = str(node.get("_target_", "?")).rsplit(".", 1)[-1]
        raise LmlabError(f"optimizer settings rejected by {target}: {err}; fix them, e.g. optimizer.lr=1e-3") from err


def _check_model_shape(model: Mapping[str, Any]) -> None:
    """Build the model config dataclass once (vocabulary size left at its default): its `__post_init__` checks, such
    as n_embd divisible by n_head, fail now rather than after the data is tokenized."""
    from hydra.utils import get_object

    try:
        target = get_object(str(model["_target_"]))
    except Exception:
        return
    if dataclasses.is_dataclass(target):
        fields = {k: v for k, v in model.items() if k not in HYDRA_KEYS and k != "vocab_size" and k != "family"}
        target(**fields)


CREDENTIAL_ENV = re.compile(r"(TOKEN|API_KEY|SECRET|PASSWORD)", re.IGNORECASE)
"""Environment variables treated as credentials, e.g. WANDB_API_KEY, HF_TOKEN, HUGGING_FACE_HUB_TOKEN."""


def check_no_credentials(config: Mapping[str, Any], path: str = "") -> None:
    """Refuse a config value that holds a credential from the environment (e.g. `${oc.env:WANDB_API_KEY}`): the
    resolved config is written to the run folder and logged. Libraries read credentials from the environment."""
    secrets = {name: value for name, value in os.environ.items() if CREDENTIAL_ENV.search(name) and len(value) >= 8}
    for key, value in _leaves(config, path):
        for name, secret in secrets.items():
            if secret in value:
                raise LmlabError(
                    f"{key} holds the value of ${name}; remove it from the config (it would be written to the run "
                    "folder): the libraries read credentials from the environment themselves"
                )


def _leaves(node: Any, path: str) -> Iterator[tuple[str, str]]:
    """(key path, text) of every string in a nested config."""
    if isinstance(node, Mapping):
        for name, value in node.items():
            yield from _leaves(value, f"{path}.{name}" if path else str(name))
    elif isinstance(node, list | tuple):
        for index, value in enumerate(node):
            yield from _leaves(value, f"{path}[{index}]")
    elif isinstance(node, str):
        yield path, node
