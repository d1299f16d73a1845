"""Activation patching: whole-layer patches recover everything, no patch nothing, and the grid finds the token
that differs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from lmlab.cli.patch import patch
from lmlab.errors import LmlabError
from lmlab.interp.patching import metric_of, patch_grid, patched_metric, recovery, whole_layer_recovery
from lmlab.models.gpt import GPT, GPTConfig
from tests.helpers.classification import fake_lm_checkpoint
from tests.helpers.cli import one_line_error, run_cli
from tests.helpers.compose import TINY_TEXT, command
from tests.helpers.interp import ngram_checkpoint, train_tiny


def tiny_gpt(n_layer: int = 3) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=40, block_size=16, n_layer=n_layer, n_head=2, n_embd=16)).eval()


def last_logits(model: GPT):
    return lambda ids: model(ids)[:, -1]  # (B, V)


CLEAN = torch.tensor([[3, 7, 11, 5, 9, 2]])
CORRUPTED = torch.tensor([[3, 7, 30, 5, 9, 2]])  # differs at position 2 only
ANSWERS = [4, 8]


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_patching_the_whole_residual_recovers_all_and_nothing_recovers_none(layer: int) -> None:
    model = tiny_gpt()
    scores = last_logits(model)
    assert whole_layer_recovery(model, scores, CLEAN, CORRUPTED, ANSWERS, layer) == pytest.approx(1.0, abs=1e-4)
    clean = float(patched_metric(model, scores, CLEAN, ANSWERS, "logit_diff")[0])
    corrupted = float(patched_metric(model, scores, CORRUPTED, ANSWERS, "logit_diff")[0])
    nothing = patched_metric(model, scores, CORRUPTED, ANSWERS, "logit_diff")
    assert float(recovery(nothing, clean, corrupted)[0]) == 0.0
    assert abs(clean - corrupted) > 1e-3  # the test means something: the prompts do differ in the metric


def test_the_grid_finds_the_differing_position_at_the_first_layer() -> None:
    model = tiny_gpt()
    result = patch_grid(model, last_logits(model), CLEAN, CORRUPTED, ANSWERS)
    grid = result.recovered(result.resid)  # (L, T)
    assert grid.shape == (3, 6)
    # Entering block 0 the stream at position t is the embedding of token t: only position 2 differs, so patching it
    # alone restores the clean run exactly, and patching any other position changes nothing.
    assert grid[0, 2].item() == pytest.approx(1.0, abs=1e-4)
    assert grid[0, [0, 1, 3, 4, 5]].abs().max().item() < 1e-4
    assert result.heads is not None and result.heads.shape == (3, 2)
    with torch.no_grad():
        clean = float(metric_of(model(CLEAN)[:, -1], ANSWERS, "logit_diff")[0])
    assert result.clean == pytest.approx(clean, abs=1e-4)


def test_heads_patch_each_head_alone() -> None:
    model = tiny_gpt(n_layer=1)
    result = patch_grid(model, last_logits(model), CLEAN, CORRUPTED, ANSWERS)
    _, both = patched_both_heads(model)
    # One block: the last position's output is its own (unchanged) embedding plus its attention output plus an MLP
    # of those two, so patching every head's output there restores the clean logits exactly.
    assert both == pytest.approx(1.0, abs=1e-4)
    assert not torch.allclose(result.heads[0, 0], result.heads[0, 1])  # each row patched its own head


def patched_both_heads(model: GPT) -> tuple[float, float]:
    from lmlab.interp.hooks import run_with_cache

    scores = last_logits(model)
    _, cache = run_with_cache(model, CLEAN, names=["blocks.0.attn.hook_z"])
    clean = float(patched_metric(model, scores, CLEAN, ANSWERS, "logit_diff")[0])
    corrupted = float(patched_metric(model, scores, CORRUPTED, ANSWERS, "logit_diff")[0])

    def last_position(x: torch.Tensor, name: str) -> torch.Tensor:
        x = x.clone()
        x[:, -1] = cache[name][:, -1]
        return x

    patched = patched_metric(model, scores, CORRUPTED, ANSWERS, "logit_diff", [("blocks.0.attn.hook_z", last_position)])
    return clean, float(recovery(patched, clean, corrupted)[0])


def test_equal_prompts_and_bad_metrics_are_one_line_errors() -> None:
    model = tiny_gpt()
    with pytest.raises(LmlabError, match="give the same logit_diff"):
        patch_grid(model, last_logits(model), CLEAN, CLEAN, ANSWERS)
    with pytest.raises(LmlabError, match="equal length"):
        patch_grid(model, last_logits(model), CLEAN, CORRUPTED[:, :4], ANSWERS)
    with pytest.raises(LmlabError, match="metric='kl' is unknown"):
        metric_of(torch.zeros(1, 40), ANSWERS, "kl")
    with pytest.raises(LmlabError, match="compares two answers"):
        metric_of(torch.zeros(1, 40), [4], "logit_diff")


# --- the command ---------------------------------------------------------------------------------------------------


def patch_cfg(tmp_path: Path, *overrides: str, ckpt: Path | None = None) -> DictConfig:
    ckpt = ckpt or fake_lm_checkpoint(tmp_path / "lm.ckpt", TINY_TEXT + "abcdefghijklmnopqrstuvwxyz")
    return command("patch", [f"ckpt={ckpt}", "clean=First Citizen", "corrupted=First Citizan", "answers=[':',' ']",
                             f"paths.output_dir={tmp_path / 'run'}", *overrides])  # fmt: skip


def test_patch_command_writes_heat_maps_csv_and_json(tmp_path: Path) -> None:
    result = patch(patch_cfg(tmp_path))
    run = tmp_path / "run"
    rows = list(csv.reader((run / "patch_resid.csv").open()))
    assert rows[0][:3] == ["layer", "0:'F'", "1:'i'"] and len(rows) == 2 and len(rows[0]) == 1 + 13
    assert float(rows[1][12]) == pytest.approx(1.0, abs=1e-3)  # position 11, the one letter that differs
    summary = json.loads((run / "patch.json").read_text())
    assert summary["clean_metric"] == pytest.approx(result.clean) and summary["answers"] == [":", " "]
    assert len(summary["heads"]) == 1 and len(summary["heads"][0]) == 2
    assert all((run / name).stat().st_size > 0 for name in ("patch_resid.png", "patch_heads.png"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["corrupted=First Citizens"], "clean is 13 tokens and corrupted 14; patching pairs positions"),
        (
            ["clean=First Citizen of Rome", "corrupted=First Citizan of Rome"],
            "is 21 tokens, longer than the model's context of 16; shorten it",
        ),
        (["answers=[':',' a']"], "answer ' a' is 2 tokens under this checkpoint's tokenizer, not one"),
        (["answers=[':']"], "metric=logit_diff needs 2 answers, got 1"),
        (["metric=kl"], "metric='kl' is unknown; choose one of: logit_diff, logprob"),
        (["clean=", "corrupted="], "clean is empty"),
    ],
)
def test_patch_command_bad_inputs_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture, overrides: list[str], message: str
) -> None:
    assert message in one_line_error(patch, patch_cfg(tmp_path, *overrides), capsys)


def test_patch_command_refuses_an_ngram(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    err = one_line_error(patch, patch_cfg(tmp_path, ckpt=ngram_checkpoint(tmp_path)), capsys)
    assert "ngram model has no hook points" in err


@pytest.mark.slow
def test_cli_patch_on_a_trained_checkpoint(tmp_path: Path) -> None:
    run_dir = train_tiny(tmp_path)
    out = tmp_path / "patch"
    result = run_cli(
        "patch", f"ckpt={run_dir}", "clean=First Citizen", "corrupted=First Citizan", "answers=[':',' ']",
        f"hydra.run.dir={out}", cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "clean metric" in result.stdout
    grid = list(csv.reader((out / "patch_resid.csv").open()))
    assert [row[0] for row in grid[1:]] == ["0"] and float(grid[1][12]) == pytest.approx(1.0, abs=1e-3)
    assert {p.name for p in out.iterdir()} >= {"patch_resid.png", "patch_heads.png", "patch.json", ".hydra"}
    logprob = run_cli(
        "patch", f"ckpt={run_dir}", "clean=First Citizen", "corrupted=First Citizan", "answers=[':']",
        "metric=logprob", "heads=false", f"hydra.run.dir={tmp_path / 'logprob'}", cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert logprob.returncode == 0, logprob.stderr[-3000:]
    assert not (tmp_path / "logprob" / "patch_heads.csv").exists()


def classifier_checkpoint(tmp_path: Path) -> Path:
    """A tiny GPT classifier checkpoint (random weights and head), shaped like `lmlab train task=classification`'s."""
    from lmlab.tasks import ClassificationTask
    from lmlab.tokenizers import CharTokenizerConfig

    tokenizer = CharTokenizerConfig(["<pad>"]).train([TINY_TEXT + "abcdefghijklmnopqrstuvwxyz"])
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=16)
    torch.manual_seed(0)
    task = ClassificationTask(model=config, num_classes=2, label_names=["neg", "pos"], pooling="last")
    torch.nn.init.normal_(task.head[1].weight, std=1.0)  # a head that separates the classes a little
    target = "lmlab.tasks.ClassificationTask"
    checkpoint = {"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams),
                  "lmlab": {"tokenizer": tokenizer.to_dict(), "config": {"task": {"_target_": target}}}}  # fmt: skip
    torch.save(checkpoint, tmp_path / "classifier.ckpt")
    return tmp_path / "classifier.ckpt"


def test_patch_command_reads_a_classifiers_class_logits(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt = classifier_checkpoint(tmp_path)
    result = patch(patch_cfg(tmp_path, "answers=[pos,neg]", ckpt=ckpt))
    grid = result.recovered(result.resid)
    assert grid.shape == (2, 13) and grid[0, 11].item() == pytest.approx(1.0, abs=1e-3)
    err = one_line_error(patch, patch_cfg(tmp_path, "answers=[good,neg]", ckpt=ckpt), capsys)
    assert "answer 'good' is not a class of this classifier; choose from ['neg', 'pos']" in err
