"""Hugging Face interop: lmlab checkpoints as Transformers folders (`lmlab export format=hf`).

The other direction, a Transformers causal LM trained by lmlab, is the model family `hf_causal`
(`lmlab.models.hf_causal`).
"""

from __future__ import annotations

from lmlab.hf.convert import Converted, convert_gpt
from lmlab.hf.export import ExportResult, check_logits, export_checkpoint, gpt_to_transformers, to_transformers
from lmlab.hf.tokenizer import check_hf_tokenizer, save_hf_tokenizer, tokenizer_json

__all__ = [
    "Converted",
    "ExportResult",
    "check_hf_tokenizer",
    "check_logits",
    "convert_gpt",
    "export_checkpoint",
    "gpt_to_transformers",
    "save_hf_tokenizer",
    "to_transformers",
    "tokenizer_json",
]
