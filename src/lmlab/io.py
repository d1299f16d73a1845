"""Crash-safe file writes: write to a temporary file beside the target, then rename over it."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from lmlab.errors import LmlabError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def check_writable(path: str | Path, key: str, folder: bool = False) -> None:
    """Refuse, before any work, a destination that cannot be written: the nearest existing folder above `path` must
    be a writable folder (and `path` itself, when it exists and `folder` is asked for, a folder). `key` names the
    setting in the message, e.g. `output`."""
    path = Path(path).expanduser().absolute()
    if folder and path.exists() and not path.is_dir():
        raise LmlabError(f"{key}={path} is a file; give a folder path")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise LmlabError(f"{key}={path} cannot be created: {parent} is a file, not a folder; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise LmlabError(f"{key}={path} cannot be created: {parent} is not writable; choose a writable folder")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 text so that readers see the old file or the new one, never half of it."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)` and move the result into place atomically."""
    with atomic_path(path) as tmp:
        write(tmp)
