"""Transformer pieces shared by the GPT decoder and the BERT encoder."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lmlab.errors import LmlabError

NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "rope")
ACTIVATIONS = ("gelu", "relu2")


@dataclass
class TransformerConfig:
    """Shape of a Transformer stack, shared by the GPT decoder and the BERT encoder."""

    vocab_size: int = 256
    """Number of token ids (set from the tokenizer)."""
    block_size: int = 64
    """Longest context in tokens."""
    n_layer: int = 4
    """Transformer blocks."""
    n_head: int = 4
    """Attention heads per block."""
    n_embd: int = 128
    """Residual stream width."""
    dropout: float = 0.0
    """Dropout on embeddings, attention weights and residual branches."""
    bias: bool = False
    """Bias in Linear and LayerNorm layers (GPT-2 uses bias; without is a little faster and as good)."""
    norm: str = "layernorm"
    """`layernorm` (GPT-2) or `rmsnorm` (Llama)."""
    pos_embedding: str = "learned"
    """`learned` position table (GPT-2) or `rope`, rotary embeddings on queries and keys (Llama)."""
    activation: str = "gelu"
    """MLP nonlinearity: `gelu` (exact, GPT-2/BERT) or `relu2`, relu(x)² (Primer, modded-nanogpt): as cheap as a
    ReLU, and Primer reports faster learning per step."""
    qk_norm: bool = False
    """RMSNorm over each head's queries and keys before rotary (OLMo-2, modded-nanogpt): bounds the attention logits,
    so higher learning rates stay stable; adds two gains of head size per block."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward pass instead of storing them: less memory, ~1/3 more
    compute, same results."""
    compile: bool = False
    """`torch.compile` the model when training starts (the task compiles it in place; a training-speed lever)."""

    def __post_init__(self) -> None:
        check_transformer_shape(self)


def check_transformer_shape(config: TransformerConfig) -> None:
    """Validate the fields every Transformer config shares; raise `LmlabError` naming the fix."""
    for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
        if getattr(config, name) < 1:
            raise LmlabError(f"model.{name}={getattr(config, name)} must be a positive integer")
    if config.n_embd % config.n_head:
        raise LmlabError(
            f"model.n_embd={config.n_embd} is not divisible by model.n_head={config.n_head}; "
            "pick n_embd as a multiple of n_head"
        )
    if config.pos_embedding == "rope" and (config.n_embd // config.n_head) % 2:
        raise LmlabError(f"model.pos_embedding=rope needs an even head size, got {config.n_embd // config.n_head}")
    if not 0.0 <= config.dropout < 1.0:
        raise LmlabError(f"model.dropout={config.dropout} must be in [0, 1)")
    if config.norm not in NORMS:
        raise LmlabError(f"model.norm={config.norm!r} is unknown; choose one of: {', '.join(NORMS)}")
    if config.pos_embedding not in POSITIONS:
        raise LmlabError(
            f"model.pos_embedding={config.pos_embedding!r} is unknown; choose one of: {', '.join(POSITIONS)}"
        )
    if config.activation not in ACTIVATIONS:
        raise LmlabError(f"model.activation={config.activation!r} is unknown; choose one of: {', '.join(ACTIVATIONS)}")


def make_norm(config: TransformerConfig) -> nn.Module:
    """LayerNorm (optionally without bias) or RMSNorm over the residual width."""
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd)
    return nn.LayerNorm(config.n_embd, bias=config.bias)


class Rotary(nn.Module):
    """Rotary position embedding (rotate-half convention, as Llama uses), applied to queries and keys."""

    def __init__(self, head_dim: int, max_len: int, base: float = 10_000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (D/2,)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)  # (T, D/2)
        angles = torch.cat([angles, angles], dim=-1)  # (T, D)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Rotate x (B, H, T, D) by the angles of positions offset .. offset+T-1."""
        T = x.size(-2)
        cos, sin = self.cos[offset : offset + T].to(x.dtype), self.sin[offset : offset + T].to(x.dtype)  # (T, D)
        half = x.size(-1) // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin

    def at(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotate x (B, H, T, D) by the angles of per-row positions (B, T), e.g. of left-padded prompts."""
        cos, sin = self.cos[positions].to(x.dtype)[:, None], self.sin[positions].to(x.dtype)[:, None]  # (B, 1, T, D)
        half = x.size(-1) // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin


class HookPoint(nn.Module):
    """An identity at a named place in the forward pass (TransformerLens's convention): the interpretability tools
    (`lmlab.interp`) read or replace the tensor passing through it with a forward hook. Without hooks it costs one
    Python call and no autograd node; holding no parameters, it changes no state dict."""

    name: str = ""
    """Its path in the model (e.g. `blocks.0.hook_resid_post`), set by the model that owns it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @property
    def active(self) -> bool:
        """Whether a hook is attached (code that would pay to expose a tensor, e.g. the attention pattern, asks)."""
        return bool(self._forward_hooks)


def name_hook_points(model: nn.Module) -> None:
    """Give every `HookPoint` of `model` its path as its name."""
    for path, module in model.named_modules():
        if isinstance(module, HookPoint):
            module.name = path


@dataclass
class KVCache:
    """Keys and values of every attention layer for a batch, preallocated to the model's block_size.

    Column `j` of each tensor holds the key/value of the `j`-th token fed since the cache was made. Row `b` starts
    with `pad[b]` padding columns (left-padded prompts): they are never attended to, and positions count from the
    row's first real token. Inference only: the tensors are written in place.
    """

    keys: list[torch.Tensor]
    """Per layer, (B, H, capacity, D)."""
    values: list[torch.Tensor]
    """Per layer, (B, H, capacity, D)."""
    pad: torch.Tensor
    """(B,) leading padding columns of each row."""
    padded: bool
    """Whether any row has padding (kept as a Python bool so decoding steps need no device sync)."""
    length: int = 0
    """Columns filled so far; the next token goes to column `length`."""

    @classmethod
    def empty(cls, n_layer: int, shape: tuple[int, int, int, int], pad: torch.Tensor, dtype: torch.dtype) -> KVCache:
        """An empty cache of `n_layer` layers, each (B, H, capacity, D), on `pad`'s device."""
        keys = [torch.empty(shape, dtype=dtype, device=pad.device) for _ in range(n_layer)]
        values = [torch.empty(shape, dtype=dtype, device=pad.device) for _ in range(n_layer)]
        return cls(keys=keys, values=values, pad=pad, padded=bool(pad.any()))

    @property
    def capacity(self) -> int:
        return self.keys[0].size(2) if self.keys else 0


@dataclass
class Packing:
    """Where several examples share a row: each token's position within its example, and who may attend to whom."""

    positions: torch.Tensor
    """(B, T) position of each token counted from the start of its example."""
    mask: torch.Tensor
    """(B, 1, T, T) True where a query (row) may attend to a key (column): same example, and (causal) not later."""

    @classmethod
    def of(cls, segments: torch.Tensor, causal: bool) -> Packing:
        """From segments (B, T): equal numbers mark one example; an example's tokens are contiguous."""
        T = segments.size(1)
        index = torch.arange(T, device=segments.device)  # (T,)
        starts = torch.ones_like(segments, dtype=torch.bool)  # (B, T): True where an example begins
        starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
        first = torch.where(starts, index, 0).cummax(dim=1).values  # (B, T): where each token's example begins
        mask = segments[:, :, None] == segments[:, None, :]  # (B, T, T)
        if causal:
            mask = mask & torch.ones(T, T, dtype=torch.bool, device=segments.device).tril()
        return cls(positions=index - first, mask=mask[:, None])


class SelfAttention(nn.Module):
    """Multi-head self-attention through `scaled_dot_product_attention`; causal or bidirectional."""

    def __init__(self, config: TransformerConfig, causal: bool) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.causal = causal
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        head_dim = config.n_embd // config.n_head
        self.rotary = Rotary(head_dim, config.block_size) if config.pos_embedding == "rope" else None
        self.q_norm = nn.RMSNorm(head_dim) if config.qk_norm else None  # over each head's D, before rotary
        self.k_norm = nn.RMSNorm(head_dim) if config.qk_norm else None
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()  # (B, T, H, D) each
        self.hook_attn_scores = HookPoint()  # (B, H, T, T) scaled, masked (-inf) scores; computed only when hooked
        self.hook_pattern = HookPoint()  # (B, H, T, T) attention weights; computed only when hooked
        self.hook_z = HookPoint()  # (B, T, H, D) each head's weighted values, before the output projection

    def forward(
        self, x: torch.Tensor, key_padding: torch.Tensor | None = None, packed: Packing | None = None
    ) -> torch.Tensor:
        """x (B, T, C); key_padding (B, T) True where a token may be attended to (None = all); `packed`: several
        examples per row, each attending only within itself from positions that restart at 0."""
        B, T, C = x.shape
        q, k, v = self.heads(x)  # 3 × (B, H, T, D)
        if self.rotary is not None and packed is not None:
            q, k = self.rotary.at(q, packed.positions), self.rotary.at(k, packed.positions)
        elif self.rotary is not None:
            q, k = self.rotary(q), self.rotary(k)
        mask = None if key_padding is None else key_padding[:, None, None, :].bool()  # (B, 1, 1, T)
        if packed is not None:
            mask = packed.mask if mask is None else mask & packed.mask  # (B, 1, T, T), causal within a segment
        causal = self.causal and packed is None
        if self.hook_pattern.active or self.hook_attn_scores.active:
            y = self.explicit_attention(q, k, v, mask, causal)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, is_causal=causal
            )  # (B, H, T, D)
        y = self.hook_z(y.transpose(1, 2))  # (B, T, H, D)
        return self.resid_dropout(self.proj(y.contiguous().view(B, T, C)))

    def explicit_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool
    ) -> torch.Tensor:
        """What `scaled_dot_product_attention` computes, step by step, so the scores and the pattern pass through
        their hook points: q, k, v (B, H, T, D) -> (B, H, T, D)."""
        T = q.size(-2)
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, H, T, T)
        if causal:
            tril = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
            mask = tril if mask is None else mask & tril
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        pattern = self.hook_pattern(self.hook_attn_scores(scores).softmax(dim=-1))  # (B, H, T, T)
        return F.dropout(pattern, self.dropout, self.training) @ v

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values of x (B, T, C), split into heads (through hook_q/k/v): 3 × (B, H, T, D).

        With `qk_norm` the hooks see queries and keys after their norm (what rotary and attention use); every
        attention path (`forward`, `explicit_attention`, `forward_cached`) gets its q, k, v here, so all agree."""
        B, T, C = x.shape
        shape = (B, T, self.n_head, C // self.n_head)
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 × (B, T, C)
        q, k, v = q.view(shape), k.view(shape), v.view(shape)  # (B, T, H, D)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        hooks = (self.hook_q, self.hook_k, self.hook_v)
        q, k, v = (hook(t).transpose(1, 2) for hook, t in zip(hooks, (q, k, v), strict=True))
        return q, k, v

    def forward_cached(
        self,
        x: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        start: int,
        positions: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Attend from x (B, T, C), the tokens of columns start..start+T-1, to every column up to the last of them.

        Writes their keys and values into this layer's cache `keys`, `values` (B, H, capacity, D). `positions` (B, T)
        are the rotary positions; `mask` (B, 1, T, start+T) is True where a query may attend. `mask=None` means no
        padding and either one new token (it sees everything) or a prefill from column 0 (plain causal attention).
        """
        B, T, C = x.shape
        q, k, v = self.heads(x)  # 3 × (B, H, T, D)
        if self.rotary is not None:
            q, k = self.rotary.at(q, positions), self.rotary.at(k, positions)
        end = start + T
        keys[:, :, start:end] = k
        values[:, :, start:end] = v
        y = F.scaled_dot_product_attention(
            q, keys[:, :, :end], values[:, :, :end], attn_mask=mask, is_causal=mask is None and T > 1
        )  # (B, H, T, D)
        y = self.hook_z(y.transpose(1, 2))  # (B, T, H, D)
        return self.resid_dropout(self.proj(y.contiguous().view(B, T, C)))


def relu2(x: torch.Tensor) -> torch.Tensor:
    """relu(x)², the squared ReLU of Primer (So et al., 2021)."""
    return F.relu(x).square()


ACTIVATION_FUNCTIONS = {"gelu": F.gelu, "relu2": relu2}
"""`TransformerConfig.activation` -> the function."""


class MLP(nn.Module):
    """Two linear layers with the configured activation (GELU or relu²), 4× the residual width inside."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.act = ACTIVATION_FUNCTIONS[config.activation]
        self.hook_pre, self.hook_post = HookPoint(), HookPoint()  # (B, T, 4C): before and after the activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(self.hook_post(self.act(self.hook_pre(self.fc(x))))))


class Block(nn.Module):
    """Pre-norm Transformer block: x + attn(norm(x)), then x + mlp(norm(x)).

    Hook points see the residual stream (B, T, C) before the block, between its halves and after it, and what each
    half adds to it; they are registered in forward order, which `lmlab.interp` lists names in.
    """

    def __init__(self, config: TransformerConfig, causal: bool) -> None:
        super().__init__()
        self.hook_resid_pre = HookPoint()
        self.ln_1 = make_norm(config)
        self.attn = SelfAttention(config, causal)
        self.hook_attn_out, self.hook_resid_mid = HookPoint(), HookPoint()
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)
        self.hook_mlp_out, self.hook_resid_post = HookPoint(), HookPoint()

    def forward(
        self, x: torch.Tensor, key_padding: torch.Tensor | None = None, packed: Packing | None = None
    ) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(x + self.hook_attn_out(self.attn(self.ln_1(x), key_padding, packed)))
        return self.hook_resid_post(x + self.hook_mlp_out(self.mlp(self.ln_2(x))))

    def forward_cached(
        self,
        x: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        start: int,
        positions: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """`forward` for new tokens only, reading and extending this layer's KV cache (see `SelfAttention`); the
        residual hook points see the new tokens (steering during generation hooks here)."""
        x = self.hook_resid_pre(x)
        attn_out = self.attn.forward_cached(self.ln_1(x), keys, values, start, positions, mask)
        x = self.hook_resid_mid(x + self.hook_attn_out(attn_out))
        return self.hook_resid_post(x + self.hook_mlp_out(self.mlp(self.ln_2(x))))


def init_gpt2_weights(model: nn.Module, n_layer: int) -> None:
    """GPT-2 init: N(0, 0.02) for linear and embedding weights, zero biases, and residual projections scaled by
    1/sqrt(2 * n_layer) so the residual stream's variance does not grow with depth."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
    for name, param in model.named_parameters():
        if name.endswith(("attn.proj.weight", "mlp.proj.weight")):
            nn.init.normal_(param, mean=0.0, std=0.02 / (2 * n_layer) ** 0.5)


class TransformerBody(nn.Module):
    """Token (+ learned position) embeddings -> `n_layer` pre-norm blocks -> final norm: the body GPT and BERT share.

    Subclasses add their head on top of `hidden_states` in their own `forward`. Hook points (`HookPoint`) carry
    TransformerLens's names as their module paths: `hook_embed`, `hook_pos_embed`, `blocks.{i}.hook_resid_pre`, ...,
    `blocks.{i}.attn.hook_pattern`, `blocks.{i}.mlp.hook_post`, `ln_final.hook_normalized`.
    """

    def __init__(self, config: TransformerConfig, causal: bool) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd) if config.pos_embedding == "learned" else None
        self.hook_embed, self.hook_pos_embed = HookPoint(), HookPoint()  # (B, T, C) token and position embeddings
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, causal) for _ in range(config.n_layer))
        self.ln_f = make_norm(config)
        self.ln_final = nn.ModuleDict({"hook_normalized": HookPoint()})  # (B, T, C) ln_f before its gain, as in TL
        name_hook_points(self)

    def embed(self, idx: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Token embeddings (+ the learned position table at `positions`, (T,) or (B, T)) of ids (B, T) -> (B, T, C)."""
        x = self.hook_embed(self.wte(idx))  # (B, T, C)
        if self.wpe is not None:
            x = x + self.hook_pos_embed(self.wpe(positions))
        return self.drop(x)

    def hidden_states(
        self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None, segments: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Final normalised hidden states (B, T, C) of ids (B, T); `attention_mask` (B, T) is 1 for real tokens, 0
        for padding (keys that no query attends to); `segments` (B, T) numbers the examples packed into each row:
        a token attends only within its example, and positions restart at each (None: one sequence per row)."""
        T = idx.size(1)
        if self.config.block_size < T:
            raise LmlabError(f"input of {T} tokens is longer than model.block_size={self.config.block_size}")
        packed = None if segments is None else Packing.of(segments, causal=self.blocks[0].attn.causal)
        x = self.embed(idx, torch.arange(T, device=idx.device) if packed is None else packed.positions)
        recompute = self.config.activation_checkpointing and torch.is_grad_enabled()
        for block in self.blocks:  # recompute: keep only each block's input; dropout replays its saved RNG state
            if recompute:
                x = checkpoint(block, x, attention_mask, packed, use_reentrant=False)
            else:
                x = block(x, attention_mask, packed)
        return self.final_norm(x)

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        """The last norm of the stack (B, T, C) -> (B, T, C). While `ln_final.hook_normalized` is hooked, it is
        computed in two steps so the hook sees what TransformerLens's does: normalised, before the gain and bias."""
        hook = self.ln_final["hook_normalized"]
        if not hook.active:
            return self.ln_f(x)
        norm = self.ln_f
        if isinstance(norm, nn.RMSNorm):
            eps = norm.eps if norm.eps is not None else torch.finfo(x.dtype).eps
            normalized = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        else:
            normalized = F.layer_norm(x, norm.normalized_shape, eps=norm.eps)
        y = hook(normalized) * norm.weight
        return y + norm.bias if getattr(norm, "bias", None) is not None else y
