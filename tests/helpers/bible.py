"""Whether the Bible modules and pysword are here: the Bible tests skip, naming the install commands, without them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from lmlab.data.bible import APT_INSTALL, BIBLES, PYSWORD


def bible_missing() -> str | None:
    """What to install for `BibleParallel` to load, or None when everything is in place."""
    if importlib.util.find_spec("pysword") is None:
        return f"needs pysword: pip install '{PYSWORD}'"
    if not all(Path("/usr/share/sword/mods.d", f"{b.module}.conf").is_file() for b in BIBLES.values()):
        return f"needs the Bible modules, as root: {APT_INSTALL}"
    return None


needs_bible = pytest.mark.skipif(bible_missing() is not None, reason=str(bible_missing()))


def require_bible() -> None:
    """Skip the calling test when the Bible cannot load (for tests parametrized over every config option)."""
    if (missing := bible_missing()) is not None:
        pytest.skip(missing)
