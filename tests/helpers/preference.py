"""Preference pairs on disk for `task=dpo` tests: easy pairs whose chosen completion is always the same text."""

from __future__ import annotations

import json
from pathlib import Path

PROMPTS = ["the film was", "i thought it", "the acting was", "overall it was", "the plot felt", "the ending was"]
CHOSEN, REJECTED = " great fun", " dull work"
"""Every pair prefers the same completion: a few optimizer steps learn the preference."""


def pairs_jsonl(path: Path, n: int = 40) -> Path:
    """`n` pairs {"prompt", "chosen", "rejected"} as JSON Lines (prompts cycle through `PROMPTS`)."""
    rows = [{"prompt": PROMPTS[i % len(PROMPTS)], "chosen": CHOSEN, "rejected": REJECTED} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def preference_companions(tmp_path: Path) -> list[str]:
    """The overrides of a tiny `task=dpo` run on `pairs_jsonl` (plain text, the default char tokenizer)."""
    return ["task=dpo", "data=preference_jsonl", f"data.source.train={pairs_jsonl(tmp_path / 'pairs.jsonl')}"]
