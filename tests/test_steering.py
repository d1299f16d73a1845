"""Activation steering: the contrast vector is a difference of means, steering adds exactly coeff * vector at the hook
on every position (prefill and KV-cached steps), coeff=0 changes nothing, files round-trip, bad input is refused;
`lmlab steer` and `lmlab generate/chat steer.vector=...` on tiny checkpoints."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from lmlab.cli import chat as chat_cli
from lmlab.cli import generate as generate_cli
from lmlab.cli.steer import steer
from lmlab.errors import LmlabError
from lmlab.generation import GenerationConfig, SamplingOptions, generate_text
from lmlab.interp import run_with_cache
from lmlab.interp.steering import SteeringVector, contrast_vector, steering
from lmlab.models import build_model
from lmlab.models.bert import BertConfig
from lmlab.models.gpt import GPT, GPTConfig
from lmlab.models.lstm import LSTMConfig
from lmlab.models.ngram import NGramConfig
from lmlab.tokenizers import CharTokenizerConfig, Tokenizer
from tests.helpers.chat import SYSTEM_TEMPLATE, write_chat_checkpoint
from tests.helpers.classification import fake_lm_checkpoint, write_jsonl
from tests.helpers.cli import one_line_error, run_cli
from tests.helpers.compose import TINY_TEXT, command
from tests.helpers.interp import ngram_checkpoint, train_tiny

TOKENIZER = CharTokenizerConfig([]).train(["abcdefghijklmnopqrstuvwxyz .,:\n"])
POSITIVE = ["a good day", "fine and kind", "so good"]
NEGATIVE = ["a bad night, awful", "dull"]
PROMPTS = ["the day", "a"]  # of different lengths: the batch is left-padded
GREEDY = GenerationConfig(max_new_tokens=24, sampling=SamplingOptions(temperature=0.0))


def tiny_gpt(n_embd: int = 16) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=TOKENIZER.vocab_size, block_size=32, n_layer=3, n_head=2, n_embd=n_embd)).eval()


def random_vector(layer: int = 1, width: int = 16) -> SteeringVector:
    vector = torch.randn(width, generator=torch.Generator().manual_seed(7))
    return SteeringVector(vector, layer, f"blocks.{layer}.hook_resid_pre")


def texts(model: nn.Module, tokenizer: Tokenizer, config: GenerationConfig = GREEDY, **changes: object) -> list[str]:
    config = dataclasses.replace(config, **changes)
    return [c.text for c in generate_text(model, tokenizer, PROMPTS, config, model.config.block_size)]


# --- the vector ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("position", ["mean", "last"])
def test_contrast_vector_is_the_difference_of_the_mean_activations(position: str) -> None:
    model = tiny_gpt()
    found = contrast_vector(model, TOKENIZER, POSITIVE, NEGATIVE, layer=2, position=position, batch_size=2)

    def side(texts: list[str]) -> tuple[torch.Tensor, list[torch.Tensor]]:  # one text at a time, no padding
        rows, norms = [], []
        for text in texts:
            _, cache = run_with_cache(model, torch.tensor([TOKENIZER.encode(text)]), names="blocks.2.hook_resid_pre")
            acts = cache["blocks.2.hook_resid_pre"][0]  # (T, C)
            rows.append(acts.mean(0) if position == "mean" else acts[-1])
            norms.append(acts.norm(dim=-1))  # (T,)
        return torch.stack(rows).mean(0), norms

    (pos, pos_norms), (neg, neg_norms) = side(POSITIVE), side(NEGATIVE)
    assert found.vector.shape == (16,) and found.vector.dtype == torch.float32
    assert torch.allclose(found.vector, pos - neg, atol=1e-6)
    assert (found.layer, found.hook, found.position) == (2, "blocks.2.hook_resid_pre", position)
    assert (found.n_positive, found.n_negative) == (3, 2)
    assert found.resid_norm == pytest.approx(float(torch.cat(pos_norms + neg_norms).mean()), rel=1e-5)


def test_save_and_load_round_trip_the_tensor_bit_for_bit_and_the_metadata(tmp_path: Path) -> None:
    made = contrast_vector(tiny_gpt(), TOKENIZER, POSITIVE, NEGATIVE, layer=1, position="last")
    made.source, made.texts = "outputs/x/checkpoints/last.ckpt", "positive=[...] minus negative=[...]"
    path = made.save(tmp_path / "sub" / "v.safetensors")
    loaded = SteeringVector.load(path)
    assert torch.equal(loaded.vector, made.vector) and loaded.vector.dtype == made.vector.dtype
    assert loaded.header() == made.header() and loaded.layer == 1 and loaded.n_negative == 2  # and typed
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as file:
        assert file.metadata()["hook"] == "blocks.1.hook_resid_pre" and list(file.keys()) == ["vector"]
    assert math.isnan(SteeringVector.load(random_vector().save(tmp_path / "r.safetensors")).resid_norm)


def test_a_file_that_is_not_a_vector_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(LmlabError, match=r"nope\.safetensors does not exist; make one with lmlab steer"):
        SteeringVector.load(tmp_path / "nope.safetensors")
    (tmp_path / "text.safetensors").write_text("hello", encoding="utf-8")
    with pytest.raises(LmlabError, match=r"text\.safetensors is not a safetensors file"):
        SteeringVector.load(tmp_path / "text.safetensors")
    from safetensors.torch import save_file

    save_file({"weights": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(LmlabError, match=r"other\.safetensors is not an lmlab steering vector"):
        SteeringVector.load(tmp_path / "other.safetensors")


# --- steering --------------------------------------------------------------------------------------------------------


def test_coeff_zero_leaves_greedy_output_unchanged_with_and_without_the_cache() -> None:
    model, vector = tiny_gpt(), random_vector()
    for use_cache in (True, False):
        plain = texts(model, TOKENIZER, use_cache=use_cache)
        with steering(model, vector, 0.0):
            assert texts(model, TOKENIZER, use_cache=use_cache) == plain
        with steering(model, vector, 30.0):
            assert texts(model, TOKENIZER, use_cache=use_cache) != plain  # the hook is there and acts
        assert texts(model, TOKENIZER, use_cache=use_cache) == plain  # and is gone afterwards


def test_steering_adds_coeff_times_vector_at_the_hook_on_every_position() -> None:
    model, vector = tiny_gpt(), random_vector(layer=1)
    ids = torch.tensor([TOKENIZER.encode("a good day and more")])
    names = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"]
    _, plain = run_with_cache(model, ids, names=names)
    with steering(model, vector, 2.5):
        _, steered = run_with_cache(model, ids, names=names)
    assert torch.allclose(steered["blocks.1.hook_resid_pre"] - plain["blocks.1.hook_resid_pre"],
                          (2.5 * vector.vector).expand(1, ids.size(1), -1), atol=1e-6)  # fmt: skip
    assert torch.equal(steered["blocks.0.hook_resid_post"], plain["blocks.0.hook_resid_post"])  # before: untouched
    assert not torch.allclose(steered["blocks.1.hook_resid_post"], plain["blocks.1.hook_resid_post"])  # after: moved
    with steering(model, vector, 2.5, layer=2):  # moved to another block
        _, elsewhere = run_with_cache(model, ids, names=names)
    assert torch.equal(elsewhere["blocks.1.hook_resid_post"], plain["blocks.1.hook_resid_post"])


def test_kv_cached_steps_are_steered_like_the_whole_sequence() -> None:
    model, vector = tiny_gpt(), random_vector(layer=1)
    ids = torch.tensor([TOKENIZER.encode("a good day and more")])  # (1, 18)
    with torch.no_grad(), steering(model, vector, 3.0):
        whole = model(ids)
        cache = model.new_cache(1)
        prefill, cache = model.forward_cached(ids[:, :10], cache)
        steps = [model.forward_cached(ids[:, t : t + 1], cache)[0] for t in range(10, ids.size(1))]
    assert torch.allclose(torch.cat([prefill, *steps], dim=1), whole, atol=1e-5)
    with steering(model, vector, 3.0):
        assert texts(model, TOKENIZER, use_cache=True) == texts(model, TOKENIZER, use_cache=False)


def test_hf_causal_is_steered_through_its_decoder_layers(tmp_path: Path) -> None:
    from lmlab.models import HFCausal, HFCausalConfig
    from lmlab.tokenizers import HFTokenizerConfig
    from tests.helpers.hf import save_tiny_causal

    folder = save_tiny_causal(tmp_path / "tiny_causal", TINY_TEXT)
    model = HFCausal(HFCausalConfig(name_or_path=str(folder), block_size=48)).eval()
    tokenizer = HFTokenizerConfig(str(folder)).load()
    made = contrast_vector(model, tokenizer, ["First Citizen", "All"], ["Speak, speak", "hear me"], layer=1)
    assert made.vector.shape == (16,) and made.hook == "blocks.1.hook_resid_pre"
    ids = torch.tensor([tokenizer.encode("Before we proceed any further")])
    _, plain = run_with_cache(model, ids, names=["blocks.1.hook_resid_pre"])
    vector = random_vector()
    with steering(model, vector, 2.0):
        _, steered = run_with_cache(model, ids, names=["blocks.1.hook_resid_pre"])
    shift = steered["blocks.1.hook_resid_pre"] - plain["blocks.1.hook_resid_pre"]
    assert torch.allclose(shift, (2.0 * vector.vector).expand_as(shift), atol=1e-5)
    config = GenerationConfig(max_new_tokens=12, sampling=SamplingOptions(temperature=0.0))
    plain_text = texts(model, tokenizer, config)
    with steering(model, vector, 0.0):
        assert texts(model, tokenizer, config) == plain_text
    with steering(model, vector, 40.0):
        cached = texts(model, tokenizer, config, use_cache=True)
        assert cached == texts(model, tokenizer, config, use_cache=False) and cached != plain_text


# --- bad input -------------------------------------------------------------------------------------------------------


def test_a_vector_of_the_wrong_width_names_both_widths() -> None:
    with (
        pytest.raises(LmlabError, match=r"vector is 8 wide but this model's residual stream is 16 wide; build"),
        steering(tiny_gpt(), random_vector(width=8), 1.0),
    ):
        pass


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m: steering(m, random_vector(), 1.0, layer=3).__enter__(), r"layer 3 is out of .* 3 blocks: .*0\.\.2"),
        (lambda m: steering(m, random_vector(layer=-1), 1.0).__enter__(), r"steering layer -1 is out of range"),
        (lambda m: steering(m, random_vector(), math.inf).__enter__(), r"coefficient inf is not a finite number"),
        (lambda m: steering(m, random_vector(), math.nan).__enter__(), r"coefficient nan is not a finite number"),
        (lambda m: contrast_vector(m, TOKENIZER, [], NEGATIVE, 1), r"the positive texts are empty; give at least one"),
        (lambda m: contrast_vector(m, TOKENIZER, POSITIVE, [], 1), r"the negative texts are empty"),
        (lambda m: contrast_vector(m, TOKENIZER, POSITIVE, ["", "x"], 1), r"negative text 1 \(''\) has no tokens"),
        (lambda m: contrast_vector(m, TOKENIZER, POSITIVE, NEGATIVE, 5), r"steering layer 5 is out of range"),
        (lambda m: contrast_vector(m, TOKENIZER, POSITIVE, NEGATIVE, 1, "first"), r"position='first' is unknown"),
    ],
)
def test_bad_layers_coefficients_and_text_sets_are_refused(call, message: str) -> None:
    with pytest.raises(LmlabError, match=message):
        call(tiny_gpt())


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (NGramConfig(vocab_size=30, order=2), r"adds to the residual stream, which a ngram model has not; use a gpt"),
        (LSTMConfig(vocab_size=30, n_layer=1, n_embd=16, n_hidden=16), r"which a lstm model has not"),
        (BertConfig(vocab_size=30, n_layer=1, n_head=2, n_embd=16), r"which a bert model \(an encoder\) does not"),
    ],
)
def test_models_without_a_steerable_residual_stream_are_refused(config, message: str) -> None:
    model = build_model(config)
    with pytest.raises(LmlabError, match=message), steering(model, random_vector(), 1.0):
        pass
    with pytest.raises(LmlabError, match=message):
        contrast_vector(model, TOKENIZER, POSITIVE, NEGATIVE, 0)


# --- the commands ----------------------------------------------------------------------------------------------------


@pytest.fixture
def lm(tmp_path: Path) -> Path:
    """A tiny GPT checkpoint (one block, 16 wide) inside a run folder's checkpoints/."""
    return fake_lm_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt", TINY_TEXT, block_size=32)


def steer_cfg(ckpt: Path, *overrides: str):
    return command("steer", [f"ckpt={ckpt}", "device=cpu", *overrides])


def test_steer_command_writes_the_vector_beside_the_run_and_generate_adds_it(lm: Path, tmp_path, capsys) -> None:
    made = steer(steer_cfg(lm, "positive=[First Citizen,All]", "negative=['Speak, speak',hear me]"))
    out = tmp_path / "run" / "steering" / "layer0.safetensors"  # one block: the middle one is 0
    printed = capsys.readouterr().out
    assert f"written: {out}" in printed and "2 positive, 2 negative" in printed and "mean token norm" in printed
    assert SteeringVector.load(out).header() == made.header() and made.source == str(lm) and made.layer == 0
    base = [f"ckpt={lm}", "prompt=First", "max_new_tokens=30", "temperature=0", "device=cpu"]
    (plain,) = generate_cli.generate(command("generate", base))
    (zero,) = generate_cli.generate(command("generate", [*base, f"steer.vector={out}", "steer.coeff=0"]))
    (pushed,) = generate_cli.generate(command("generate", [*base, f"steer.vector={out}", "steer.coeff=500"]))
    assert zero.text == plain.text and pushed.text != plain.text


def test_steer_command_reads_files_and_labeled_data(lm: Path, tmp_path) -> None:
    (tmp_path / "pos.txt").write_text("First Citizen\n\nAll\n", encoding="utf-8")
    (tmp_path / "neg.txt").write_text("hear me\n", encoding="utf-8")
    files = steer(steer_cfg(lm, f"positive_file={tmp_path / 'pos.txt'}", f"negative_file={tmp_path / 'neg.txt'}",
                            f"out={tmp_path / 'files.safetensors'}", "position=last"))  # fmt: skip
    assert (files.n_positive, files.n_negative, files.position) == (2, 1, "last")
    rows = [{"text": t, "label": label} for t, label in (("All", "pos"), ("hear me", "neg"), ("First Citizen", "pos"))]
    labeled = write_jsonl(tmp_path / "labeled.jsonl", rows)
    by_label = steer(steer_cfg(lm, f"labeled_file={labeled}", f"out={tmp_path / 'l.safetensors'}", "position=last"))
    assert torch.allclose(by_label.vector, files.vector, atol=1e-6)  # same texts per side (order does not matter)
    assert by_label.texts == f"labeled_file={labeled}, label pos minus neg"
    swapped = steer(steer_cfg(lm, f"labeled_file={labeled}", "positive_label=neg", "negative_label=pos",
                              f"out={tmp_path / 's.safetensors'}", "position=last", "max_examples=1"))  # fmt: skip
    assert (swapped.n_positive, swapped.n_negative) == (1, 1)
    many = write_jsonl(tmp_path / "many.jsonl", rows * 10)  # 30 rows: the data config's training split holds 24
    split = steer(
        steer_cfg(lm, "data=text_classification", f"data.source.train={many}", f"out={tmp_path / 'd.safetensors'}")
    )
    assert (split.n_positive + split.n_negative, split.texts) == (24, "text_classification training split, label "
                                                                   "pos minus neg")  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["positive=[a]"], "no negative texts; give them as positive=[...] negative=[...], positive_file=FILE"),
        (["positive=[a]", "negative=[b]", "labeled_file=x.jsonl"], "one way, not labeled_file and texts"),
        (["positive=[a]", "negative=[b]", "positive_label=pos"], "positive_label and negative_label pick the sides"),
        (["positive=[a]", "negative=[b]", "layer=1"], "steering layer 1 is out of range; this model has 1 block:"),
        (["positive=[a]", "negative=[b]", "max_examples=0"], "max_examples=0 must be a positive integer"),
        (["positive=[]", "negative=[b]"], "the positive texts are empty"),
        (["LABELED", "positive_label=good", "negative_label=neg"], "good is not a label of the data; its labels: neg"),
        (["LABELED", "positive_label=pos"], "give both positive_label and negative_label"),
        (["positive=[a]", "negative=[b]", "out=A_FILE/v.safetensors"], "cannot be created"),
    ],
)
def test_steer_command_bad_input_is_one_line(lm: Path, tmp_path, capsys, overrides: list[str], message: str) -> None:
    labeled = write_jsonl(tmp_path / "labeled.jsonl", [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}])
    (tmp_path / "a_file").write_text("x", encoding="utf-8")
    overrides = [{"LABELED": f"labeled_file={labeled}"}.get(o, o.replace("A_FILE", str(tmp_path / "a_file")))
                 for o in overrides]  # fmt: skip
    assert message in one_line_error(steer, steer_cfg(lm, *overrides), capsys)


def test_steer_command_refuses_an_ngram(tmp_path: Path, capsys) -> None:
    err = one_line_error(steer, steer_cfg(ngram_checkpoint(tmp_path), "positive=[a]", "negative=[b]"), capsys)
    assert "which a ngram model has not" in err


def test_generate_refuses_a_layer_without_a_vector(lm: Path, capsys) -> None:
    cfg = command("generate", [f"ckpt={lm}", "steer.layer=0", "device=cpu"])
    assert "steer.layer=0 is set but steer.vector is null" in one_line_error(generate_cli.generate, cfg, capsys)


def test_chat_is_steered_too(tmp_path: Path, capsys) -> None:
    ckpt = write_chat_checkpoint(tmp_path / "chat.ckpt", SYSTEM_TEMPLATE, ends_turn=False)
    turns = tmp_path / "turns.txt"
    turns.write_text("hi there\nhow are you\n", encoding="utf-8")
    vector = random_vector(layer=0).save(tmp_path / "v.safetensors")
    base = [f"ckpt={ckpt}", "device=cpu", "temperature=0", "max_new_tokens=4", f"input={turns}"]

    def replies(*more: str) -> list[str]:
        return [m.content for m in chat_cli.chat(command("chat", [*base, *more])).history if m.role == "assistant"]

    plain = replies()
    assert replies(f"steer.vector={vector}", "steer.coeff=0") == plain
    assert replies(f"steer.vector={vector}", "steer.coeff=200") != plain


@pytest.mark.slow
def test_cli_steer_then_generate_on_a_trained_checkpoint(tmp_path: Path) -> None:
    run_dir = train_tiny(tmp_path)
    (tmp_path / "pos.txt").write_text("First Citizen:\nAll:\n", encoding="utf-8")
    (tmp_path / "neg.txt").write_text("Speak, speak.\nhear me speak.\n", encoding="utf-8")
    vector = tmp_path / "vec.safetensors"
    made = run_cli("steer", f"ckpt={run_dir}", f"positive_file={tmp_path / 'pos.txt'}",
                   f"negative_file={tmp_path / 'neg.txt'}", "layer=0", f"out={vector}", cwd=tmp_path)  # fmt: skip
    assert made.returncode == 0, made.stderr[-3000:]
    assert f"written: {vector}" in made.stdout and "layer 0 (blocks.0.hook_resid_pre)" in made.stdout
    base = ["generate", f"ckpt={run_dir}", "prompt=First", "max_new_tokens=40", "temperature=0"]
    plain, zero, pushed = (run_cli(*base, *more, cwd=tmp_path) for more in (
        [], [f"steer.vector={vector}", "steer.coeff=0"], [f"steer.vector={vector}", "steer.coeff=100"]))  # fmt: skip
    assert plain.returncode == zero.returncode == pushed.returncode == 0, pushed.stderr[-3000:]
    assert zero.stdout == plain.stdout and pushed.stdout != plain.stdout
    bad = run_cli(*base, f"steer.vector={vector}", "steer.layer=4", cwd=tmp_path)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [
        "error: steering layer 4 is out of range; this model has 1 block: choose a layer in 0..0 (the stream "
        "entering that block)"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "corpus.txt", "neg.txt", "pos.txt", "train",
                                                          "vec.safetensors"]  # fmt: skip
