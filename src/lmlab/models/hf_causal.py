"""A pretrained Hugging Face causal LM (`AutoModelForCausalLM`) as an lmlab model, optionally with LoRA adapters."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.models.flops import matmul_parameters, transformer_flops_per_token
from lmlab.models.layers import Packing

log = logging.getLogger("lmlab")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class HFCache:
    """A transformers model's KV cache (`DynamicCache`) with lmlab's cache contract (see `layers.KVCache`): row `b`
    starts with `pad[b]` padding columns that are never attended to; `length` columns are filled so far."""

    past: Any
    """transformers' cache object; None before the first call."""
    pad: torch.Tensor
    """(B,) leading padding columns of each row."""
    capacity: int
    """The model's block_size: a sequence never outgrows it (the decoder crops and prefills anew)."""
    length: int = 0


@dataclass
class HFCausalConfig:
    """Which causal LM to load and how to fine-tune it; the architecture comes from its config (or GGUF header)."""

    name_or_path: str = ""
    """A local model folder (config.json + weights), a local `.gguf` file, or (only when no such path exists) a
    Hugging Face hub id."""
    gguf_file: str | None = None
    """A GGUF file inside the `name_or_path` folder or hub repository; dequantised to `dtype` when loaded."""
    vocab_size: int | None = None
    """Token ids of the run's tokenizer (set at run time; None = the model's). At most the model's embedding rows;
    logits are cut to it."""
    block_size: int = 128
    """Training window in tokens; at most the model's position limit."""
    dtype: str = "float32"
    """Weights' dtype: float32, bfloat16 or float16."""
    trust_remote_code: bool = False
    """Allow model code shipped with the weights (only for sources you trust)."""
    lora: bool = False
    """Train LoRA adapters (peft) instead of every weight."""
    lora_r: int = 8
    """Rank of the LoRA updates."""
    lora_alpha: int = 16
    """LoRA scaling numerator (updates are scaled by lora_alpha / lora_r)."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA branch (the default of every LoRA in lmlab: conf/task/base/lora.yaml)."""
    lora_target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Module names to adapt; `[all-linear]` means every linear layer of the blocks (attention and MLP
    projections), whatever the architecture calls them."""
    hf_config: dict[str, Any] | None = None
    """The transformers config, filled in when the pretrained model is first loaded; with it a checkpoint rebuilds
    the architecture without the original weights (they come from the checkpoint)."""

    family = "hf_causal"
    causal = True

    def __post_init__(self) -> None:
        if not str(self.name_or_path) and self.hf_config is None:
            raise LmlabError("model.name_or_path is empty; give a model folder, a .gguf file or a hub id")
        if self.dtype not in DTYPES:
            raise LmlabError(f"model.dtype={self.dtype!r} is unknown; choose one of: {', '.join(DTYPES)}")
        if self.block_size < 1 or self.lora_r < 1:
            raise LmlabError(f"model.block_size={self.block_size} and model.lora_r={self.lora_r} must be positive")
        self.lora_target_modules = [str(m) for m in self.lora_target_modules]  # Hydra passes a ListConfig
        if self.hf_config is not None:
            self.hf_config = dict(self.hf_config)


class HFCausal(nn.Module):
    """Wraps a transformers causal LM: `forward(idx)` gives next-token logits (B, T, vocab_size) like lmlab's GPT."""

    def __init__(self, config: HFCausalConfig) -> None:
        super().__init__()
        self.config = config
        model = _load_pretrained(config) if config.hf_config is None else _from_config(config)
        _check_fit(model, config)
        self.model = _with_lora(model, config) if config.lora else model
        self.train()  # from_pretrained returns eval mode; lmlab modules start in training mode like any nn.Module

    def forward(self, idx: torch.Tensor, segments: torch.Tensor | None = None) -> torch.Tensor:
        """Map token ids (B, T) to next-token logits (B, T, vocab_size); `segments` (B, T) numbers the examples packed
        into each row: they go to transformers as restarting `position_ids` and a 4D boolean mask (SDPA reads it as
        is; eager attention would add it, so packing is refused there)."""
        if segments is None:
            logits = self.model(input_ids=idx, use_cache=False).logits  # (B, T, model rows)
            return logits[..., : self.config.vocab_size]
        implementation = getattr(self.model.config, "_attn_implementation", None)
        if implementation != "sdpa":
            raise LmlabError(
                f"data.packing=true needs SDPA attention in the transformers model, and {self.config.name_or_path} "
                f"uses {implementation}; set data.packing=false"
            )
        packed = Packing.of(segments, causal=True)
        out = self.model(input_ids=idx, attention_mask=packed.mask, position_ids=packed.positions, use_cache=False)
        return out.logits[..., : self.config.vocab_size]  # (B, T, vocab_size)

    def new_cache(self, batch_size: int, pad: torch.Tensor) -> HFCache:
        """An empty KV cache for `batch_size` rows, `pad` (B,) of them leading padding, for `forward_cached`."""
        return HFCache(past=None, pad=pad.to(torch.long).reshape(batch_size), capacity=self.config.block_size)

    def forward_cached(
        self, idx: torch.Tensor, cache: HFCache, last_only: bool = False
    ) -> tuple[torch.Tensor, HFCache]:
        """Logits (B, T, vocab_size) of ids (B, T) that follow the `cache.length` tokens already in `cache`, through
        transformers' own cache: the padding columns are masked out by a 2D attention mask and positions count from
        each row's first real token, so the logits equal `forward` on each unpadded row. `last_only`: (B, 1, V)."""
        start, T = cache.length, idx.size(1)
        if start + T > cache.capacity:
            raise LmlabError(
                f"{start} cached + {T} new tokens exceed model.block_size={cache.capacity}; crop the context and "
                "prefill a new cache"
            )
        columns = torch.arange(start + T, device=idx.device)  # (S,) every column so far
        attention_mask = (columns[None, :] >= cache.pad[:, None]).long()  # (B, S): 0 on padding
        positions = (columns[None, start:] - cache.pad[:, None]).clamp(min=0)  # (B, T)
        name = _cache_argument()
        out = self.model(input_ids=idx, attention_mask=attention_mask, position_ids=positions, use_cache=True,
                         logits_to_keep=1 if last_only else 0, **{name: cache.past})  # fmt: skip
        cache.past, cache.length = getattr(out, name), start + T
        return out.logits[..., : self.config.vocab_size], cache  # (B, T or 1, vocab_size)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token at context `seq_len` (default block_size) from the transformers config's depth
        and width; see `lmlab.models.flops` (LoRA or frozen layers train with fewer FLOPs than this full count)."""
        hf = self.model.config
        return transformer_flops_per_token(matmul_parameters(self), int(hf.num_hidden_layers), int(hf.hidden_size),
                                           seq_len or self.config.block_size)  # fmt: skip

    def transformers_model(self) -> nn.Module:
        """The plain transformers model, LoRA adapters merged in (this modifies the wrapped model)."""
        model = self.model
        return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def _cache_argument() -> str:
    """transformers' name for the KV cache, in and out of a model call: `cache` (5.x), `past_key_values` before."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def _looks_like_path(name: str) -> bool:
    """Hub ids are `name` or `org/name`; anything else (absolute, `./x`, `~/x`, `a/b/c`, `x.gguf`) is a local path."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or name.endswith((".gguf", ".json")) or "\\" in name


def _source(config: HFCausalConfig) -> tuple[str, str | None, bool]:
    """Where `from_pretrained` reads: (folder or hub id, GGUF file name or None, whether it is local)."""
    name = str(config.name_or_path)
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise LmlabError(f"{path} is a file but not a .gguf; point model.name_or_path at a model folder or GGUF")
        return str(path.parent), path.name, True
    if path.is_dir():
        if config.gguf_file and not (path / config.gguf_file).is_file():
            raise LmlabError(f"{path} has no {config.gguf_file}; check model.gguf_file")
        if not config.gguf_file and not (path / "config.json").is_file():
            raise LmlabError(f"{path} has no config.json; point model.name_or_path at a Hugging Face model folder")
        return str(path), config.gguf_file, True
    if _looks_like_path(name):
        raise LmlabError(f"model {path} does not exist; check model.name_or_path")
    return name, config.gguf_file, False


def _load_pretrained(config: HFCausalConfig) -> nn.Module:
    """Weights and architecture from the folder, GGUF file or hub id; records the architecture in `hf_config`."""
    from transformers import AutoModelForCausalLM

    source, gguf_file, local = _source(config)
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    log.info("loading causal LM %s%s", source, f" ({gguf_file})" if gguf_file else "")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source,
            dtype=DTYPES[config.dtype],
            trust_remote_code=config.trust_remote_code,
            local_files_only=local,
            **extra,
        )
    except (OSError, ValueError, ImportError) as err:
        first = " ".join(str(err).split())[:200]
        raise LmlabError(
            f"cannot load causal LM {config.name_or_path!r} ({first}); give a local model folder or .gguf file in "
            "model.name_or_path"
        ) from err
    hf_config = json.loads(model.config.to_json_string())
    hf_config.pop("quantization_config", None)
    config.hf_config = hf_config
    if gguf_file:  # dequantised weights in a model flagged as quantized (save_pretrained refuses it): make it plain
        plain = _from_config(config)
        plain.load_state_dict(model.state_dict())
        model = plain
    return model.to(DTYPES[config.dtype])


def _from_config(config: HFCausalConfig) -> nn.Module:
    """The recorded architecture with fresh weights (a checkpoint's state dict fills them in)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = dict(config.hf_config or {})
    model_type = fields.pop("model_type", None)
    if not model_type:
        raise LmlabError("model.hf_config has no model_type; it must be a transformers config dict")
    hf = AutoConfig.for_model(model_type, **fields)
    model = AutoModelForCausalLM.from_config(hf, trust_remote_code=config.trust_remote_code)
    return model.to(DTYPES[config.dtype])


def _check_fit(model: nn.Module, config: HFCausalConfig) -> None:
    """The tokenizer's ids must have embedding rows and the window must fit the positions; fills `vocab_size`."""
    rows = model.get_input_embeddings().num_embeddings
    if config.vocab_size is None:
        config.vocab_size = rows
    if config.vocab_size > rows:
        raise LmlabError(
            f"the tokenizer has {config.vocab_size} ids but {config.name_or_path} embeds only {rows}; use the "
            "model's own tokenizer: tokenizer=hf tokenizer.name_or_path=<the model folder or .gguf>"
        )
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions and config.block_size > max_positions:
        raise LmlabError(
            f"model.block_size={config.block_size} exceeds the {max_positions} positions of {config.name_or_path}; "
            "lower model.block_size"
        )


def _with_lora(model: nn.Module, config: HFCausalConfig) -> nn.Module:
    """Freeze the model and add LoRA adapters to the target modules; logs trainable / total parameters."""
    from peft import LoraConfig, get_peft_model

    targets = config.lora_target_modules
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        task_type="CAUSAL_LM",
    )
    try:
        peft_model = get_peft_model(model, lora)
    except ValueError as err:
        raise LmlabError(
            f"model.lora_target_modules={targets} matches no layer of {config.name_or_path}; name its linear "
            "layers (e.g. [q_proj,v_proj]) or use [all-linear]"
        ) from err
    trainable, total = peft_model.get_nb_trainable_parameters()
    log.info("LoRA: training %d of %d parameters (%.2f %%)", trainable, total, 100 * trainable / total)
    return peft_model
