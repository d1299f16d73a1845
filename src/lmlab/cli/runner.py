"""What every command shares: one-line errors for users, and building config groups into objects."""

from __future__ import annotations

import functools
import logging
import sys
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from lmlab.errors import LmlabError

log = logging.getLogger("lmlab")
T = TypeVar("T")
JOBLIB_SCHEMA_WARNING = r"\s*'hydra/launcher/joblib' is validated against ConfigStore schema with the same name"
"""conf/hydra/launcher/joblib.yaml keeps the plugin's name (`hydra/launcher=joblib`) and so is checked against the
plugin's schema, as intended; Hydra 1.3 warns that this matching by name is deprecated."""


def user_error(err: BaseException) -> str | None:
    """The one-line message for an error caused by input, or None for a bug (which keeps its traceback)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, LmlabError):
            return str(seen)
        if isinstance(seen, OmegaConfBaseException):
            key = getattr(seen, "full_key", None)
            text = str(seen).splitlines()[0] if str(seen) else type(seen).__name__
            return f"config error at {key}: {text}" if key else f"config error: {text}"
        seen = seen.__cause__ or seen.__context__
    return None


def reports_errors(command: Callable[[DictConfig], T]) -> Callable[[DictConfig], T]:
    """Decorate a Hydra task function: user errors print as `error: ...` and exit with status 1."""

    @functools.wraps(command)
    def wrapper(cfg: DictConfig) -> T:
        try:
            return command(cfg)
        except Exception as err:
            message = user_error(err)
            if message is None:
                raise
            log.debug("user error", exc_info=True)
            print(f"error: {message}", file=sys.stderr)
            sys.exit(1)

    return wrapper


def hydra_entry(config_name: str, command: Callable[[DictConfig], object]) -> Callable[[], None]:
    """The `main()` of a command: compose `conf/<config_name>.yaml` with the command line and run `command` on it,
    printing user errors as one line (`reports_errors`)."""
    from lmlab.config.groups import config_dir

    def main() -> None:
        import hydra

        warnings.filterwarnings("ignore", message=JOBLIB_SCHEMA_WARNING, category=UserWarning)
        hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=config_name)(
            reports_errors(command)
        )()

    return main


def build_group(cfg: DictConfig | None, what: str) -> list[Any]:
    """Instantiate each `_target_` entry of a dict-of-configs group (callbacks, loggers)."""
    from hydra.utils import instantiate

    objects = []
    for name, node in (cfg or {}).items():
        if isinstance(node, DictConfig) and "_target_" in node:
            log.info("instantiating %s <%s> (%s)", what, node._target_, name)
            objects.append(instantiate(node))
    return objects


def instantiate_config(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """Instantiate a config dataclass; a key it does not have becomes a one-line `LmlabError`."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, TypeError) and "unexpected keyword argument" in str(cause):
            name = str(cause).split("'")[-2]
            target = node._target_.rsplit(".", 1)[-1]
            raise LmlabError(
                f"{key}.{name} is not a setting of {target}; remove it (it may come from an experiment meant for "
                "another model)"
            ) from err
        raise
