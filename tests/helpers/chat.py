"""A tiny word-level HF tokenizer with a handwritten chat template, and tiny GPT checkpoints that use it."""

from __future__ import annotations

from pathlib import Path

import torch

from lmlab.models import GPT, GPTConfig, model_config_to_dict
from lmlab.tokenizers import HFTokenizer

TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system turns') }}{% endif %}"
    "<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|>{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
)
"""Refuses system turns, so tests see a template's own error."""
SYSTEM_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|>{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
)
"""The same markup, system turns allowed."""
TOKENS = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}
WORDS = ["user", "assistant", "hi", "there", "how", "are", "you", "?", "system"]


def tiny_json() -> str:
    """A word-level tokenizer: [UNK], <|im_start|>, <|im_end|>, then WORDS."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["[UNK]", "<|im_start|>", "<|im_end|>", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    return backend.to_str()


def chat_tokenizer(template: str = TEMPLATE) -> HFTokenizer:
    return HFTokenizer(tiny_json(), template, TOKENS)


def tiny_chat_gpt(tokenizer: HFTokenizer, block_size: int = 32, ends_turn: bool = True) -> tuple[GPT, GPTConfig]:
    """A one-layer GPT for `tokenizer`. `ends_turn`: its greedy choice is always the end-of-turn token (the final
    norm outputs a multiple of that token's embedding); otherwise its weights are random (seed 0)."""
    vocab_size = tokenizer.vocab_size
    config = GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=1, n_head=2, n_embd=16, bias=True)
    torch.manual_seed(0)
    model = GPT(config)
    if ends_turn:
        with torch.no_grad():
            eos = tokenizer.tokenizer.token_to_id(TOKENS["eos_token"])
            model.wte.weight[eos] *= 5
            model.ln_f.weight.zero_()
            model.ln_f.bias.copy_(model.wte.weight[eos])
    return model, config


def write_chat_checkpoint(
    path: Path, template: str | None = TEMPLATE, ends_turn: bool = True, run_config: dict | None = None
) -> Path:
    """A tiny GPT checkpoint whose tokenizer has `template` (None: no template); see `tiny_chat_gpt`."""
    tokenizer = HFTokenizer(tiny_json(), template, TOKENS)
    model, config = tiny_chat_gpt(tokenizer, ends_turn=ends_turn)
    checkpoint = {
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "hyper_parameters": {"model": model_config_to_dict(config)},
        "lmlab": {"tokenizer": tokenizer.to_dict(), "config": run_config or {}},
        "global_step": 0,
    }
    torch.save(checkpoint, path)
    return path
