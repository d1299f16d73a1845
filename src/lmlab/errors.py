"""The one exception type users see: a message that names the problem and the fix."""

from __future__ import annotations


class LmlabError(Exception):
    """Bad input or configuration. The CLI prints its message as one line and exits non-zero."""
