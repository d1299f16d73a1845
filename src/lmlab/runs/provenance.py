"""What a run directory records about where its result came from: overrides, code version, packages, machine.

Written once per run by `write_provenance`; never environment variables or credentials.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

import lmlab
from lmlab.io import atomic_write_text

KEY_PACKAGES = ("torch", "pytorch-lightning", "hydra-core", "omegaconf", "wandb", "transformers", "tokenizers")
"""The versions W&B shows in the run config; the full list goes to `requirements.txt`."""


def _git(repo: Path, *args: str) -> str | None:
    """Output of `git -C repo ARGS`, or None when git is missing or the command fails."""
    try:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def git_state(source: Path | None = None, with_diff: bool = False) -> dict[str, Any] | None:
    """Commit and dirty flag of the git checkout that holds `source` (default: lmlab's own code).

    None when `source` is not a tracked file of a git checkout, e.g. an installed wheel (even one inside an ignored
    `.venv` of some repository). `diff` (`git diff HEAD`, tracked files only) is included when asked for.
    """
    source = Path(source or lmlab.__file__).resolve()
    folder = source if source.is_dir() else source.parent
    tracked = _git(folder, "ls-files", "--error-unmatch", "--", source.name if source.is_file() else ".")
    commit = _git(folder, "rev-parse", "HEAD") if tracked else None
    if not commit:
        return None
    status = _git(folder, "status", "--porcelain", "--untracked-files=no") or ""
    state: dict[str, Any] = {"commit": commit.strip(), "dirty": bool(status.strip())}
    if with_diff and state["dirty"]:
        state["diff"] = _git(folder, "diff", "--no-ext-diff", "HEAD", "--") or ""
    return state


@functools.cache
def package_versions() -> dict[str, str]:
    """Every installed distribution and its version, as `pip freeze` lists them (read via importlib.metadata)."""
    versions: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata.get("Name")
        if name and name.lower() not in {n.lower() for n in versions}:
            versions[name] = dist.version
    return dict(sorted(versions.items(), key=lambda item: item[0].lower()))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> dict[str, Any]:
    """CPU and GPU names and counts."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    gpus = [torch.cuda.get_device_name(i) for i in range(count)]
    return {
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "gpu": gpus[0] if gpus else None,
        "gpu_count": len(gpus),
        "gpus": gpus,
        "cuda": torch.version.cuda,
    }


def run_environment() -> dict[str, Any]:
    """A compact description for tracking servers: git commit and dirty flag, key package versions, hardware."""
    installed = {name.lower(): version for name, version in package_versions().items()}
    return {
        "git": git_state(),
        "lmlab": lmlab.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: installed.get(name) for name in KEY_PACKAGES},
        "hardware": hardware(),
    }


def write_provenance(run_dir: str | Path, overrides: list[str]) -> dict[str, Any]:
    """Write `overrides.yaml`, `provenance.json`, `requirements.txt` (and `git.diff` when the checkout is dirty).

    The resolved config is `config.yaml`, written beside them by the train command. Returns what
    `provenance.json` holds.
    """
    run_dir = Path(run_dir)
    git = git_state(with_diff=True)
    if git is not None and git.get("diff"):
        atomic_write_text(run_dir / "git.diff", git.pop("diff"))
        git["diff_file"] = "git.diff"
    record = {
        **run_environment(),
        "git": git,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "overrides": list(overrides),
        "executable": sys.executable,
    }
    atomic_write_text(run_dir / "overrides.yaml", yaml.safe_dump(list(overrides), default_flow_style=False))
    atomic_write_text(run_dir / "provenance.json", json.dumps(record, indent=2))
    requirements = "".join(f"{name}=={version}\n" for name, version in package_versions().items())
    atomic_write_text(run_dir / "requirements.txt", requirements)
    return record
