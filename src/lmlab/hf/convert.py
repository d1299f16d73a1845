"""lmlab models -> the Transformers architecture that computes the same function: a config and a state dict.

| lmlab GPT                        | Transformers         | how                                                  |
|----------------------------------|----------------------|------------------------------------------------------|
| learned positions + LayerNorm    | `GPT2LMHeadModel`    | Conv1D weights are transposed; fused c_attn as is     |
| rotary + RMSNorm                 | `ArceeForCausalLM`   | Llama's layout with a plain (non-gated) MLP           |
| rotary + LayerNorm               | `GPTNeoXForCausalLM` | sequential residual, q/k/v interleaved per head       |
| learned positions + RMSNorm      | refused              | no Transformers architecture has both                 |

The MLP activation maps by name (`gelu`, the exact erf one, and `relu2` are both Transformers activations), an
untied head (`tie_embeddings=false`) is written as its own `lm_head.weight`, and `qk_norm=true` is refused (none of
the three normalises queries and keys per head). Missing biases (lmlab's `bias=False`) become zeros where the target
always has them. Rotary uses the rotate-half convention with base 10,000 on whole heads, and lmlab's RMSNorm
(eps=None) uses the float32 machine epsilon, which is what the exported `rms_norm_eps` says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.models import GPT, GPTConfig

ROPE_THETA = 10_000.0
"""Base of lmlab's `Rotary`."""
LAYERNORM_EPS = 1e-5
"""`nn.LayerNorm`'s default eps, which lmlab's `make_norm` keeps."""
RMSNORM_EPS = torch.finfo(torch.float32).eps
"""`nn.RMSNorm(eps=None)` normalises with the machine epsilon of the input's dtype: float32's for fp32 weights."""


@dataclass
class Converted:
    """An lmlab model rewritten for Transformers."""

    config: Any
    """A `transformers.PretrainedConfig`."""
    state_dict: dict[str, torch.Tensor]
    """Weights under the Transformers model's parameter names."""
    description: str
    """What was mapped, for messages, e.g. "GPT (learned positions, LayerNorm) as GPT2LMHeadModel"."""


def convert_gpt(model: GPT, special_ids: dict[str, int]) -> Converted:
    """Map an lmlab GPT onto GPT-2, Arcee or GPT-NeoX (see the module docstring); refuse what none can express."""
    config = model.config
    shape = f"GPT ({config.pos_embedding} positions, {config.norm})"
    if config.qk_norm:
        raise LmlabError(
            "a GPT with model.qk_norm=true has no Transformers architecture lmlab exports to (GPT-2, Arcee and "
            "GPT-NeoX have no per-head query/key norm); export a model trained with model.qk_norm=false"
        )
    if config.pos_embedding == "learned" and config.norm == "layernorm":
        converted = _to_gpt2(model, special_ids)
    elif config.pos_embedding == "rope" and config.norm == "rmsnorm":
        converted = _to_arcee(model, special_ids)
    elif config.pos_embedding == "rope" and config.norm == "layernorm":
        converted = _to_gpt_neox(model, special_ids)
    else:
        raise LmlabError(
            f"a GPT with pos_embedding={config.pos_embedding} and norm={config.norm} has no Transformers "
            "architecture (GPT-2 needs LayerNorm, rotary models have no position table); export a model trained "
            "with norm=layernorm or pos_embedding=rope"
        )
    converted.description = f"{shape} as {converted.config.architectures[0]}"
    return converted


def refuse_family(family: str) -> LmlabError:
    """The one-line reason a model family cannot be exported."""
    reasons = {
        "bert": "lmlab's BERT is pre-norm while Transformers' BertModel is post-norm, so no BERT checkpoint computes "
        "the same function; export a GPT (model=gpt...) instead",
        "lstm": "Transformers has no LSTM language model; export a GPT (model=gpt...) instead",
        "ngram": "an n-gram table is not a neural network Transformers can load; export a GPT (model=gpt...) instead",
    }
    reason = reasons.get(family, f"lmlab export supports model=gpt and model=hf_causal, not {family}")
    return LmlabError(f"cannot export model={family} to Hugging Face format: {reason}")


def _token_ids(special_ids: dict[str, int]) -> dict[str, int | None]:
    return {f"{role}_token_id": special_ids.get(role) for role in ("bos", "eos", "pad")}


def _weight(module: nn.Module) -> torch.Tensor:
    return module.weight.detach()


def _bias(module: nn.Module, size: int) -> torch.Tensor:
    """The module's bias, or zeros where lmlab has none and the target always adds one."""
    bias = getattr(module, "bias", None)
    return torch.zeros(size, dtype=module.weight.dtype) if bias is None else bias.detach()


def _common(model: GPT) -> dict[str, Any]:
    c: GPTConfig = model.config
    return {"vocab_size": c.vocab_size, "tie_word_embeddings": c.tie_embeddings, "dtype": "float32"}


def _to_gpt2(model: GPT, special_ids: dict[str, int]) -> Converted:
    from transformers import GPT2Config

    c: GPTConfig = model.config
    C = c.n_embd
    sd = {"transformer.wte.weight": _weight(model.wte), "transformer.wpe.weight": _weight(model.wpe)}
    for i, block in enumerate(model.blocks):
        p = f"transformer.h.{i}."
        parts = {
            "ln_1": block.ln_1,
            "attn.c_attn": block.attn.qkv,
            "attn.c_proj": block.attn.proj,
            "ln_2": block.ln_2,
            "mlp.c_fc": block.mlp.fc,
            "mlp.c_proj": block.mlp.proj,
        }
        for name, module in parts.items():
            linear = isinstance(module, nn.Linear)
            sd[p + name + ".weight"] = _weight(module).t() if linear else _weight(module)  # Conv1D: (in, out)
            sd[p + name + ".bias"] = _bias(module, module.weight.shape[0])
    sd["transformer.ln_f.weight"] = _weight(model.ln_f)
    sd["transformer.ln_f.bias"] = _bias(model.ln_f, C)
    sd["lm_head.weight"] = _weight(model.lm_head)  # the token embedding where tied
    config = GPT2Config(
        **_common(model),
        **_token_ids(special_ids),
        n_positions=c.block_size,
        n_embd=C,
        n_layer=c.n_layer,
        n_head=c.n_head,
        n_inner=4 * C,
        activation_function=c.activation,  # "gelu" is exact erf GELU, as F.gelu (GPT-2's "gelu_new" is tanh)
        resid_pdrop=c.dropout,
        embd_pdrop=c.dropout,
        attn_pdrop=c.dropout,
        layer_norm_epsilon=LAYERNORM_EPS,
        scale_attn_weights=True,
        scale_attn_by_inverse_layer_idx=False,
        reorder_and_upcast_attn=False,
        architectures=["GPT2LMHeadModel"],
    )
    return Converted(config, sd, "")


def _to_arcee(model: GPT, special_ids: dict[str, int]) -> Converted:
    from transformers import ArceeConfig

    c: GPTConfig = model.config
    C = c.n_embd
    sd = {"model.embed_tokens.weight": _weight(model.wte)}
    for i, block in enumerate(model.blocks):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = _weight(block.ln_1)
        sd[p + "post_attention_layernorm.weight"] = _weight(block.ln_2)
        for name, rows in zip(("q", "k", "v"), _weight(block.attn.qkv).split(C), strict=True):
            sd[p + f"self_attn.{name}_proj.weight"] = rows
        for name, module in (("self_attn.o_proj", block.attn.proj), ("mlp.up_proj", block.mlp.fc)):
            sd[p + name + ".weight"] = _weight(module)
        sd[p + "mlp.down_proj.weight"] = _weight(block.mlp.proj)
        if c.bias:
            for name, bias in zip(("q", "k", "v"), block.attn.qkv.bias.detach().split(C), strict=True):
                sd[p + f"self_attn.{name}_proj.bias"] = bias
            sd[p + "self_attn.o_proj.bias"] = block.attn.proj.bias.detach()
            sd[p + "mlp.up_proj.bias"] = block.mlp.fc.bias.detach()
            sd[p + "mlp.down_proj.bias"] = block.mlp.proj.bias.detach()
    sd["model.norm.weight"] = _weight(model.ln_f)
    sd["lm_head.weight"] = _weight(model.lm_head)  # the token embedding where tied
    config = ArceeConfig(
        **_common(model),
        **_token_ids(special_ids),
        hidden_size=C,
        intermediate_size=4 * C,
        num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head,
        num_key_value_heads=c.n_head,
        head_dim=C // c.n_head,
        hidden_act=c.activation,
        max_position_embeddings=c.block_size,
        rms_norm_eps=RMSNORM_EPS,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        attention_bias=c.bias,
        mlp_bias=c.bias,
        attention_dropout=c.dropout,
        architectures=["ArceeForCausalLM"],
    )
    config.rope_theta = ROPE_THETA  # what Transformers 4.x reads
    return Converted(config, sd, "")


def _per_head_qkv(tensor: torch.Tensor, n_head: int) -> torch.Tensor:
    """lmlab's fused rows [q heads | k heads | v heads] -> GPT-NeoX's [q k v of head 0 | of head 1 | ...]."""
    rest = tensor.shape[1:]
    head_dim = tensor.shape[0] // (3 * n_head)
    return tensor.reshape(3, n_head, head_dim, *rest).transpose(0, 1).reshape(tensor.shape)


def _to_gpt_neox(model: GPT, special_ids: dict[str, int]) -> Converted:
    from transformers import GPTNeoXConfig

    c: GPTConfig = model.config
    C, H = c.n_embd, c.n_head
    sd = {"gpt_neox.embed_in.weight": _weight(model.wte)}
    for i, block in enumerate(model.blocks):
        p = f"gpt_neox.layers.{i}."
        for name, norm in (("input_layernorm", block.ln_1), ("post_attention_layernorm", block.ln_2)):
            sd[p + name + ".weight"] = _weight(norm)
            sd[p + name + ".bias"] = _bias(norm, C)
        sd[p + "attention.query_key_value.weight"] = _per_head_qkv(_weight(block.attn.qkv), H)
        sd[p + "attention.dense.weight"] = _weight(block.attn.proj)
        if c.bias:
            sd[p + "attention.query_key_value.bias"] = _per_head_qkv(block.attn.qkv.bias.detach(), H)
            sd[p + "attention.dense.bias"] = block.attn.proj.bias.detach()
        for name, module in (("mlp.dense_h_to_4h", block.mlp.fc), ("mlp.dense_4h_to_h", block.mlp.proj)):
            sd[p + name + ".weight"] = _weight(module)
            sd[p + name + ".bias"] = _bias(module, module.weight.shape[0])
    sd["gpt_neox.final_layer_norm.weight"] = _weight(model.ln_f)
    sd["gpt_neox.final_layer_norm.bias"] = _bias(model.ln_f, C)
    sd["lm_head.weight"] = _weight(model.lm_head)  # the token embedding where tied
    config = GPTNeoXConfig(
        **_common(model),
        **_token_ids(special_ids),
        hidden_size=C,
        intermediate_size=4 * C,
        num_hidden_layers=c.n_layer,
        num_attention_heads=H,
        hidden_act=c.activation,
        max_position_embeddings=c.block_size,
        layer_norm_eps=LAYERNORM_EPS,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA, "partial_rotary_factor": 1.0},
        use_parallel_residual=False,  # lmlab's blocks are sequential: x + attn(ln_1(x)), then + mlp(ln_2(.))
        attention_bias=c.bias,
        attention_dropout=c.dropout,
        hidden_dropout=c.dropout,
        architectures=["GPTNeoXForCausalLM"],
    )
    config.rotary_pct, config.rotary_emb_base = 1.0, ROPE_THETA  # what Transformers 4.x reads (default pct 0.25)
    return Converted(config, sd, "")
