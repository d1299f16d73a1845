"""Tiny Hugging Face artefacts on disk: a random Llama hub folder, a JSON Lines dataset folder."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lmlab.tokenizers import BPETokenizerConfig

ROWS = [f"row {i}: a short document {'with more words ' * (i % 3)}" for i in range(60)]


def save_tiny_causal(folder: Path, text: str, positions: int = 64) -> Path:
    """A tiny random Llama with a byte-level BPE `tokenizer.json` (300 ids; the model embeds 320), as a hub folder;
    `positions`: its context limit."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    if (folder / "config.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(BPETokenizerConfig(vocab_size=300).train([text]).tokenizer_json)
    config = LlamaConfig(
        vocab_size=320, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=positions, tie_word_embeddings=True, bos_token_id=None, eos_token_id=0,
        pad_token_id=None,
    )  # fmt: skip
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


CHAT_TEMPLATE = (
    "{% for m in messages %}<pad>{{ m['role'] }}\n{{ m['content'] }}<|endoftext|>{% endfor %}"
    "{% if add_generation_prompt %}<pad>assistant\n{% endif %}"
)
"""A chat template in the special tokens of `save_tiny_causal`'s tokenizer (SmolLM2's shape: role, newline, text)."""


def save_tiny_chat_causal(folder: Path, text: str, positions: int = 64) -> Path:
    """`save_tiny_causal` with a chat template beside its tokenizer (a stand-in for an instruct model)."""
    save_tiny_causal(folder, text, positions)
    settings = {"chat_template": CHAT_TEMPLATE, "eos_token": "<|endoftext|>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(settings), encoding="utf-8")
    return folder


def jsonl_folder(folder: Path, rows: list[str] = ROWS, column: str = "text") -> Path:
    """A folder holding one JSON Lines data file, as `datasets.load_dataset(folder)` reads it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_text("".join(json.dumps({column: r, "id": i}) + "\n" for i, r in enumerate(rows)))
    return folder
