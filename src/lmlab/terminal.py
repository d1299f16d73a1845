"""Text bound for a terminal: control characters in it shown, not obeyed."""

from __future__ import annotations

import re

CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
"""C0 and C1 control characters and DEL, except tab, newline and carriage return (text layout, CRLF line ends).
A terminal obeys the others: ESC (`\\x1b`) starts colour and cursor sequences, BEL rings, backspace erases."""


def visible(text: str) -> str:
    """`text` with each control character written as its escape (`\\x1b`), for printing: a sample from a model
    trained on text with ANSI codes must not recolour or rewrite the user's terminal. Tabs and line breaks stay."""
    return CONTROL_CHARACTERS.sub(lambda match: f"\\x{ord(match[0]):02x}", text)
