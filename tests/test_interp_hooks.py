"""Hook points and activation caches: names, exactness, patterns, editing, and the families without hooks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmlab.errors import LmlabError
from lmlab.interp import hook_names, hooks_attached, run_with_cache, run_with_hooks
from lmlab.models import build_model
from lmlab.models.bert import Bert, BertConfig
from lmlab.models.gpt import GPT, GPTConfig
from lmlab.models.ngram import NGramConfig


def tiny_gpt(**overrides: object) -> GPT:
    torch.manual_seed(0)
    config = {"vocab_size": 40, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 16, **overrides}
    return GPT(GPTConfig(**config)).eval()


IDS = torch.randint(0, 40, (3, 12), generator=torch.Generator().manual_seed(1))

PER_LAYER = ["hook_resid_pre", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_attn_scores",
             "attn.hook_pattern", "attn.hook_z", "hook_attn_out", "hook_resid_mid", "mlp.hook_pre", "mlp.hook_post",
             "hook_mlp_out", "hook_resid_post"]  # fmt: skip


def test_gpt_has_transformer_lens_names_in_forward_order() -> None:
    names = hook_names(tiny_gpt())
    expected = ["hook_embed", "hook_pos_embed", *[f"blocks.{i}.{n}" for i in range(2) for n in PER_LAYER],
                "ln_final.hook_normalized"]  # fmt: skip
    assert names == expected


def test_cache_holds_exactly_the_requested_names_and_leaves_logits_unchanged() -> None:
    model = tiny_gpt()
    wanted = ["blocks.1.hook_resid_post", "hook_embed", "blocks.0.attn.hook_z"]
    logits, cache = run_with_cache(model, IDS, names=wanted)
    assert sorted(cache) == sorted(wanted)
    assert torch.allclose(logits, model(IDS), atol=1e-6)
    assert cache["blocks.0.attn.hook_z"].shape == (3, 12, 2, 8)  # (B, T, H, D), as TransformerLens lays it out
    assert not cache["hook_embed"].requires_grad
    _, by_predicate = run_with_cache(model, IDS, names=lambda name: name.endswith("hook_resid_post"))
    assert list(by_predicate) == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_residual_stream_adds_up_and_ends_in_the_final_norm(positions: str) -> None:
    model = tiny_gpt(pos_embedding=positions, norm="rmsnorm" if positions == "rope" else "layernorm")
    with torch.no_grad():
        model.ln_f.weight.uniform_(0.5, 1.5)
    _, cache = run_with_cache(model, IDS)
    for i in range(2):
        mid = cache[f"blocks.{i}.hook_resid_pre"] + cache[f"blocks.{i}.hook_attn_out"]
        assert torch.allclose(cache[f"blocks.{i}.hook_resid_mid"], mid, atol=1e-6)
        post = cache[f"blocks.{i}.hook_resid_mid"] + cache[f"blocks.{i}.hook_mlp_out"]
        assert torch.allclose(cache[f"blocks.{i}.hook_resid_post"], post, atol=1e-6)
    final = model.ln_f(cache["blocks.1.hook_resid_post"])  # the norm's output = normalized * gain (no bias here)
    assert torch.allclose(cache["ln_final.hook_normalized"] * model.ln_f.weight, final, atol=1e-5)
    assert not torch.allclose(cache["ln_final.hook_normalized"], final, atol=1e-3)  # before the (random) gain
    assert ("hook_pos_embed" in cache) == (positions == "learned")


def test_attention_patterns_are_causal_rows_summing_to_one() -> None:
    model = tiny_gpt()
    names = [f"blocks.{i}.attn.hook_pattern" for i in range(2)]
    logits, cache = run_with_cache(model, IDS, names=names)
    assert torch.allclose(logits, model(IDS), atol=1e-5)  # the explicit attention path computes what SDPA does
    for name in names:
        pattern = cache[name]  # (B, H, T, T)
        assert pattern.shape == (3, 2, 12, 12)
        assert (pattern.sum(-1) - 1).abs().max() <= 1e-6
        assert pattern.triu(diagonal=1).abs().max() == 0


def test_bert_patterns_are_bidirectional_and_skip_padding() -> None:
    torch.manual_seed(0)
    bert = Bert(BertConfig(vocab_size=40, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[0, 8:] = 0  # the first row's last four tokens are padding
    _, cache = run_with_cache(bert, IDS, names=["blocks.0.attn.hook_pattern"], attention_mask=mask)
    pattern = cache["blocks.0.attn.hook_pattern"]
    assert (pattern.sum(-1) - 1).abs().max() <= 1e-6
    assert pattern[1].triu(diagonal=1).sum() > 0  # later tokens are attended to
    assert pattern[0, :, :, 8:].abs().max() == 0


def test_a_hook_that_returns_a_tensor_replaces_the_activation_only_while_attached() -> None:
    model = tiny_gpt()
    clean = model(IDS)
    zeroed = run_with_hooks(model, IDS, [("blocks.1.hook_mlp_out", lambda x, name: torch.zeros_like(x))])
    _, cache = run_with_cache(model, IDS, names=["blocks.1.hook_resid_mid"])
    expected = model.lm_head(model.ln_f(cache["blocks.1.hook_resid_mid"]))  # the last MLP's contribution removed
    assert torch.allclose(zeroed, expected, atol=1e-5) and not torch.allclose(zeroed, clean)
    assert torch.equal(model(IDS), clean)  # detached again


def test_hooks_are_removed_when_the_forward_pass_fails() -> None:
    model = tiny_gpt()

    def fail(x: torch.Tensor, name: str) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError), hooks_attached(model, [("blocks.0.hook_resid_pre", fail)]):
        model(IDS)
    assert not any(module._forward_hooks for module in model.modules())


def test_hooks_see_generation_with_a_kv_cache() -> None:
    model = tiny_gpt()
    seen: list[tuple[int, ...]] = []
    cache = model.new_cache(3)
    with hooks_attached(model, [("blocks.1.hook_resid_post", lambda x, name: seen.append(tuple(x.shape)))]):
        model.forward_cached(IDS[:, :5], cache)
        model.forward_cached(IDS[:, 5:6], cache)
    assert seen == [(3, 5, 16), (3, 1, 16)]


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(
        LmlabError,
        match=r"unknown hook name 'blocks.7.hook_resid_post'; valid names: .*blocks\.\{0\.\.1\}\.hook_resid_post",
    ):
        run_with_cache(tiny_gpt(), IDS, names=["blocks.7.hook_resid_post"])


def test_an_ngram_model_has_no_hook_points() -> None:
    ngram = build_model(NGramConfig(vocab_size=40, order=3))
    with pytest.raises(LmlabError, match=r"ngram model has no hook points.*use a gpt, bert or hf_causal checkpoint"):
        run_with_cache(ngram, IDS)


def test_cache_saves_as_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    _, cache = run_with_cache(tiny_gpt(), IDS, names=lambda name: "resid_post" in name or "resid_pre" in name)
    path = cache.save(tmp_path / "cache.safetensors")
    assert {name: t.shape for name, t in load_file(path).items()} == {name: t.shape for name, t in cache.items()}
    assert cache.layer_stack("hook_resid_post").shape == (2, 3, 12, 16)
    assert torch.equal(load_file(path)["blocks.1.hook_resid_pre"], cache["blocks.0.hook_resid_post"])  # one tensor
