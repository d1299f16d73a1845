"""The classification task: pooling, fine-tuning modes, optimizer groups, class weights, refusals."""

from __future__ import annotations

import functools

import pytest
import torch

from lmlab.errors import LmlabError
from lmlab.models import BertConfig, GPTConfig, LSTMConfig, NGramConfig, build_model
from lmlab.models.lora import merge_lora_state
from lmlab.tasks import ClassificationTask
from lmlab.tasks.finetune import block_linear_names, class_weight_list
from lmlab.tasks.pooling import default_pooling, last_token_pool, mean_pool

GPT_TINY = GPTConfig(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=16)
BERT_TINY = BertConfig(vocab_size=20, block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.0)
LSTM_TINY = LSTMConfig(vocab_size=20, block_size=16, n_layer=1, n_embd=8, n_hidden=12)
ADAMW = functools.partial(torch.optim.AdamW, lr=1e-3)


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Four right-padded rows of lengths 5, 3, 8, 1 and their labels."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 20, (4, 8), generator=g)
    mask = (torch.arange(8)[None, :] < torch.tensor([5, 3, 8, 1])[:, None]).long()
    return ids * mask, mask, torch.tensor([0, 1, 0, 1])


def test_last_token_pool_picks_the_last_real_token() -> None:
    h = torch.arange(2 * 4 * 1, dtype=torch.float).view(2, 4, 1)  # row 0: 0..3, row 1: 4..7
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    assert last_token_pool(h, right).flatten().tolist() == [1.0, 7.0]
    left = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]])
    assert last_token_pool(h, left).flatten().tolist() == [3.0, 7.0]


def test_mean_pool_ignores_padding() -> None:
    h = torch.tensor([[[1.0, 10.0], [3.0, 30.0], [100.0, 100.0]]])  # (1, 3, 2); the last position is padding
    assert mean_pool(h, torch.tensor([[1, 1, 0]])).tolist() == [[2.0, 20.0]]
    assert mean_pool(h, torch.zeros(1, 3)).tolist() == [[0.0, 0.0]]  # an all-padding row stays finite


def test_default_pooling_and_refusal() -> None:
    assert default_pooling(causal=True, pooling=None) == "last"
    assert default_pooling(causal=False, pooling=None) == "cls"
    with pytest.raises(LmlabError, match=r"task\.pooling=last or task\.pooling=mean"):
        default_pooling(causal=True, pooling="cls")


@pytest.mark.parametrize("config", [GPT_TINY, BERT_TINY, LSTM_TINY], ids=["gpt", "bert", "lstm"])
def test_padding_does_not_change_a_texts_logits(config) -> None:
    torch.manual_seed(0)
    task = ClassificationTask(config, num_classes=3, pooling="mean" if config.family == "bert" else None).eval()
    ids = torch.tensor([[3, 4, 5, 6, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0]])
    padded = task(ids, mask)
    alone = task(ids[:, :4], mask[:, :4])
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)
    assert padded.shape == (1, 3)


def test_frozen_backbone_is_unchanged_after_steps() -> None:
    torch.manual_seed(0)
    task = ClassificationTask(GPT_TINY, optimizer=ADAMW, finetune="frozen", head_lr=1e-2)
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    head_before = task.head[1].weight.clone()
    optimizer = task.configure_optimizers()
    for step in range(3):
        optimizer.zero_grad()
        task.training_step(batch(step), step).backward()
        optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in task.model.state_dict().items())
    assert not torch.equal(head_before, task.head[1].weight)
    assert not task.model.training  # no dropout noise in a fixed feature extractor


def test_lora_trains_only_adapters_and_head() -> None:
    torch.manual_seed(0)
    task = ClassificationTask(GPT_TINY, optimizer=ADAMW, finetune="lora", lora_r=4)
    trainable = {n for n, p in task.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    # 2 blocks x (qkv 16->48, attn.proj 16->16, mlp.fc 16->64, mlp.proj 64->16), each with A (r x in) and B (out x r)
    lora = 2 * 4 * ((16 + 48) + (16 + 16) + (16 + 64) + (64 + 16))
    head = 16 * 2 + 2
    assert sum(p.numel() for p in task.parameters() if p.requires_grad) == lora + head
    frozen = {k: v.clone() for k, v in task.model.state_dict().items() if "lora_" not in k}
    optimizer = task.configure_optimizers()
    for step in range(2):
        optimizer.zero_grad()
        task.training_step(batch(step), step).backward()
        optimizer.step()
    assert all(torch.equal(v, task.model.state_dict()[k]) for k, v in frozen.items())


def test_lora_merges_into_the_plain_backbone() -> None:
    torch.manual_seed(0)
    task = ClassificationTask(GPT_TINY, finetune="lora", lora_r=4, lora_alpha=8).eval()
    for name, param in task.model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param)  # B starts at zero; make the adapters matter
    plain = build_model(GPT_TINY).eval()
    plain.load_state_dict(merge_lora_state(task.model.state_dict(), scale=8 / 4))
    ids = torch.randint(0, 20, (2, 10))
    torch.testing.assert_close(plain.hidden_states(ids), task.model.hidden_states(ids), atol=1e-4, rtol=1e-4)


def test_lora_needs_linear_blocks() -> None:
    assert block_linear_names(build_model(LSTM_TINY)) == []
    with pytest.raises(LmlabError, match=r"task\.finetune=full or task\.finetune=frozen"):
        ClassificationTask(LSTM_TINY, finetune="lora")


def test_head_and_backbone_learning_rates() -> None:
    task = ClassificationTask(GPT_TINY, optimizer=ADAMW, head_lr=5e-3, weight_decay=0.05)
    optimizer = task.configure_optimizers()
    head_params = {id(p) for p in task.head.parameters()}
    for group in optimizer.param_groups:
        in_head = {id(p) in head_params for p in group["params"]}
        assert len(in_head) == 1  # no group mixes head and backbone
        assert group["lr"] == (5e-3 if in_head == {True} else 1e-3)
        assert group["weight_decay"] == (0.05 if group["params"][0].dim() >= 2 else 0.0)
    grouped = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    assert grouped == sum(p.numel() for p in task.parameters())


def test_class_weights() -> None:
    assert class_weight_list(None, [3, 1], 2) is None
    assert class_weight_list("balanced", [3, 1], 2) == [4 / 6, 4 / 2]
    assert class_weight_list([1, 2.5], None, 2) == [1.0, 2.5]
    with pytest.raises(LmlabError, match="one non-negative weight per class"):
        class_weight_list([1.0], None, 2)
    task = ClassificationTask(GPT_TINY, class_weights="balanced", class_counts=[3, 1])
    logits, labels = torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([1, 0])
    expected = torch.nn.functional.cross_entropy(logits, labels, weight=torch.tensor([4 / 6, 2.0]))
    torch.testing.assert_close(task.loss(logits, labels), expected)


def test_ngram_cannot_be_finetuned() -> None:
    with pytest.raises(LmlabError, match=r"model=ngram .* use model=gpt, lstm, bert or hf_encoder"):
        ClassificationTask(NGramConfig(vocab_size=20, order=3))


def test_unknown_mode_and_single_class() -> None:
    with pytest.raises(LmlabError, match=r"task\.finetune='partial' is unknown"):
        ClassificationTask(GPT_TINY, finetune="partial")
    with pytest.raises(LmlabError, match="at least two classes"):
        ClassificationTask(GPT_TINY, num_classes=1)


def test_label_names_are_hyper_parameters() -> None:
    task = ClassificationTask(LSTM_TINY, num_classes=3, label_names=["neg", "neu", "pos"])
    assert task.hparams["label_names"] == ["neg", "neu", "pos"] and task.hparams["pooling"] == "last"
    assert task.head[1].in_features == 12  # the LSTM's n_hidden
