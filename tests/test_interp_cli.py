"""`lmlab inspect` and `lmlab lens`: the files they write, their pictures and page, and their one-line errors."""

from __future__ import annotations

import csv
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmlab.errors import LmlabError
from lmlab.models import build_model, model_config_to_dict
from lmlab.models.ngram import NGramConfig
from lmlab.tokenizers import CharTokenizerConfig
from tests.helpers.classification import fake_lm_checkpoint
from tests.helpers.compose import TINY_TEXT, command

TEXT = "First Citizen:\\nBefore we proceed"
"""As typed on the command line (`\\n` is read as a newline): 32 characters."""


@pytest.fixture
def lm(tmp_path: Path) -> Path:
    return fake_lm_checkpoint(tmp_path / "lm.ckpt", TINY_TEXT, block_size=48)


def run_inspect(tmp_path: Path, *overrides: str):
    from lmlab.cli.inspect import inspect

    out = tmp_path / "out"
    return inspect(command("inspect", [*overrides, f"output_dir={out}", "wandb=false", "device=cpu"])), out


class PageCheck(HTMLParser):
    """Checks that every element closes in order, counts token spans, and collects anything that would make the
    browser fetch something (src, href, script, @import, url())."""

    VOID = frozenset({"meta", "br", "hr", "img", "link", "input"})

    def __init__(self) -> None:
        super().__init__()
        self.spans, self.fetches, self.open = 0, [], []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in self.VOID:
            self.open.append(tag)
        self.spans += tag == "span" and ("class", "tok") in attrs
        self.fetches += [v for k, v in attrs if k in ("src", "href") and v] + (["script"] if tag == "script" else [])

    def handle_data(self, data: str) -> None:
        if self.open and self.open[-1] == "style" and ("url(" in data or "@import" in data):
            self.fetches.append(data)

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open.pop() == tag, f"</{tag}> closes nothing open"


def test_inspect_writes_a_self_contained_loss_page_attention_grids_and_the_cache(lm: Path, tmp_path: Path) -> None:
    found, out = run_inspect(tmp_path, f"ckpt={lm}", f"text={TEXT}", "cache=true",
                             "cache_names=[blocks.0.hook_resid_post,blocks.0.attn.hook_pattern]")  # fmt: skip
    page = (out / "tokens.html").read_text(encoding="utf-8")
    check = PageCheck()
    check.feed(page)
    assert check.spans == 32 and check.fetches == [] and check.open == []  # one span per character, all closed
    rows = list(csv.DictReader((out / "tokens.csv").open(encoding="utf-8")))
    assert [r["token"] for r in rows][:3] == ["F", "i", "r"] and rows[0]["loss"] == ""
    mean = sum(float(r["loss"]) for r in rows[1:]) / 31
    assert mean == pytest.approx(found.mean_loss, rel=1e-4)
    assert json.loads((out / "summary.json").read_text())["attention_layers"] == [0]
    assert (out / "attention" / "layer0.png").stat().st_size > 1000
    saved = load_file(out / "cache.safetensors")
    assert sorted(saved) == ["blocks.0.attn.hook_pattern", "blocks.0.hook_resid_post"]
    assert saved["blocks.0.attn.hook_pattern"].shape == (1, 2, 32, 32)
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_inspect_loss_is_the_models_cross_entropy(lm: Path, tmp_path: Path) -> None:
    from lmlab.checkpoints.load import load_checkpoint

    found, _ = run_inspect(tmp_path, f"ckpt={lm}", f"text={TEXT}", "attention=false", "tensorboard=false")
    loaded = load_checkpoint(lm)
    ids = torch.tensor([loaded.tokenizer.encode("First Citizen:\nBefore we proceed")])
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(loaded.model(ids)[0, :-1], ids[0, 1:])
    assert found.mean_loss == pytest.approx(expected.item(), rel=1e-5)
    assert found.patterns == {} and found.cache is None
    assert all(len(t.top) == 5 and t.top[0][1] >= t.top[-1][1] for t in found.tokens[1:])


def ngram_checkpoint(path: Path) -> Path:
    tokenizer = CharTokenizerConfig().train([TINY_TEXT])
    config = NGramConfig(vocab_size=tokenizer.vocab_size, order=3)
    model = build_model(config)
    task = {"_target_": "lmlab.tasks.CausalLMTask"}
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    lmlab = {"tokenizer": tokenizer.to_dict(), "config": {"task": task}}
    torch.save({"state_dict": state, "hyper_parameters": {"model": model_config_to_dict(config)}, "lmlab": lmlab,
                "global_step": 0}, path)  # fmt: skip
    return path


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["text=" + "a" * 60], r"the text is 60 tokens, longer than the model's context \(block_size=48\); shorten it"),
        (["layers=[3]"], r"layer 3 is out of range: the model has layers 0\.\.0"),
        (["cache=true", "cache_names=[blocks.0.hook_nope]"], r"unknown hook name 'blocks.0.hook_nope'; valid names: "),
        ([], r"give the text to look at as text='\.\.\.' or input=FILE"),
        (["top_k=0"], "top_k=0 must be a positive integer"),
    ],
)
def test_inspect_bad_inputs_are_one_line_errors(lm: Path, tmp_path: Path, overrides: list[str], message: str) -> None:
    if not any(o.startswith("text=") for o in overrides) and overrides:
        overrides = [*overrides, f"text={TEXT}"]
    with pytest.raises(LmlabError, match=message):
        run_inspect(tmp_path, f"ckpt={lm}", *overrides)
    assert not (tmp_path / "out" / "tokens.html").exists()


def test_an_ngram_checkpoint_has_no_attention_to_draw(tmp_path: Path) -> None:
    ckpt = ngram_checkpoint(tmp_path / "ngram.ckpt")
    with pytest.raises(LmlabError, match="ngram model has no hook points"):
        run_inspect(tmp_path, f"ckpt={ckpt}", "text=First Citizen")
    found, out = run_inspect(tmp_path, f"ckpt={ckpt}", "text=First Citizen", "attention=false", "tensorboard=false")
    assert len(found.tokens) == 13 and (out / "tokens.html").is_file()  # the loss page needs no hooks


def run_lens(tmp_path: Path, *overrides: str):
    from lmlab.cli.lens import lens

    out = tmp_path / "lens"
    return lens(command("lens", [*overrides, f"output_dir={out}", "wandb=false", "device=cpu"])), out


def test_lens_over_a_file_writes_its_table_and_pictures(lm: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TINY_TEXT, encoding="utf-8")
    stats, out = run_lens(tmp_path, f"ckpt={lm}", f"input={corpus}", "tuned=true", "tuned_steps=5", "positions=12")
    assert set(stats) == {"logit lens", "tuned lens"}
    rows = list(csv.DictReader((out / "lens.csv").open(encoding="utf-8")))
    assert [(r["lens"], r["layer"]) for r in rows] == [(n, layer) for n in ("logit lens", "tuned lens")
                                                       for layer in ("embed", "0")]  # fmt: skip
    assert float(rows[1]["kl_to_final"]) == pytest.approx(0.0, abs=1e-6) and float(rows[1]["agreement"]) == 1.0
    assert rows[1]["loss"] == rows[3]["loss"]  # the last layer is read as it is, tuned or not
    tokens = list(csv.reader((out / "lens_tokens.csv").open(encoding="utf-8")))
    assert tokens[0][0] == "layer" and len(tokens[0]) == 13 and [r[0] for r in tokens[1:]] == ["embed", "0"]
    for name in ("lens_loss.png", "lens_tokens.png", "lens_tokens_tuned.png"):
        assert (out / name).stat().st_size > 1000


def test_lens_refuses_a_family_without_a_residual_stream(tmp_path: Path) -> None:
    ckpt = ngram_checkpoint(tmp_path / "ngram.ckpt")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TINY_TEXT, encoding="utf-8")
    with pytest.raises(LmlabError, match="logit lens reads a causal LM's next-token head, which a ngram model"):
        run_lens(tmp_path, f"ckpt={ckpt}", f"input={corpus}")


@pytest.mark.slow
def test_inspect_and_lens_run_from_the_command_line_on_a_trained_checkpoint(tmp_path: Path, tiny_corpus: Path) -> None:
    from tests.helpers.cli import run_cli

    env = {"LMLAB_CACHE": str(tmp_path / "cache")}
    data = ["data=text_files", f"data.corpus.paths=[{tiny_corpus}]", "data.max_val_tokens=512"]
    tiny = ["model.n_layer=2", "model.n_head=2", "model.n_embd=16", "model.block_size=32", "trainer.max_steps=6",
            "trainer.val_check_interval=6", "logger=csv", "sample.max_new_tokens=4"]  # fmt: skip
    trained = run_cli("train", *data, *tiny, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, env=env, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    look = run_cli("inspect", f"ckpt={tmp_path / 'run'}", "text=First Citizen:\\nBefore", "cache=true",
                   f"hydra.run.dir={tmp_path / 'inspect'}", cwd=tmp_path, env=env, timeout=600)  # fmt: skip
    assert look.returncode == 0, look.stderr[-3000:]
    assert "tokens.html" in look.stdout and "W&B run" in look.stdout  # offline in tests
    assert {"tokens.html", "tokens.csv", "cache.safetensors", "summary.json", "tensorboard", "wandb"} <= {
        p.name for p in (tmp_path / "inspect").iterdir()
    }
    assert sorted(p.name for p in (tmp_path / "inspect" / "attention").iterdir()) == ["layer0.png", "layer1.png"]
    lens = run_cli("lens", f"ckpt={tmp_path / 'run'}", "tuned=true", "tuned_steps=3", "wandb=false",
                   f"hydra.run.dir={tmp_path / 'lens'}", cwd=tmp_path, env=env, timeout=600)  # fmt: skip
    assert lens.returncode == 0, lens.stderr[-3000:]
    rows = list(csv.DictReader((tmp_path / "lens" / "lens.csv").open(encoding="utf-8")))
    assert [r["layer"] for r in rows] == ["embed", "0", "1"] * 2  # the validation split, read by both lenses
    too_long = run_cli("inspect", f"ckpt={tmp_path / 'run'}", "text=" + "a" * 40, cwd=tmp_path, env=env)
    assert too_long.returncode == 1 and "Traceback" not in too_long.stderr
    assert too_long.stderr.strip().splitlines()[-1].startswith("error: the text is 40 tokens, longer than")
