"""lmlab GPTs as TransformerLens `HookedTransformer`s, so any lmlab language model reaches the wider
interpretability ecosystem (SAELens, circuitsvis, TransformerLens's own patching and attribution tools).

Needs the `interp` extra: `pip install -e '.[interp]'` (transformer-lens 3.x: 4.0 removed `HookedTransformer` in
favour of `TransformerBridge`, which boots from Transformers models; `lmlab export format=hf` writes those).

| lmlab GPT                       | HookedTransformerConfig / weights                                      |
|---------------------------------|------------------------------------------------------------------------|
| `norm=layernorm` (bias or not)  | `normalization_type="LN"`, eps 1e-5; a missing bias becomes zeros      |
| `norm=rmsnorm` (`nn.RMSNorm`)   | `normalization_type="RMS"`, eps = machine epsilon of the dtype         |
| `pos_embedding=learned`         | `positional_embedding_type="standard"`                                 |
| `pos_embedding=rope`            | `"rotary"`, whole heads, base 10,000, `rotary_adjacent_pairs=False`    |
| fused `qkv`, `proj`             | per-head `W_Q`/`W_K`/`W_V` (H, C, D), `W_O` (H, D, C)                  |
| MLP `fc`, `proj`, exact GELU    | `W_in` (C, 4C), `W_out` (4C, C), `act_fn="gelu"`                       |
| `lm_head`, tied or untied       | `W_U` = the head (tied: the token embedding), transposed; `b_U` zeros  |
| `activation=relu2`, `qk_norm`   | refused: HookedTransformer has no relu² and no per-head q/k norm      |

The weights are loaded unprocessed, so logits and activations equal lmlab's under the same names (lmlab's
`hook_pos_embed` is (T, C), broadcast over the batch; TransformerLens's is (B, T, C)). TransformerLens's own
`from_pretrained` also folds norms and centres weights; call `hooked.process_weights_()` for that (it changes
activations, and `center_unembed` shifts logits by a constant per position, but not probabilities).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.models.gpt import GPT, GPTConfig
from lmlab.tokenizers import CharTokenizer, Tokenizer
from lmlab.tokenizers.char import UNKNOWN

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import PreTrainedTokenizerFast

log = logging.getLogger("lmlab")

INSTALL = "pip install -e '.[interp]' (or pip install 'transformer-lens>=3.9,<4')"
"""How to get TransformerLens, for the error raised where it is missing."""
LANGUAGE_MODEL_TASKS = ("CausalLMTask", "SFTTask")
"""Tasks whose GPT checkpoints carry a trained language-model head."""


def to_hooked_transformer(
    source: GPT | nn.Module | str | Path, device: str | torch.device | None = None
) -> HookedTransformer:
    """An lmlab GPT, or the GPT of a checkpoint (file or run directory), as a TransformerLens `HookedTransformer`
    with the same logits and the same activations under the same hook names (in eval mode, on `device`; default:
    where the model's weights are, CPU for a checkpoint).

    From a checkpoint, the model gets its tokenizer as a Hugging Face fast tokenizer (char, bpe and hf tokenizers
    all convert; a tokenizer of another kind is left out, so pass token ids). `to_tokens(text)` then gives the ids
    lmlab's tokenizer gives: `default_prepend_bos` is False because lmlab trains without a BOS token, and
    `prepend_bos=True` adds one only where the tokenizer has one (e.g. `<s>`). TransformerLens pads batches of
    strings with the pad token, else the eos token; a char tokenizer with neither pads with its unknown character
    U+FFFD (padding positions are masked or come after the text, so the choice does not change results).
    """
    gpt, tokenizer = _gpt_and_tokenizer(source)
    device = next(gpt.parameters()).device if device is None else torch.device(device)
    tl = _import_transformer_lens()
    config = hooked_transformer_config(gpt.config, dtype=gpt.wte.weight.dtype, device=device)
    hf_tokenizer = None if tokenizer is None else _hf_tokenizer_or_none(tokenizer, gpt.config.block_size)
    with warnings.catch_warnings():  # 3.x deprecates the class it still ships; 4.0 removed it (see module doc)
        warnings.filterwarnings("ignore", message="HookedTransformer is deprecated", category=DeprecationWarning)
        padding = None if hf_tokenizer is None else "right"  # after the text: a causal model's results ignore it
        hooked = tl.HookedTransformer(config, tokenizer=hf_tokenizer, default_padding_side=padding)  # on `device`
    if hf_tokenizer is not None:
        _drop_invented_specials(hooked, tokenizer)
    _load(hooked, hooked_state_dict(gpt))
    return hooked.eval()


def hooked_transformer_config(
    config: GPTConfig, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> HookedTransformerConfig:
    """The `HookedTransformerConfig` of a GPT of shape `config` (see the module docstring for the mapping)."""
    _refuse_options(config)
    tl = _import_transformer_lens()
    rope = config.pos_embedding == "rope"
    rms = config.norm == "rmsnorm"
    return tl.HookedTransformerConfig(
        d_model=config.n_embd,
        d_head=config.n_embd // config.n_head,
        n_layers=config.n_layer,
        n_heads=config.n_head,
        n_ctx=config.block_size,
        d_mlp=4 * config.n_embd,
        d_vocab=config.vocab_size,
        d_vocab_out=config.vocab_size,
        act_fn="gelu",  # F.gelu, the exact erf one
        normalization_type="RMS" if rms else "LN",
        eps=torch.finfo(dtype).eps if rms else 1e-5,  # nn.RMSNorm(eps=None) / nn.LayerNorm's default
        positional_embedding_type="rotary" if rope else "standard",
        rotary_dim=config.n_embd // config.n_head if rope else None,
        rotary_base=10_000,
        rotary_adjacent_pairs=False,  # lmlab's Rotary pairs dimension i with i + D/2 (rotate-half)
        default_prepend_bos=False,  # lmlab trains without a BOS token
        original_architecture="LmlabGPT",  # a name no TransformerLens special case matches
        model_name="lmlab-gpt",
        init_weights=False,  # every weight is overwritten by `hooked_state_dict`
        dtype=dtype,
        device=str(device),
    )


def hooked_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """The GPT's weights under `HookedTransformer` names and layouts (copies, on the model's device)."""
    c = model.config
    C, H = c.n_embd, c.n_head
    D = C // H
    sd = {"embed.W_E": model.wte.weight, "unembed.W_U": model.lm_head.weight.t()}  # (V, C), (C, V)
    sd["unembed.b_U"] = torch.zeros_like(model.lm_head.weight[:, 0])  # (V,)
    if model.wpe is not None:
        sd["pos_embed.W_pos"] = model.wpe.weight  # (block_size, C)
    for i, block in enumerate(model.blocks):
        p = f"blocks.{i}."
        sd |= _norm(p + "ln1", block.ln_1) | _norm(p + "ln2", block.ln_2)
        qkv_bias = _bias(block.attn.qkv)
        for name, w, b in zip("QKV", block.attn.qkv.weight.split(C), qkv_bias.split(C), strict=True):
            sd[p + f"attn.W_{name}"] = w.view(H, D, C).transpose(1, 2)  # (H*D, C) rows -> (H, C, D)
            sd[p + f"attn.b_{name}"] = b.view(H, D)
        sd[p + "attn.W_O"] = block.attn.proj.weight.view(C, H, D).permute(1, 2, 0)  # (C, H*D) -> (H, D, C)
        sd[p + "attn.b_O"] = _bias(block.attn.proj)
        sd[p + "mlp.W_in"], sd[p + "mlp.b_in"] = block.mlp.fc.weight.t(), _bias(block.mlp.fc)  # (C, 4C)
        sd[p + "mlp.W_out"], sd[p + "mlp.b_out"] = block.mlp.proj.weight.t(), _bias(block.mlp.proj)  # (4C, C)
    sd |= _norm("ln_final", model.ln_f)
    return {name: tensor.detach().clone().contiguous() for name, tensor in sd.items()}


def to_hf_tokenizer(tokenizer: Tokenizer, block_size: int) -> PreTrainedTokenizerFast:
    """A Transformers fast tokenizer (in memory) that encodes and decodes as `tokenizer` does, with the special
    tokens it has by role; raises `LmlabError` for a tokenizer kind that has no tokenizers-library form."""
    from tokenizers import Tokenizer as Backend
    from transformers import PreTrainedTokenizerFast

    from lmlab.hf.tokenizer import special_tokens, tokenizer_json

    roles = special_tokens(tokenizer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=Backend.from_str(tokenizer_json(tokenizer)),
        clean_up_tokenization_spaces=False,
        split_special_tokens=True,  # lmlab encodes the text of a special token as ordinary text
        model_max_length=block_size,
        name_or_path="lmlab",  # TransformerLens reads it; nothing is loaded from it since add_bos_token is set
        add_bos_token="bos_token" in roles,  # the tokenizer then prepends <bos> itself, which TransformerLens expects
        **roles,
    )
    if fast.pad_token is None and fast.eos_token is None and isinstance(tokenizer, CharTokenizer):
        fast.pad_token = UNKNOWN  # an ordinary character of every char alphabet; see `to_hooked_transformer`
    return fast


def _gpt_and_tokenizer(source: GPT | nn.Module | str | Path) -> tuple[GPT, Tokenizer | None]:
    """The GPT (and, from a checkpoint, its tokenizer) that `source` names; other models are refused."""
    if isinstance(source, GPT):
        return source, None
    if isinstance(source, nn.Module):
        raise _refuse(getattr(getattr(source, "config", None), "family", type(source).__name__))
    from lmlab.checkpoints.load import load_checkpoint

    loaded = load_checkpoint(source)
    if not isinstance(loaded.model, GPT):
        raise _refuse(loaded.model_config.family)
    task = loaded.task_target.rsplit(".", 1)[-1]
    if task and task not in LANGUAGE_MODEL_TASKS:
        raise LmlabError(
            f"{loaded.path} was trained by {task}, so its GPT has no trained language-model head; "
            "convert a checkpoint of task=causal_lm or task=sft"
        )
    return loaded.model, loaded.tokenizer


def _hf_tokenizer_or_none(tokenizer: Tokenizer, block_size: int) -> PreTrainedTokenizerFast | None:
    """`to_hf_tokenizer`, or None (with a warning) for a tokenizer kind that does not convert."""
    try:
        return to_hf_tokenizer(tokenizer, block_size)
    except LmlabError:
        log.warning("a %r tokenizer does not convert for TransformerLens; pass token ids, not text", tokenizer.kind)
        return None


def _refuse(family: str) -> LmlabError:
    """The one-line reason a model family has no HookedTransformer form, naming what to do instead."""
    reasons = {
        "bert": "lmlab's BERT is a bidirectional masked-LM encoder, and HookedTransformer is a causal decoder; "
        "inspect it with lmlab.interp.run_with_cache, which hooks BERT under the same names",
        "lstm": "an LSTM has no attention or residual stream for TransformerLens to hook; convert a GPT (model=gpt)",
        "ngram": "an n-gram table is not a neural network; convert a GPT (model=gpt)",
        "hf_causal": "export it (lmlab export format=hf) and load that with TransformerLens's own "
        "HookedTransformer.from_pretrained(<base model name>, hf_model=...) where it supports the architecture",
    }
    reason = reasons.get(family, f"only model=gpt converts, not {family}")
    return LmlabError(f"cannot convert model={family} to a TransformerLens HookedTransformer: {reason}")


def _refuse_options(config: GPTConfig) -> None:
    """Refuse GPT options HookedTransformer cannot compute (an untied head converts: `W_U` is read from `lm_head`)."""
    if config.activation != "gelu":
        raise LmlabError(
            f"cannot convert a GPT with model.activation={config.activation} to a TransformerLens HookedTransformer "
            "(it has no relu² activation); inspect it with lmlab.interp.run_with_cache, which hooks it under the same "
            "names"
        )
    if getattr(config, "qk_norm", False):
        raise LmlabError(
            "cannot convert a GPT with model.qk_norm=true to a TransformerLens HookedTransformer (it has no per-head "
            "query/key norm); inspect it with lmlab.interp.run_with_cache, which hooks it under the same names"
        )


def _norm(prefix: str, norm: nn.Module) -> dict[str, torch.Tensor]:
    """A LayerNorm's `w` and `b` (zeros where lmlab has no bias) or an RMSNorm's `w`."""
    weights = {f"{prefix}.w": norm.weight}
    if isinstance(norm, nn.LayerNorm):
        weights[f"{prefix}.b"] = _bias(norm)
    return weights


def _bias(module: nn.Module) -> torch.Tensor:
    """The module's bias, or zeros of its output width where lmlab has none (TransformerLens always adds one)."""
    bias = getattr(module, "bias", None)
    if bias is not None:
        return bias
    weight = module.weight  # (out, in) for a Linear, (C,) for a norm
    return torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)


def _load(hooked: HookedTransformer, state: dict[str, torch.Tensor]) -> None:
    """Load `state` into `hooked`, requiring that it sets every parameter and nothing else (buffers, such as the
    causal mask and rotary tables, stay as TransformerLens built them)."""
    parameters = {name for name, _ in hooked.named_parameters()}
    if set(state) != parameters:
        raise RuntimeError(
            f"the HookedTransformer mapping does not fit: missing {sorted(parameters - set(state))}, "
            f"unexpected {sorted(set(state) - parameters)}"
        )
    hooked.load_state_dict(state, strict=False)


def _drop_invented_specials(hooked: HookedTransformer, tokenizer: Tokenizer) -> None:
    """TransformerLens names an eos `<|endoftext|>` and a bos (= eos) where the tokenizer has none; unset those,
    so `prepend_bos=True` never prepends the text of a token the model does not know."""
    roles = tokenizer.special_ids()
    for role in ("bos", "eos"):
        if role not in roles:
            setattr(hooked.tokenizer, f"{role}_token", None)


def _import_transformer_lens() -> ModuleType:
    """TransformerLens, or an `LmlabError` with the install command (also for 4.x, which has no HookedTransformer)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its imports warn about optional packages it does not need here
            import transformer_lens

            transformer_lens.HookedTransformer  # noqa: B018 (4.x raises ImportError here, with a migration note)
    except ImportError as err:
        raise LmlabError(f"TransformerLens 3.x is needed (4.0 removed HookedTransformer); {INSTALL}") from err
    return transformer_lens
