"""The model ladder's neural members: causality, shapes, options and their validation."""

from __future__ import annotations

import pytest
import torch

from lmlab.errors import LmlabError
from lmlab.models import GPT, LSTM, Bert, BertConfig, GPTConfig, LSTMConfig, build_model

V, T = 17, 12
SHAPE = {"vocab_size": V, "block_size": T, "n_layer": 2, "n_embd": 16}
CAUSAL = {
    "gpt": GPTConfig(**SHAPE, n_head=2),
    "gpt_rope_rmsnorm": GPTConfig(**SHAPE, n_head=2, norm="rmsnorm", pos_embedding="rope"),
    "lstm": LSTMConfig(**SHAPE, n_hidden=24),
    "lstm_tied": LSTMConfig(**SHAPE, n_hidden=24, tie_weights=True),
}


def logits_after_change(config, position: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model(config).eval()
    idx = torch.randint(0, V, (2, T))
    changed = idx.clone()
    changed[:, position] = (idx[:, position] + 1) % V
    with torch.no_grad():
        return model(idx), model(changed)


@pytest.mark.parametrize("name", CAUSAL)
def test_causal_models_ignore_the_future(name: str) -> None:
    a, b = logits_after_change(CAUSAL[name], position=7)
    assert a.shape == (2, T, V)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


@pytest.mark.parametrize("pos_embedding", ["learned", "rope"])
def test_bert_sees_the_future(pos_embedding: str) -> None:
    a, b = logits_after_change(BertConfig(**SHAPE, n_head=2, dropout=0.0, pos_embedding=pos_embedding), position=7)
    assert a.shape == (2, T, V)
    assert not torch.allclose(a[:, :7], b[:, :7])


def test_bert_padding_mask_hides_padded_keys() -> None:
    torch.manual_seed(0)
    model = Bert(BertConfig(**SHAPE, n_head=2, dropout=0.0)).eval()
    idx = torch.randint(0, V, (1, T))
    mask = torch.ones(1, T, dtype=torch.long)
    mask[:, 8:] = 0
    changed = idx.clone()
    changed[:, 9] = (idx[:, 9] + 1) % V
    with torch.no_grad():
        torch.testing.assert_close(model(idx, mask)[:, :8], model(changed, mask)[:, :8])


def test_rope_replaces_the_position_table() -> None:
    learned = GPT(CAUSAL["gpt"])
    rope = GPT(GPTConfig(**SHAPE, n_head=2, pos_embedding="rope"))
    assert rope.wpe is None
    assert learned.num_parameters() - rope.num_parameters() == T * 16
    assert rope.state_dict().keys() == {k for k in learned.state_dict() if not k.startswith("wpe.")}


def test_rope_is_relative() -> None:
    """Attention scores under rotary embeddings depend on the distance between positions only."""
    from lmlab.models.layers import Rotary

    rotary = Rotary(head_dim=8, max_len=32)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    score = [(rotary(q, offset=i) * rotary(k, offset=i + 3)).sum() for i in (0, 5, 20)]
    torch.testing.assert_close(score[0], score[1])
    torch.testing.assert_close(score[0], score[2])


def test_rmsnorm_has_no_bias() -> None:
    model = GPT(GPTConfig(**SHAPE, n_head=2, norm="rmsnorm"))
    assert isinstance(model.ln_f, torch.nn.RMSNorm)
    assert not any("ln_" in n and n.endswith("bias") for n, _ in model.named_parameters())


def test_lstm_step_carries_state() -> None:
    torch.manual_seed(0)
    model = LSTM(CAUSAL["lstm"]).eval()
    idx = torch.randint(0, V, (1, T))
    with torch.no_grad():
        full = model(idx)
        first, state = model.step(idx[:, :5])
        rest, _ = model.step(idx[:, 5:], state)
    torch.testing.assert_close(torch.cat([first, rest], dim=1), full)


def test_lstm_tied_weights_share_storage() -> None:
    model = LSTM(CAUSAL["lstm_tied"])
    assert model.lm_head.weight is model.wte.weight and model.proj is not None


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: GPTConfig(**SHAPE, n_head=2, norm="batchnorm"), "choose one of: layernorm, rmsnorm"),
        (lambda: GPTConfig(**SHAPE, n_head=2, pos_embedding="alibi"), "choose one of: learned, rope"),
        (lambda: GPTConfig(**{**SHAPE, "n_embd": 18}, n_head=6, pos_embedding="rope"), "even head size"),
        (lambda: LSTMConfig(**{**SHAPE, "n_layer": 0}), "model.n_layer=0"),
        (lambda: BertConfig(**SHAPE, n_head=3), "not divisible"),
    ],
)
def test_bad_shapes_name_the_fix(make, message: str) -> None:
    with pytest.raises(LmlabError, match=message):
        make()
