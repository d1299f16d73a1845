"""Batch arithmetic: a global batch per optimizer step, split into processes × accumulation × micro-batch."""

from __future__ import annotations

from lmlab.errors import LmlabError


def accumulation_steps(
    micro_batch: int,
    world_size: int,
    global_size: int | None = None,
    global_tokens: int | None = None,
    block_size: int | None = None,
    configured: int = 1,
) -> int:
    """Gradient-accumulation micro-steps per optimizer step, so that one step sees the global batch.

    Args:
        micro_batch: sequences per micro-batch of one process (`data.batch_size`).
        world_size: processes taking part (devices × nodes, as the Trainer resolved them).
        global_size: sequences per optimizer step over all processes; `None` = one micro-batch per process.
        global_tokens: the same in tokens (`global_size × block_size`); an alternative to `global_size`.
        block_size: tokens per sequence, to turn `global_tokens` into sequences.
        configured: `trainer.accumulate_grad_batches` as set by hand; only used when no global batch is set.
    """
    if global_tokens is not None:
        if not block_size or global_tokens % block_size:
            raise LmlabError(
                f"batch.global_tokens={global_tokens} is not a multiple of the sequence length {block_size}; "
                f"use a multiple of {block_size} or set batch.global_size in sequences"
            )
        if global_size is not None and global_size != global_tokens // block_size:
            raise LmlabError(
                f"batch.global_size={global_size} and batch.global_tokens={global_tokens} disagree "
                f"({global_tokens // block_size} sequences of {block_size} tokens); set only one of them"
            )
        global_size = global_tokens // block_size
    if global_size is None:
        return configured
    if configured != 1:
        raise LmlabError(
            f"trainer.accumulate_grad_batches={configured} and batch.global_size={global_size} both set the "
            "accumulation; set only batch.global_size (the accumulation is derived from it)"
        )
    per_step = micro_batch * world_size
    if global_size < 1 or global_size % per_step:
        raise LmlabError(
            f"global batch of {global_size} sequences is not divisible by data.batch_size × processes = "
            f"{micro_batch} × {world_size} = {per_step}; use a multiple of {per_step} or change data.batch_size"
        )
    return global_size // per_step


def describe_batch(micro_batch: int, world_size: int, accumulation: int, block_size: int | None) -> str:
    """One line for the log: the global batch and how it is split."""
    sequences = micro_batch * world_size * accumulation
    tokens = f" ({sequences * block_size:,} tokens)" if block_size else ""
    return (
        f"global batch {sequences} sequences{tokens} = micro-batch {micro_batch} × {world_size} "
        f"process{'es' if world_size > 1 else ''} × accumulation {accumulation}"
    )
