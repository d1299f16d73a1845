from __future__ import annotations

import pytest
import torch

from lmlab.errors import LmlabError
from lmlab.models import GPT, GPTConfig, build_model, model_config_from_dict, model_config_to_dict


def tiny(**overrides) -> GPTConfig:
    return GPTConfig(**{"vocab_size": 11, "block_size": 8, "n_layer": 2, "n_head": 2, "n_embd": 16, **overrides})


def test_logits_shape() -> None:
    model = GPT(tiny())
    assert model(torch.randint(0, 11, (3, 8))).shape == (3, 8, 11)


def test_gpt_is_causal() -> None:
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    idx = torch.randint(0, 11, (1, 8))
    changed = idx.clone()
    changed[0, 5] = (idx[0, 5] + 1) % 11
    a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5:], b[:, 5:])


@pytest.mark.parametrize("bias", [False, True])
def test_parameter_count_matches_formula(bias: bool) -> None:
    V, T, L, C = 11, 8, 2, 16
    model = GPT(tiny(bias=bias))
    per_block = 12 * C * C + (2 * C if not bias else 2 * 2 * C + 3 * C + C + 4 * C + C)
    expected = V * C + T * C + L * per_block + (C if not bias else 2 * C)  # tied head adds nothing
    assert model.num_parameters() == expected
    assert model.num_parameters(non_embedding=True) == expected - T * C


def test_weights_are_tied() -> None:
    model = GPT(tiny())
    assert model.lm_head.weight is model.wte.weight


def test_residual_projections_use_scaled_init() -> None:
    torch.manual_seed(0)
    model = GPT(tiny(n_layer=8, n_embd=64, n_head=4))
    proj, fc = model.blocks[0].mlp.proj.weight, model.blocks[0].mlp.fc.weight
    assert proj.std().item() == pytest.approx(0.02 / 4, rel=0.1)  # 0.02 / sqrt(2 * 8)
    assert fc.std().item() == pytest.approx(0.02, rel=0.1)


def test_too_long_input_is_refused() -> None:
    with pytest.raises(LmlabError, match="block_size=8"):
        GPT(tiny())(torch.zeros(1, 9, dtype=torch.long))


def test_config_validation_names_the_fix() -> None:
    with pytest.raises(LmlabError, match=r"not divisible by model\.n_head"):
        tiny(n_embd=10, n_head=3)
    with pytest.raises(LmlabError, match=r"model\.n_layer"):
        tiny(n_layer=0)


def test_config_dict_round_trip() -> None:
    config = tiny(dropout=0.1)
    data = model_config_to_dict(config)
    assert data["family"] == "gpt"
    assert model_config_from_dict(data) == config
    assert isinstance(build_model(config), GPT)
    with pytest.raises(LmlabError, match="unknown model family"):
        model_config_from_dict({"family": "nope"})
