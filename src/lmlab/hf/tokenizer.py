"""lmlab tokenizers as Hugging Face tokenizer folders (`tokenizer.json` + `tokenizer_config.json`).

The character tokenizer becomes a WordLevel model over its alphabet behind a pre-tokenizer that isolates every
character and a decoder that joins them without spaces; BPE and pretrained tokenizers already are tokenizers JSON.
Special tokens are declared by role (mask, pad, eos, ...). `split_special_tokens` is set because lmlab encodes the
text of a special token (e.g. `<mask>` typed in a document) as ordinary text, never as the special id.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from lmlab.errors import LmlabError
from lmlab.tokenizers import CharTokenizer, Tokenizer
from lmlab.tokenizers.char import UNKNOWN

_HF_ROLES = ("mask", "pad", "bos", "eos", "unk", "cls", "sep")
"""lmlab's special-token roles that Transformers tokenizers name `<role>_token`."""


def tokenizer_json(tokenizer: Tokenizer) -> str:
    """The tokenizers-library JSON that encodes text to the same ids as `tokenizer`."""
    if isinstance(tokenizer, CharTokenizer):
        return _char_tokenizer_json(tokenizer)
    text = getattr(tokenizer, "tokenizer_json", None)
    if not text:
        raise LmlabError(f"a {tokenizer.kind!r} tokenizer cannot be exported; train with tokenizer=char|bpe|hf")
    return text


def _char_tokenizer_json(tokenizer: CharTokenizer) -> str:
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as Backend

    vocab = {c: i for i, c in enumerate(tokenizer.chars)}
    vocab.update({t: len(tokenizer.chars) + i for i, t in enumerate(tokenizer.special_tokens)})
    backend = Backend(models.WordLevel(vocab, unk_token=UNKNOWN))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one piece per character
    backend.decoder = decoders.Fuse()  # join without spaces
    backend.add_special_tokens(tokenizer.special_tokens)
    return backend.to_str()


def special_tokens(tokenizer: Tokenizer) -> dict[str, str]:
    """`{"eos_token": "<|endoftext|>", ...}` for the special tokens the tokenizer has (not the char `unk`, which is
    the ordinary character U+FFFD)."""
    tokens = {}
    for role, token_id in tokenizer.special_ids().items():
        if role in _HF_ROLES and not (isinstance(tokenizer, CharTokenizer) and role == "unk"):
            tokens[f"{role}_token"] = tokenizer.decode([token_id])
    return tokens


def save_hf_tokenizer(tokenizer: Tokenizer, folder: Path, model_max_length: int) -> None:
    """Write `tokenizer.json` and `tokenizer_config.json` that `AutoTokenizer.from_pretrained(folder)` reads."""
    from tokenizers import Tokenizer as Backend
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=Backend.from_str(tokenizer_json(tokenizer)),
        clean_up_tokenization_spaces=False,
        split_special_tokens=True,
        model_max_length=model_max_length,
        **special_tokens(tokenizer),
    )
    fast.save_pretrained(str(folder))
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"  # the name every transformers version knows
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def vocabulary_probe_text(tokenizer: Tokenizer, seed: int = 0) -> str:
    """Text that exercises the vocabulary: every non-special token, shuffled, plus characters it may not know."""
    special = set(tokenizer.special_ids().values()) - {tokenizer.special_ids().get("unk", -1)}
    ids = [i for i in range(tokenizer.vocab_size) if i not in special]
    random.Random(seed).shuffle(ids)
    pieces = [tokenizer.decode([i]) for i in ids]
    return "".join(pieces) + " \n\n  Hello, world! ü 中文 🙂 <mask> <|endoftext|>"


def check_hf_tokenizer(tokenizer: Tokenizer, folder: Path) -> None:
    """Refuse an exported tokenizer whose ids or decoded text differ from lmlab's."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    text = vocabulary_probe_text(tokenizer)
    ids = tokenizer.encode(text)
    if hf(text, add_special_tokens=False, verbose=False)["input_ids"] != ids:  # verbose: no "longer than max" note
        raise LmlabError(f"the exported tokenizer in {folder} encodes differently from lmlab's; this is a bug")
    if hf.decode(ids) != tokenizer.decode(ids):
        raise LmlabError(f"the exported tokenizer in {folder} decodes differently from lmlab's; this is a bug")
