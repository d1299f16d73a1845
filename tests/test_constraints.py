"""Constrained decoding: untrained models whose every continuation matches a regex or a JSON schema (char, BPE and a
pretrained byte-level tokenizer), the end token, the token budget, and one-line errors."""

from __future__ import annotations

import json
import re
import string

import jsonschema
import pytest
import torch

from lmlab.errors import LmlabError
from lmlab.generation import GenerationConfig, SamplingOptions, generate_text
from lmlab.generation.constraints import TokenConstraint, schema_regex
from lmlab.models import GPT, GPTConfig
from lmlab.tokenizers import BPETokenizerConfig, CharTokenizerConfig, Tokenizer

TEXT = string.printable * 3 + "名前は東京です。"  # every ASCII character JSON needs, and some that UTF-8 splits
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}},
        "ok": {"type": "boolean"},
    },
    "required": ["name", "age", "ok"],
}
PROMPTS = ["{", "the answer is ", "x", "\n"]


def untrained(tokenizer: Tokenizer, block_size: int = 64) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=block_size, n_layer=1, n_head=2, n_embd=16)
    return GPT(config).eval()


def char_tokenizer() -> Tokenizer:
    return CharTokenizerConfig().train([TEXT])


def bpe_tokenizer() -> Tokenizer:
    return BPETokenizerConfig(vocab_size=300).train([TEXT * 4, "the name is Anna and the age is 42 " * 20])


def sample(tokenizer: Tokenizer, n: int = 50, **constraint: object) -> list[str]:
    """`n` continuations (temperature 1, sampled from an untrained GPT) under the constraint."""
    model = untrained(tokenizer)
    per_prompt = n // len(PROMPTS) + 1
    config = GenerationConfig(max_new_tokens=48, sampling=SamplingOptions(temperature=1.0), num_samples=per_prompt,
                              seed=3, **constraint)  # fmt: skip
    completions = generate_text(model, tokenizer, PROMPTS, config, block_size=64)
    return [c.text for c in completions][:n]


@pytest.mark.parametrize("make_tokenizer", [char_tokenizer, bpe_tokenizer], ids=["char", "bpe"])
def test_every_sample_matches_the_regex(make_tokenizer) -> None:
    pattern = r"(yes|no), [0-9]{2,4}( [a-z]+)*\."
    texts = sample(make_tokenizer(), regex=pattern)
    assert len(texts) == 50
    assert all(re.fullmatch(pattern, t) for t in texts), [t for t in texts if not re.fullmatch(pattern, t)]
    assert len(set(texts)) > 10  # sampling still samples: the constraint only removes what would break the match


@pytest.mark.parametrize("make_tokenizer", [char_tokenizer, bpe_tokenizer], ids=["char", "bpe"])
def test_every_sample_is_valid_json_under_the_schema(make_tokenizer) -> None:
    texts = sample(make_tokenizer(), json_schema=SCHEMA)
    for text in texts:
        jsonschema.validate(json.loads(text), SCHEMA)  # raises on the first invalid one
    assert len(texts) == 50


def test_pretrained_byte_level_tokenizer_follows_the_schema(tmp_path) -> None:
    """A Hugging Face tokenizer with an end-of-sequence token: a row may end as soon as its JSON is complete."""
    from lmlab.tokenizers import HFTokenizerConfig
    from tests.helpers.hf import save_tiny_causal

    folder = save_tiny_causal(tmp_path / "hf", TEXT * 4)
    tokenizer = HFTokenizerConfig(name_or_path=str(folder)).load()
    assert tokenizer.special_ids().get("eos") is not None
    texts = sample(tokenizer, n=20, json_schema=SCHEMA)
    for text in texts:
        jsonschema.validate(json.loads(text), SCHEMA)


def test_the_budget_closes_an_open_match_in_time() -> None:
    """An unbounded string must still close: with 12 tokens `"` is forced once only the closing quote fits."""
    tokenizer = char_tokenizer()
    model = untrained(tokenizer)
    config = GenerationConfig(max_new_tokens=12, sampling=SamplingOptions(temperature=1.0), num_samples=20,
                              regex=r'"[a-z ]*"')  # fmt: skip
    texts = [c.text for c in generate_text(model, tokenizer, ["x"], config, block_size=64)]
    assert all(re.fullmatch(r'"[a-z ]*"', t) and len(t) <= 12 for t in texts)
    assert max(len(t) for t in texts) == 12  # an untrained model would run on: it is closed at the last token


def test_a_complete_match_that_cannot_grow_ends_the_row_early() -> None:
    tokenizer = char_tokenizer()
    config = GenerationConfig(max_new_tokens=30, sampling=SamplingOptions(temperature=0), regex="[0-9]{3}")
    (completion,) = generate_text(untrained(tokenizer), tokenizer, ["n="], config, block_size=64)
    assert re.fullmatch("[0-9]{3}", completion.text) and completion.num_tokens == 3


def test_greedy_constrained_picks_the_most_likely_allowed_token() -> None:
    tokenizer = char_tokenizer()
    model = untrained(tokenizer)
    config = GenerationConfig(max_new_tokens=1, sampling=SamplingOptions(temperature=0), regex="[ab]")
    (completion,) = generate_text(model, tokenizer, ["q"], config, block_size=64)
    logits = model(torch.tensor([tokenizer.encode("q")]))[0, -1]
    a, b = tokenizer.encode("ab")
    assert completion.text == ("a" if logits[a] >= logits[b] else "b")


def test_schema_regex_accepts_a_file_and_inline_json(tmp_path) -> None:
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(SCHEMA))
    assert schema_regex(str(path)) == schema_regex(json.dumps(SCHEMA)) == schema_regex(SCHEMA)


@pytest.mark.parametrize(
    ("constraint", "message"),
    [
        ({"regex": "("}, "not a valid regular expression"),
        ({"regex": ""}, "regex is empty"),
        ({"regex": "a", "json_schema": {"type": "integer"}}, "not both"),
        ({"json_schema": {"type": "bogus"}}, "not a schema lmlab can follow"),
        ({"json_schema": "missing.json"}, "neither a JSON object nor a file"),
    ],
)
def test_bad_patterns_are_refused_before_generating(constraint: dict, message: str) -> None:
    with pytest.raises(LmlabError, match=message):
        GenerationConfig(**constraint)


def test_a_pattern_the_tokenizer_cannot_write_is_refused() -> None:
    with pytest.raises(LmlabError, match="cannot be followed with this tokenizer"):
        TokenConstraint("[€]+", char_tokenizer())


def test_a_budget_too_small_for_the_pattern_is_refused() -> None:
    tokenizer = char_tokenizer()
    config = GenerationConfig(max_new_tokens=3, regex="[0-9]{5}")
    with pytest.raises(LmlabError, match="needs at least 5 tokens but max_new_tokens=3"):
        generate_text(untrained(tokenizer), tokenizer, ["n="], config, block_size=64)


# --- from the command line -----------------------------------------------------------------------------------------


def cli_base(tmp_path) -> list[str]:
    """A tiny untrained GPT checkpoint (char tokenizer of TINY_TEXT), sampled hot."""
    from tests.helpers.classification import fake_lm_checkpoint
    from tests.helpers.compose import TINY_TEXT

    ckpt = fake_lm_checkpoint(tmp_path / "lm.ckpt", TINY_TEXT + '0123456789{}[]:,"')
    return [f"ckpt={ckpt}", "prompt=First", "max_new_tokens=40", "temperature=1.5", "device=cpu", "stream=false",
            "num_samples=10"]  # fmt: skip


def test_generate_follows_a_regex_and_a_schema_file_from_the_command_line(tmp_path) -> None:
    from lmlab.cli import generate as generate_cli
    from tests.helpers.compose import command

    completions = generate_cli.generate(command("generate", [*cli_base(tmp_path), "regex='(yes|no) [0-9]+'"]))
    assert len(completions) == 10 and all(re.fullmatch("(yes|no) [0-9]+", c.text) for c in completions)
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    overrides = [*cli_base(tmp_path), f"json_schema={tmp_path / 'schema.json'}"]
    for completion in generate_cli.generate(command("generate", overrides)):
        jsonschema.validate(json.loads(completion.text), schema)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("regex='[0-9'", "is not a valid regular expression"),
        ("regex='€+'", "cannot be followed with this tokenizer"),
        ("json_schema=nope.json", "neither a JSON object nor a file"),
    ],
)
def test_bad_constraints_are_one_line_errors(tmp_path, capsys, override: str, message: str) -> None:
    from lmlab.cli import generate as generate_cli
    from tests.helpers.cli import one_line_error
    from tests.helpers.compose import command

    assert message in one_line_error(generate_cli.generate, command("generate", [*cli_base(tmp_path), override]),
                                     capsys)  # fmt: skip


@pytest.mark.slow
def test_cli_generate_with_an_inline_schema(tmp_path) -> None:
    from tests.helpers.cli import run_cli

    schema = 'json_schema=\'{"type": "array", "items": {"type": "integer"}, "minItems": 2}\''
    result = run_cli("generate", *cli_base(tmp_path), "num_samples=1", "temperature=0", schema, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    values = json.loads(result.stdout.removeprefix("First").strip())
    assert isinstance(values, list) and len(values) >= 2 and all(isinstance(v, int) for v in values)
