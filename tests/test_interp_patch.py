"""Activation patching: whole-layer patches recover everything, no patch nothing, and the grid finds the token
that differs."""

from __future__ import annotations

import pytest
import torch

from lmlab.errors import LmlabError
from lmlab.interp.patching import metric_of, patch_grid, patched_metric, recovery, whole_layer_recovery
from lmlab.models.gpt import GPT, GPTConfig


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
