"""The overrides each config option needs to form a valid run (used by the every-option and every-model tests)."""

from __future__ import annotations

from pathlib import Path

from lmlab.tokenizers import BPETokenizerConfig
from tests.helpers.bible import require_bible
from tests.helpers.classification import classification_companions
from tests.helpers.hf import jsonl_folder, save_tiny_causal
from tests.helpers.sft import TINY_SFT, chat_jsonl

ENCODER = ["model=bert", "task=masked_lm", "tokenizer.special_tokens=['<mask>']"]


def companions(group: str, option: str, tmp_path: Path, corpus: Path) -> list[str]:
    """Overrides an option needs to form a valid run: an encoder with its objective, a tokenizer file, ..."""
    if (group, option) in {("model", "bert"), ("task", "masked_lm")}:
        return ENCODER
    labeled = classification_companions(group, option, tmp_path, corpus)  # labeled data, tiny HF BERT, ...
    if labeled is not None:
        return labeled
    if (group, option) in {("model", "hf_causal"), ("experiment", "smollm2_shakespeare")}:
        folder = save_tiny_causal(tmp_path / "tiny_causal", corpus.read_text())  # a tiny random Llama, not SmolLM2
        return ["model=hf_causal", f"model.name_or_path={folder}", "tokenizer=hf", f"tokenizer.name_or_path={folder}"]
    if (group, option) == ("task", "sft"):
        return TINY_SFT[1:]  # in-memory conversations
    if (group, option) == ("data", "chat_jsonl"):
        return ["task=sft", f"data.source.train={chat_jsonl(tmp_path / 'chats.jsonl')}"]
    if (group, option) == ("data", "chatterbot"):
        return ["task=sft"]
    if (group, option) == ("data", "bible_parallel"):
        require_bible()  # skips, naming the apt-get / pip command, where the Bibles are not installed
        return ["task=sft", "data.source.max_pairs=64", "model.block_size=256"]  # verses are ~130 characters
    if (group, option) == ("data", "hf_dataset"):
        return [f"data.corpus.path={jsonl_folder(tmp_path / 'dataset', corpus.read_text().splitlines())}"]
    if (group, option) == ("tokenizer", "hf"):
        path = tmp_path / "tokenizer.json"
        path.write_text(BPETokenizerConfig(vocab_size=300).train([corpus.read_text()]).tokenizer_json)
        return [f"tokenizer.name_or_path={path}"]
    return []
