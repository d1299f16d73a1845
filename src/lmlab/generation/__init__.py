"""Text generation: sampling functions, decoders (KV cache, carried state, window), streaming and stop strings."""

from __future__ import annotations

from lmlab.generation.decoding import (
    KVCacheDecoder,
    RecurrentDecoder,
    WindowDecoder,
    decode_steps,
    generate,
    left_pad,
    make_decoder,
    require_causal,
)
from lmlab.generation.sampling import (
    SamplingOptions,
    apply_repetition_penalty,
    apply_temperature,
    apply_top_k,
    apply_top_p,
    draw,
    process_logits,
    sample_next,
)
from lmlab.generation.text import (
    Completion,
    GenerationConfig,
    IncrementalDetokenizer,
    StopText,
    generate_text,
    sample_continuation,
    stream_pieces,
    stream_text,
)

__all__ = [
    "Completion",
    "GenerationConfig",
    "IncrementalDetokenizer",
    "KVCacheDecoder",
    "RecurrentDecoder",
    "SamplingOptions",
    "StopText",
    "WindowDecoder",
    "apply_repetition_penalty",
    "apply_temperature",
    "apply_top_k",
    "apply_top_p",
    "decode_steps",
    "draw",
    "generate",
    "generate_text",
    "left_pad",
    "make_decoder",
    "process_logits",
    "require_causal",
    "sample_continuation",
    "sample_next",
    "stream_pieces",
    "stream_text",
]
