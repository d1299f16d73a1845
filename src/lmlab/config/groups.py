"""Where the config tree lives, and checks of config-group choices before Hydra runs."""

from __future__ import annotations

import difflib
import functools
import importlib.util
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

import lmlab
from lmlab.errors import LmlabError

_CHOICE = re.compile(r"^[+~]{0,2}(?P<group>[A-Za-z_][\w/]*)(@[\w.]+)?=(?P<value>.*)$")


@functools.cache
def config_dir() -> Path:
    """The `conf/` folder: inside the installed package (wheel), else at the top of the source checkout."""
    package = Path(lmlab.__file__).resolve().parent
    for candidate in (package / "conf", package.parent.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise LmlabError(f"lmlab's config folder is missing (looked in {package / 'conf'}); reinstall lmlab")


def package_dir(name: str) -> str:
    """`${lmlab.package_dir:NAME}` in configs: the folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        dist = name.replace("_", "-")
        raise LmlabError(f"the `{name}` package is not installed; install it with: pip install --no-deps {dist}")
    return str(spec.submodule_search_locations[0])


def chosen_option(group: str, _root_: DictConfig) -> str:
    """`${lmlab.choice:GROUP}` in configs: the option chosen for a config group, e.g. `shakespeare` for data.

    Read from the composed config's `hydra` node where it has one, so it resolves before Hydra records its state
    (`${hydra:runtime.choices.GROUP}` does not, e.g. in a sweeper's settings); inside a run, whose config Hydra hands
    over without that node, from Hydra's state.
    """
    from hydra.core.hydra_config import HydraConfig

    if "hydra" in _root_:
        return str(OmegaConf.select(_root_, f"hydra.runtime.choices.{group}"))
    if not HydraConfig.initialized():
        raise LmlabError(f"${{lmlab.choice:{group}}} resolves only in a config composed by Hydra")
    return str(HydraConfig.get().runtime.choices.get(group))


def register_resolvers() -> None:
    """Make lmlab's config resolvers known to OmegaConf (idempotent; runs when this module is imported)."""
    if not OmegaConf.has_resolver("lmlab.package_dir"):
        OmegaConf.register_new_resolver("lmlab.package_dir", package_dir)
    if not OmegaConf.has_resolver("lmlab.choice"):
        OmegaConf.register_new_resolver("lmlab.choice", chosen_option)


register_resolvers()


def did_you_mean(name: str, valid: list[str]) -> str:
    """`did you mean X? ` for the valid name closest to a mistyped one; empty when none is close."""
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    return f"did you mean {close[0]}? " if close else ""


def group_options(group: str) -> list[str]:
    """The choices of a config group, e.g. `group_options("model")` -> ["gpt", ...]: its files in conf/, and the
    choices stored in Hydra's ConfigStore (a model family registered in Python without a file)."""
    return sorted({p.stem for p in (config_dir() / group).glob("*.yaml")} | stored_choices(group))


def stored_choices(group: str) -> set[str]:
    """Names of the configs stored in Hydra's ConfigStore under `group` (none when the group is not there)."""
    from hydra.core.config_store import ConfigStore

    try:
        names = ConfigStore.instance().list(group)
    except OSError:
        return set()
    return {name.removesuffix(".yaml") for name in names if name.endswith(".yaml")}


_HYDRA_GROUPS = ("hydra/launcher", "hydra/sweeper")
"""Hydra's own groups whose choices are checked too (lmlab's presets plus what Hydra and its plugins provide)."""


def hydra_group_options(group: str) -> list[str]:
    """Choices of one of Hydra's groups: lmlab's files in conf/<group>/ and the configs that Hydra and the installed
    Hydra plugins register (e.g. basic, submitit_local, submitit_slurm for hydra/launcher)."""
    from hydra.core.plugins import Plugins

    Plugins.instance()  # importing the plugins registers their configs
    return group_options(group)


def check_group_choices(command: str, overrides: list[str]) -> None:
    """Refuse `group=choice` overrides whose choice has no config file, listing the available ones.

    Hydra would refuse them too, but over several lines and after its own start-up; this names the fix in one.
    """
    for override in overrides:
        match = _CHOICE.match(override)
        if not match or "." in match["group"] or match["value"] in ("", "null"):
            continue
        group, value = match["group"], match["value"]
        if group in _HYDRA_GROUPS:
            options = hydra_group_options(group)
        elif group.startswith("hydra/") or not (config_dir() / group).is_dir():
            continue
        else:
            options = group_options(group)
        for choice in _sweep_values(value):
            if choice not in options:
                raise LmlabError(unknown_choice(group, choice, options))


def unknown_choice(group: str, choice: str, options: list[str]) -> str:
    """`unknown model 'gtp'; did you mean gpt? choose one of: ...`: the close option first, as for mistyped keys."""
    return f"unknown {group} {choice!r}; {did_you_mean(choice, options)}choose one of: {', '.join(options)}"


def null_choices_as_deletions(command: str, overrides: list[str]) -> list[str]:
    """`group=null` (e.g. `experiment=null`: no experiment) written as Hydra's `~group`, which removes the group's
    default; Hydra itself refuses null as a choice given on the command line, with a traceback. Refused in one line
    for a group the command cannot run without (its default is not null)."""
    return [_as_deletion(command, o) for o in overrides]


def _as_deletion(command: str, override: str) -> str:
    """`~group` for `group=null` where the command may run without that group; other overrides unchanged."""
    match = _CHOICE.match(override)
    if not match or match["value"] != "null" or override[0] in "+~" or "@" in override.split("=", 1)[0]:
        return override
    group = match["group"]
    if group.startswith("hydra") or not (config_dir() / group).is_dir():
        return override
    if group not in _optional_groups(command):
        options = ", ".join(group_options(group))
        raise LmlabError(f"{override}: `lmlab {command}` needs a {group}; choose one of: {options}")
    return f"~{group}"


@functools.cache
def _optional_groups(command: str) -> frozenset[str]:
    """The groups whose default in conf/<command>.yaml is null (e.g. experiment, debug)."""
    defaults = OmegaConf.load(config_dir() / f"{command}.yaml").get("defaults") or []
    return frozenset(
        str(k) for entry in defaults if isinstance(entry, DictConfig) for k, v in entry.items() if v is None
    )


def _sweep_values(value: str) -> list[str]:
    """`a,b` -> [a, b]; leaves sweep functions such as choice(...) alone (Hydra checks those)."""
    if "(" in value or "[" in value:
        return []
    return [v.strip() for v in value.split(",") if v.strip()]
