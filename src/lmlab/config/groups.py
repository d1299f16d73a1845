"""Where the config tree lives, and checks of config-group choices before Hydra runs."""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path

from omegaconf import OmegaConf

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


def register_resolvers() -> None:
    """Make lmlab's config resolvers known to OmegaConf (idempotent; runs when this module is imported)."""
    if not OmegaConf.has_resolver("lmlab.package_dir"):
        OmegaConf.register_new_resolver("lmlab.package_dir", package_dir)


register_resolvers()


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
                raise LmlabError(f"unknown {group} {choice!r}; choose one of: {', '.join(options)}")


def _sweep_values(value: str) -> list[str]:
    """`a,b` -> [a, b]; leaves sweep functions such as choice(...) alone (Hydra checks those)."""
    if "(" in value or "[" in value:
        return []
    return [v.strip() for v in value.split(",") if v.strip()]
