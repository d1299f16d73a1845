"""lmlab checkpoints as an lm-evaluation-harness model: `--model lmlab --model_args ckpt=RUN`.

The three request types run on lmlab's own code so their numbers are lmlab's: `loglikelihood` scores batches of
(context, continuation) rows in one forward pass each, `loglikelihood_rolling` scores a text in the windows
`lmlab eval text_file=...` uses (so its total equals eval's loss times its token count), and `generate_until` is
`lmlab generate` (batched, KV cache, stop strings cut the text), so greedy output is the same text byte for byte.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import lm_eval.models  # noqa: F401  (fills lm-eval's registry first: it loads its own models only while empty)
import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from torch.nn import functional as F

from lmlab.checkpoints.load import LoadedCheckpoint
from lmlab.errors import LmlabError

Row = tuple[list[int], list[int]]
"""One scoring request as token ids: (context, continuation)."""

DEFAULT_BATCH_SIZE = 16
DEFAULT_MAX_GEN_TOKS = 256
"""lm-eval's default for `generate_until` requests that name no `max_gen_toks`."""


@register_model("lmlab")
class LmlabLM(TemplateLM):
    """A causal lmlab checkpoint (gpt, lstm, ngram, hf_causal) answering lm-eval's requests."""

    def __init__(
        self,
        ckpt: str | None = None,
        device: str = "auto",
        batch_size: int | str | None = DEFAULT_BATCH_SIZE,
        seed: int = 0,
        loaded: LoadedCheckpoint | None = None,
        max_batch_size: int | None = None,  # lm-eval passes it to every model; batches here are `batch_size`
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:
            raise LmlabError(f"unknown model argument {next(iter(unknown))!r} of the lmlab model; give ckpt=RUN and "
                             "optionally device, batch_size, seed")  # fmt: skip
        if loaded is None:
            if not ckpt:
                raise LmlabError("the lmlab model needs a checkpoint: --model_args ckpt=outputs/<task>/<date>/<time>")
            from lmlab.compute.hardware import pick_device
            from lmlab.inference.language_model import load_language_model

            loaded = load_language_model(str(ckpt), pick_device(str(device)))
        self.loaded = loaded
        self.model = loaded.model.eval()
        self.tokenizer = loaded.tokenizer
        self.block_size = int(loaded.model_config.block_size)
        self.batch_size = batch_size_of(batch_size)
        self.seed = int(seed)

    @property
    def device(self) -> torch.device:
        return next(iter([*self.model.parameters(), *self.model.buffers()])).device

    @property
    def max_length(self) -> int:
        return self.block_size

    @property
    def tokenizer_name(self) -> str:
        return type(self.tokenizer).__name__

    @property
    def eot_token_id(self) -> int:
        """The token an empty context stands on: bos, else eos, else a newline (a char model's document break)."""
        special = self.tokenizer.special_ids()
        for role in ("bos", "eos"):
            if role in special:
                return special[role]
        newline = self.tokenizer.encode("\n")
        if len(newline) == 1:
            return newline[0]
        raise LmlabError("an lm-eval request has an empty context and the tokenizer has no bos, eos or newline token "
                         "to stand for it; use tasks whose prompts are not empty")  # fmt: skip

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return self.tokenizer.encode(string)

    def tok_decode(self, tokens: Sequence[int], **kwargs: Any) -> str:
        return self.tokenizer.decode(list(tokens))

    def loglikelihood(self, requests: list, disable_tqdm: bool = True) -> list[tuple[float, bool]]:
        """lm-eval's tokenization of (context, continuation) pairs, without its progress bar."""
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm)

    def _loglikelihood_tokens(self, requests: list[tuple[Any, list[int], list[int]]], **kwargs: Any) -> list:
        return score_rows(self.model, [(ctx, cont) for _, ctx, cont in requests], self.block_size, self.batch_size)

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts, summed over the windows `lmlab eval text_file=...` scores.

        Every token after the first is predicted (the first is the context, as in eval, which prepends nothing):
        windows of `block_size` tokens, the last one ending at the text's end with a full context. A text of one
        token scores 0.
        """
        windows: list[Row] = []
        owners: list[int] = []
        for index, (text,) in enumerate(request.args for request in requests):
            ids = self.tok_encode(text)
            for ctx, cont in rolling_windows(ids, self.block_size):
                windows.append((ctx, cont))
                owners.append(index)
        totals = [0.0] * len(requests)
        scored = score_rows(self.model, windows, self.block_size, self.batch_size)
        for owner, (logprob, _) in zip(owners, scored, strict=True):
            totals[owner] += logprob
        return totals

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        """Continue each context as `lmlab generate` does, grouped by generation settings and batched."""
        from lmlab.generation import generate_text

        groups: dict[str, list[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            groups[repr(sorted(request.args[1].items()))].append(index)
        texts = [""] * len(requests)
        for indices in groups.values():
            config = generation_config(requests[indices[0]].args[1], self.seed)
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start : start + self.batch_size]
                prompts = [self.tok_encode(requests[i].args[0]) or [self.eot_token_id] for i in batch]
                done = generate_text(self.model, self.tokenizer, prompts, config, self.block_size)
                for i, completion in zip(batch, done, strict=True):
                    texts[i] = completion.text
        return texts


def batch_size_of(value: int | str | None) -> int:
    """lm-eval's `--batch_size` (a number, `auto` or None) as rows per forward pass."""
    if value is None or str(value).startswith("auto"):
        return DEFAULT_BATCH_SIZE
    size = int(value)
    if size < 1:
        raise LmlabError(f"batch_size={value} must be a positive integer, e.g. batch_size=16")
    return size


def rolling_windows(ids: list[int], block_size: int) -> list[Row]:
    """(context, continuation) windows scoring `ids[1:]` given what precedes each token, in at most `block_size`
    tokens: lm-eval's rolling windows with the text's first token as the prefix, which are exactly the windows of
    `TokenWindows(cover_tail=True)` behind `lmlab eval`."""
    if len(ids) < 2:
        return []
    windows = get_rolling_token_windows(token_list=ids[1:], prefix_token=ids[0], max_seq_len=block_size, context_len=1)
    return [make_disjoint_window(window) for window in windows]


def generation_config(settings: dict[str, Any], seed: int) -> Any:
    """lm-eval's generation kwargs (`until`, `max_gen_toks`, `do_sample`, `temperature`, ...) as lmlab's."""
    from lmlab.generation import GenerationConfig, SamplingOptions

    settings = dict(settings)
    until = settings.pop("until", None) or []
    until = [until] if isinstance(until, str) else list(until)
    sample = bool(settings.pop("do_sample", False))
    temperature = float(settings.pop("temperature", 1.0 if sample else 0.0))
    sampling = SamplingOptions(
        temperature=temperature if sample else 0.0, top_k=settings.pop("top_k", None), top_p=settings.pop("top_p", None)
    )
    return GenerationConfig(
        max_new_tokens=int(settings.pop("max_gen_toks", DEFAULT_MAX_GEN_TOKS)), sampling=sampling, stop=until, seed=seed
    )


def score_rows(
    model: torch.nn.Module, rows: Sequence[Row], block_size: int, batch_size: int
) -> list[tuple[float, bool]]:
    """(log-likelihood, is greedy) of each continuation given its context, in the model's context of `block_size`
    tokens: the context is cut on the left, and a continuation longer than `block_size` is scored in pieces."""
    if any(not ctx or not cont for ctx, cont in rows):
        raise LmlabError("an lm-eval request has an empty context or continuation; give both some text")
    owners, pieces = [], []
    for index, (ctx, cont) in enumerate(rows):
        for piece in split_row(ctx, cont, block_size):
            owners.append(index)
            pieces.append(piece)
    results = [(0.0, True)] * len(rows)
    for owner, (logprob, greedy) in zip(owners, score_pieces(model, pieces, block_size, batch_size), strict=True):
        results[owner] = (results[owner][0] + logprob, results[owner][1] and greedy)
    return results


def split_row(ctx: list[int], cont: list[int], block_size: int) -> list[Row]:
    """A row as pieces that fit the context: itself when the continuation does, else pieces of half the context,
    each after the tokens (context and continuation) just before it."""
    if len(cont) <= block_size:
        return [(ctx, cont)]
    step = max(1, block_size // 2)
    pieces = []
    for start in range(0, len(cont), step):
        target = cont[start : start + step]
        before = (ctx + cont[:start])[-(block_size + 1 - len(target)) :]
        pieces.append((before, target))
    return pieces


@torch.no_grad()
def score_pieces(
    model: torch.nn.Module, rows: Sequence[Row], block_size: int, batch_size: int
) -> list[tuple[float, bool]]:
    """`score_rows` for continuations of at most `block_size` tokens: one forward pass per batch of rows, sorted by
    length so a batch pads little."""
    device = next(iter([*model.parameters(), *model.buffers()])).device
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]) - len(rows[i][1]))
    results: list[tuple[float, bool]] = [(0.0, False)] * len(rows)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        seqs = [(rows[i][0] + rows[i][1])[-(block_size + 1) :] for i in batch]
        width = max(len(s) for s in seqs) - 1
        x = torch.zeros(len(batch), width, dtype=torch.long)  # (B, T): right padding, never attended to
        for row, seq in enumerate(seqs):
            x[row, : len(seq) - 1] = torch.tensor(seq[:-1])
        logprobs = F.log_softmax(model(x.to(device)).float(), dim=-1)  # (B, T, V)
        for row, i in enumerate(batch):
            n, end = len(rows[i][1]), len(seqs[row]) - 1
            target = torch.tensor(rows[i][1], device=device)  # (n,)
            picked = logprobs[row, end - n : end]  # (n, V)
            logprob = float(picked.gather(-1, target[:, None]).sum())
            results[i] = (logprob, bool((picked.argmax(-1) == target).all()))
    return results
