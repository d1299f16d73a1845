"""`lmlab export format=hf`: a checkpoint as a Hugging Face folder that Transformers loads with the same logits.

The folder is written beside its destination under a temporary name, checked by loading it back with
`AutoModelForCausalLM` / `AutoTokenizer` and comparing logits and ids with lmlab's, and only then renamed into place:
a failed or refused export leaves nothing that looks complete.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lmlab.checkpoints.load import LoadedCheckpoint, load_checkpoint, resolve_checkpoint
from lmlab.errors import LmlabError
from lmlab.hf.convert import convert_gpt, refuse_family
from lmlab.hf.tokenizer import check_hf_tokenizer, save_hf_tokenizer
from lmlab.models import GPT

log = logging.getLogger("lmlab")

FORMATS = ("hf",)
TOLERANCE = 1e-4
"""Largest logit difference (relative to the largest logit, at least 1) an export may show in float32."""


@dataclass
class ExportResult:
    """What `export_checkpoint` wrote."""

    out: Path
    description: str
    """e.g. "GPT (learned positions, layernorm) as GPT2LMHeadModel"."""
    max_logit_diff: float
    """Largest |logit difference| between lmlab's model and the exported folder loaded by Transformers."""


def export_checkpoint(ckpt: str | Path, out: str | Path, format: str = "hf", overwrite: bool = False) -> ExportResult:
    """Export the checkpoint (file or run directory) `ckpt` to the folder `out`."""
    if format not in FORMATS:
        raise LmlabError(f"format={format!r} is not supported; use format=hf")
    out = Path(out).expanduser().resolve()
    _check_destination(out, resolve_checkpoint(ckpt).resolve(), overwrite)
    loaded = load_checkpoint(ckpt)
    hf_model, description = to_transformers(loaded)
    with _staging(out) as tmp:
        hf_model.save_pretrained(str(tmp))
        save_hf_tokenizer(loaded.tokenizer, tmp, model_max_length=loaded.model_config.block_size)
        check_hf_tokenizer(loaded.tokenizer, tmp)
        diff = check_logits(loaded, tmp)
    log.info("exported %s to %s (max |logit difference| %.2e)", description, out, diff)
    return ExportResult(out, description, diff)


def to_transformers(loaded: LoadedCheckpoint) -> tuple[nn.Module, str]:
    """The checkpoint's model as a Transformers causal LM with the same weights, and a description of the mapping."""
    family = loaded.model_config.family
    task = loaded.task_target.rsplit(".", 1)[-1]
    if task and task != "CausalLMTask":
        raise LmlabError(
            f"{loaded.path} was trained by {task}, and lmlab export writes causal language models "
            "(AutoModelForCausalLM); export a checkpoint of task=causal_lm"
        )
    if family == "hf_causal":
        model = loaded.model.transformers_model()
        return model, f"{type(model).__name__} (fine-tuned with lmlab)"
    if family != "gpt":
        raise refuse_family(family)
    return gpt_to_transformers(loaded.model, loaded.tokenizer.special_ids())


def gpt_to_transformers(model: GPT, special_ids: dict[str, int] | None = None) -> tuple[nn.Module, str]:
    """An lmlab GPT as the Transformers causal LM with a copy of its weights (in memory, eval mode), and a
    description of the mapping; `special_ids` (by role) set the bos/eos/pad ids of its config."""
    from transformers import AutoModelForCausalLM

    converted = convert_gpt(model, special_ids or {})
    hf_model = AutoModelForCausalLM.from_config(converted.config, trust_remote_code=False).eval()
    missing, unexpected = hf_model.load_state_dict(converted.state_dict, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"export mapping does not fit {converted.description}: {missing=} {unexpected=}")
    return hf_model, converted.description


def check_logits(loaded: LoadedCheckpoint, folder: Path, batch: int = 2, max_len: int = 128) -> float:
    """Load `folder` with Transformers, compare its float32 logits with lmlab's; refuse a mismatch."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=torch.float32, local_files_only=True, trust_remote_code=False
    ).eval()
    model = loaded.model.float().eval()
    vocab = loaded.model_config.vocab_size
    T = min(loaded.model_config.block_size, max_len)
    idx = torch.randint(0, vocab, (batch, T), generator=torch.Generator().manual_seed(0))  # (B, T)
    with torch.no_grad():
        expected = model(idx)  # (B, T, V)
        got = hf(input_ids=idx).logits[..., :vocab]  # (B, T, V)
    diff = (got - expected).abs().max().item()
    if not diff <= TOLERANCE * max(1.0, expected.abs().max().item()):
        raise LmlabError(f"the exported model's logits differ from lmlab's by {diff:.3g}; not exporting (a bug)")
    return diff


def _check_destination(out: Path, checkpoint: Path, overwrite: bool) -> None:
    from lmlab.io import check_writable

    check_writable(out, "out", folder=True)
    if out in checkpoint.parents:
        raise LmlabError(f"out={out} holds the checkpoint being exported; choose another folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise LmlabError(f"out={out} exists and is not empty; choose a new folder or pass overwrite=true")


@contextlib.contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A temporary folder beside `out` that replaces it (renames) when the block succeeds; removed otherwise."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the export is an ordinary folder
    try:
        yield tmp
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old)  # an empty `old` is replaced by the previous export
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
