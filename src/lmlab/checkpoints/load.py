"""Loading lmlab checkpoints: a path (file or run directory) in, model + tokenizer + config out.

A checkpoint describes itself: `hyper_parameters["model"]` is the model config with its family, and
`checkpoint["lmlab"]` holds the tokenizer, the resolved run config and the lmlab version. Loading uses
`torch.load(weights_only=True)`, so a checkpoint can never run code.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.models import ModelConfig, build_model, model_config_from_dict
from lmlab.models.lora import merged_backbone_state
from lmlab.tokenizers import Tokenizer, tokenizer_from_dict

UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")
"""How `torch.load(weights_only=True)` names an object it refuses to unpickle (a class or function, e.g. `print`)."""


@dataclass
class LoadedCheckpoint:
    """What later commands need from a training run."""

    path: Path
    model_config: ModelConfig
    model: nn.Module
    tokenizer: Tokenizer
    run_config: dict[str, Any] = field(default_factory=dict)
    hyper_parameters: dict[str, Any] = field(default_factory=dict)
    global_step: int = 0

    @property
    def task_target(self) -> str:
        """The `_target_` of the task that trained it, e.g. `lmlab.tasks.CausalLMTask`."""
        return str(self.run_config.get("task", {}).get("_target_", ""))


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or the best (else last) checkpoint of a run directory."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        best = sorted(folder.glob("best*.ckpt"))
        if best:
            return best[-1]
        if (folder / "last.ckpt").is_file():
            return folder / "last.ckpt"
        raise LmlabError(f"{path} holds no checkpoint (no checkpoints/best*.ckpt or last.ckpt); give a .ckpt file")
    raise LmlabError(f"checkpoint {path} does not exist; give a .ckpt file or a run directory")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict, loaded safely; corrupt or foreign files become one-line errors."""
    path = resolve_checkpoint(path)
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 97": noise before the error below
            warnings.simplefilter("ignore", UserWarning)
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # bytes that are not a checkpoint fail in many ways (IndexError, KeyError, zip, pickle…)
        if unsafe := UNSAFE_GLOBAL.search(str(err)):
            raise LmlabError(
                f"cannot read checkpoint {path}: refused as unsafe, it holds a pickled object ({unsafe[1]}) that "
                "loading could run as code; only load checkpoints you trust: to use this one, load it yourself with "
                "torch.load(weights_only=False) and save back only its tensors and plain values"
            ) from err
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LmlabError(f"cannot read checkpoint {path} ({first[:120]}); it may be truncated or corrupt") from err
    if not isinstance(checkpoint, dict) or "lmlab" not in checkpoint or "state_dict" not in checkpoint:
        raise LmlabError(f"{path} is not an lmlab checkpoint (no model description inside); train one with lmlab")
    return checkpoint


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Rebuild the model (in eval mode, on `device`) and the tokenizer of a checkpoint."""
    file = resolve_checkpoint(path)
    checkpoint = read_checkpoint(file)
    config = model_config_from_dict(checkpoint["hyper_parameters"]["model"])
    model = build_model(config)
    state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    state = merged_backbone_state(state, checkpoint["hyper_parameters"])  # a LoRA classifier's adapters, folded in
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        message = f"the weights in {file} do not fit a {config.family} of the saved shape; is the file corrupt?"
        raise LmlabError(message) from err
    meta = checkpoint["lmlab"]
    tokenizer = tokenizer_from_dict(meta["tokenizer"])
    check_vocabulary(file, tokenizer, config)
    return LoadedCheckpoint(
        path=file,
        model_config=config,
        model=model.to(device).eval(),
        tokenizer=tokenizer,
        run_config=meta.get("config", {}),
        hyper_parameters=checkpoint["hyper_parameters"],
        global_step=int(checkpoint.get("global_step", 0)),
    )


def check_vocabulary(path: Path, tokenizer: Tokenizer, config: ModelConfig) -> None:
    """The tokenizer must not produce ids the model has no embedding for (a mismatched or edited checkpoint)."""
    model_vocab = getattr(config, "vocab_size", None)
    if model_vocab and tokenizer.vocab_size > model_vocab:
        raise LmlabError(
            f"{path}: its tokenizer has {tokenizer.vocab_size} tokens but the model only {model_vocab}; the tokenizer "
            "does not belong to this model: use the checkpoint that lmlab train wrote with it"
        )


def check_resume(path: str | Path, model: dict[str, Any]) -> None:
    """`ckpt_path`: the checkpoint must load and hold the model this run builds (same family and shape); `model` is
    the run's resolved model config node (`_target_` + fields)."""
    file = resolve_checkpoint(path)
    saved = read_checkpoint(file)["hyper_parameters"].get("model", {})
    family = getattr(import_target(str(model.get("_target_", ""))), "family", None)
    if family is None:
        return
    if saved.get("family") != family:
        raise LmlabError(
            f"ckpt_path={file} holds a {saved.get('family', '?')} model but this run builds a {family}; "
            "resume with the model config it was trained with, or drop ckpt_path"
        )
    for key, value in model.items():
        if key in saved and key not in ("vocab_size", "dropout") and saved[key] != value:
            raise LmlabError(
                f"ckpt_path={file} was trained with model.{key}={saved[key]}, this run sets {value}; "
                f"set model.{key}={saved[key]} or drop ckpt_path"
            )


def import_target(target: str) -> Any:
    """The object a dotted `_target_` path names (e.g. `lmlab.tasks.CausalLMTask`), or None."""
    import importlib

    module, _, name = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None
