"""The logit lens and the tuned lens on tiny models: exactness at the last layer, statistics, training."""

from __future__ import annotations

import pytest
import torch

from lmlab.errors import LmlabError
from lmlab.interp.lens import TunedLens, lens_stats, logit_lens, residual_streams, top_tokens
from lmlab.models.bert import Bert, BertConfig
from lmlab.models.gpt import GPT, GPTConfig

IDS = torch.randint(0, 40, (3, 12), generator=torch.Generator().manual_seed(1))


def tiny_gpt(**overrides: object) -> GPT:
    torch.manual_seed(0)
    config = {"vocab_size": 40, "block_size": 16, "n_layer": 3, "n_head": 2, "n_embd": 16, **overrides}
    return GPT(GPTConfig(**config)).eval()


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_lens_at_the_last_layer_is_the_models_own_logits(norm: str) -> None:
    model = tiny_gpt(norm=norm)
    lens = logit_lens(model, IDS)
    assert lens.shape == (4, 3, 12, 40)  # embedding + 3 blocks
    assert (lens[-1] - model(IDS)).abs().max() <= 1e-5
    assert (lens[0] - lens[-1]).abs().max() > 1e-3  # earlier layers read differently


def test_identity_tuned_lens_is_the_logit_lens_and_keeps_the_last_layer() -> None:
    model = tiny_gpt()
    translators = TunedLens(depth=3, width=16)
    assert torch.allclose(logit_lens(model, IDS, translators), logit_lens(model, IDS), atol=1e-6)
    with torch.no_grad():
        for linear in translators.maps:
            linear.weight.mul_(0.5)
    tuned = logit_lens(model, IDS, translators)
    assert torch.equal(tuned[-1], logit_lens(model, IDS)[-1]) and not torch.allclose(
        tuned[0], logit_lens(model, IDS)[0]
    )


def test_lens_stats_end_at_zero_kl_and_full_agreement() -> None:
    model = tiny_gpt()
    y = IDS.roll(-1, dims=1).clone()
    y[:, -1] = -100  # not scored
    stats = lens_stats(model, [(IDS, y)], torch.device("cpu"))
    assert stats.labels == ["embed", "0", "1", "2"] and stats.tokens == 3 * 11
    assert stats.kl_to_final[-1] == pytest.approx(0.0, abs=1e-6) and stats.agreement[-1] == 1.0
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(model(IDS)[:, :-1].reshape(-1, 40), IDS[:, 1:].reshape(-1))
    assert stats.loss[-1] == pytest.approx(expected.item(), rel=1e-5)
    assert min(stats.kl_to_final[:-1]) > 0


def test_top_tokens_per_layer_and_position() -> None:
    model = tiny_gpt()
    top = top_tokens(model, IDS[:1], decode=lambda ids: f"<{ids[0]}>")
    assert top.labels == ["embed", "0", "1", "2"] and len(top.inputs) == 12
    assert top.tokens[-1] == [f"<{int(i)}>" for i in model(IDS[:1])[0].argmax(-1)]
    assert all(0 < p <= 1 for row in top.probs for p in row)


def test_tuned_lens_training_brings_early_layers_closer_to_the_final_one() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from lmlab.interp.tuned_lens import fit_tuned_lens

    model = tiny_gpt()
    ids = torch.randint(0, 40, (64, 12), generator=torch.Generator().manual_seed(2))
    loader = DataLoader(TensorDataset(ids, ids.roll(-1, 1)), batch_size=16)
    before = lens_stats(model, loader, torch.device("cpu"))
    weights = {name: t.clone() for name, t in model.state_dict().items()}
    translators = fit_tuned_lens(model, loader, steps=40, lr=1e-2, accelerator="cpu")
    after = lens_stats(model, loader, torch.device("cpu"), translators)
    assert sum(after.kl_to_final[:-1]) < 0.7 * sum(before.kl_to_final[:-1])
    assert after.loss[-1] == pytest.approx(before.loss[-1], rel=1e-6)  # the last layer is read as it is
    assert all(torch.equal(t, weights[name]) for name, t in model.state_dict().items())  # the model stays frozen


def test_residual_streams_need_a_model_with_a_residual_stream() -> None:
    bert = Bert(BertConfig(vocab_size=40, block_size=16, n_layer=1, n_head=2, n_embd=16))
    _, streams = residual_streams(bert, IDS)  # hooks exist: the streams are readable
    assert streams.shape == (2, 3, 12, 16)
    with pytest.raises(LmlabError, match="logit lens reads a causal LM's next-token head, which a bert model"):
        logit_lens(bert, IDS)


def test_hf_causal_models_are_hooked_by_module_name_and_read_through_the_lens(tmp_path, tiny_corpus) -> None:
    from lmlab.interp import hook_names, run_with_cache, run_with_hooks
    from lmlab.models import HFCausal, HFCausalConfig
    from tests.helpers.hf import save_tiny_causal

    folder = save_tiny_causal(tmp_path / "tiny_causal", tiny_corpus.read_text())
    model = HFCausal(HFCausalConfig(name_or_path=str(folder), block_size=32)).eval()
    ids = torch.randint(0, 300, (2, 10), generator=torch.Generator().manual_seed(3))
    names = hook_names(model)
    assert {"hook_embed", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post", "ln_final.hook_normalized",
            "model.layers.0.mlp"} <= set(names)  # fmt: skip
    lens, logits = logit_lens(model, ids), model(ids)
    assert lens.shape == (3, *logits.shape) and (lens[-1] - logits).abs().max() <= 1e-5
    _, cache = run_with_cache(model, ids, names=["blocks.1.hook_resid_pre", "blocks.0.hook_resid_post"])
    assert torch.equal(cache["blocks.1.hook_resid_pre"], cache["blocks.0.hook_resid_post"])
    doubled = run_with_hooks(model, ids, [("blocks.1.hook_resid_pre", lambda x, name: 2 * x)])
    assert not torch.allclose(doubled, model(ids))  # a pre-hook on the layer's input replaces what it reads
