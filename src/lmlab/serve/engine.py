"""The model worker: one thread owns the model and decodes the waiting requests in batches.

HTTP handlers never touch the model. They `submit` a `Job` to a bounded queue (full: `QueueFull`, answered 429) and
read its events. The worker takes the oldest job plus every waiting job whose sampling settings equal its own (up to
`max_batch`) and decodes them as one batch with `decode_steps`: each row keeps its own prompt, seed, stop strings and
token budget, so batching changes no text, only throughput. One thread on the model means no two forward passes race,
and the queue's order means no client waits forever.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.generation.decoding import decode_steps
from lmlab.generation.processors import ProcessorSpec, build_processors
from lmlab.generation.sampling import SamplingOptions
from lmlab.generation.text import IncrementalDetokenizer, StopText
from lmlab.tokenizers import Tokenizer

log = logging.getLogger("lmlab")

Event = tuple[str, Any]
"""What a job reports: ("text", piece), ("done", `Finish`) or ("error", message); "done"/"error" come last."""


class QueueFull(LmlabError):
    """The queue holds `max_queue` jobs already; the client should retry later (HTTP 429)."""


@dataclass
class Finish:
    """How a job ended."""

    completion_tokens: int
    reason: str
    """"stop" (a stop string or the end of turn) or "length" (`max_tokens`)."""


@dataclass
class Job:
    """One request's decoding: its prompt ids and settings, and where its events go."""

    prompt_ids: list[int]
    max_tokens: int
    emit: Callable[[Event], None]
    """Called from the worker thread; must be thread-safe (e.g. `loop.call_soon_threadsafe`)."""
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    processors: list[ProcessorSpec] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)
    seed: int = 0
    cancelled: threading.Event = field(default_factory=threading.Event)
    """Set when the client goes away: its row stops producing text and the batch may end sooner."""

    @property
    def batch_key(self) -> str:
        """Jobs with equal keys share one batch: their logits pass through the same sampling pipeline."""
        return json.dumps([dataclasses.astuple(self.sampling), self.processors], sort_keys=True, default=str)


@dataclass
class _Row:
    job: Job
    detokenizer: IncrementalDetokenizer
    stop: StopText
    tokens: int = 0
    done: bool = False
    finished: bool = False

    def push(self, token_id: int) -> None:
        self.tokens += 1
        if piece := self.stop.add(self.detokenizer.push(token_id)):
            self.job.emit(("text", piece))
        self.done = self.stop.stopped or self.tokens >= self.job.max_tokens or self.job.cancelled.is_set()

    def finish(self) -> None:
        """Release the held-back text and report the end (once), as soon as the row is done."""
        if self.finished:
            return
        self.finished = True
        if piece := self.stop.add(self.detokenizer.flush()) + self.stop.finish():
            self.job.emit(("text", piece))
        self.job.emit(("done", Finish(self.tokens, "stop" if self.stop.stopped else "length")))


def decode_jobs(model: nn.Module, tokenizer: Tokenizer, block_size: int, jobs: Sequence[Job]) -> None:
    """Decode `jobs` (equal `batch_key`) as one batch, emitting each one's text pieces and its finish."""
    rows = [_Row(j, IncrementalDetokenizer(tokenizer, j.prompt_ids), StopText(j.stop)) for j in jobs]
    first = jobs[0]
    device = next(iter([*model.parameters(), *model.buffers()])).device
    generators = [torch.Generator(device=device).manual_seed(j.seed) for j in jobs]
    steps = decode_steps(
        model,
        [j.prompt_ids for j in jobs],
        max(j.max_tokens for j in jobs),
        block_size,
        first.sampling,
        generators,
        True,
        build_processors(first.processors, tokenizer),
    )
    try:
        for next_ids in steps:
            for row, token_id in zip(rows, next_ids.tolist(), strict=True):
                if not row.done:
                    row.push(token_id)
                    if row.done:
                        row.finish()  # its client need not wait for the batch's longest row
            if all(row.done for row in rows):
                break
    finally:
        steps.close()
    for row in rows:
        row.finish()


class Engine:
    """A bounded queue of jobs and the one thread that runs the model on them."""

    def __init__(
        self, model: nn.Module, tokenizer: Tokenizer, block_size: int, max_batch: int = 32, max_queue: int = 256
    ) -> None:
        self.model, self.tokenizer, self.block_size = model, tokenizer, block_size
        self.max_batch, self.max_queue = max_batch, max_queue
        self._waiting: deque[Job] = deque()
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.batches = 0  # batches decoded (the health endpoint and tests read it)
        self.largest_batch = 0

    def start(self) -> None:
        """Start the worker thread (once)."""
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._work, name="lmlab-serve-model", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Let the worker finish its batch and end; jobs still waiting get an error."""
        with self._ready:
            self._stopping = True
            self._ready.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        while self._waiting:
            self._waiting.popleft().emit(("error", "the server is shutting down"))

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def submit(self, job: Job) -> None:
        """Queue `job`; raise `QueueFull` when `max_queue` jobs wait already."""
        with self._ready:
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(
                    f"{len(self._waiting)} requests are waiting already (max_queue={self.max_queue}); "
                    "retry later, or start the server with a larger max_queue"
                )
            self._waiting.append(job)
            self._ready.notify()

    def _next_batch(self) -> list[Job]:
        """The oldest live job and the waiting ones that can share its batch; [] when stopping."""
        with self._ready:
            while True:
                while self._waiting and self._waiting[0].cancelled.is_set():
                    self._waiting.popleft().emit(("done", Finish(0, "stop")))
                if self._waiting or self._stopping:
                    break
                self._ready.wait()
            if self._stopping:
                return []
            key = self._waiting[0].batch_key
            batch = [j for j in self._waiting if j.batch_key == key and not j.cancelled.is_set()][: self.max_batch]
            for job in batch:
                self._waiting.remove(job)
            return batch

    def _work(self) -> None:
        while batch := self._next_batch():
            self.batches += 1
            self.largest_batch = max(self.largest_batch, len(batch))
            try:
                decode_jobs(self.model, self.tokenizer, self.block_size, batch)
            except Exception as err:  # one bad batch must not stop the server
                log.exception("decoding a batch of %d failed", len(batch))
                message = str(err) if isinstance(err, LmlabError) else f"the model failed: {type(err).__name__}"
                for job in batch:
                    job.emit(("error", message))
