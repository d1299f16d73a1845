"""Masked-LM: BERT's masking statistics and the task's refusals."""

from __future__ import annotations

import functools
import re

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from lmlab.errors import LmlabError
from lmlab.models import BertConfig, GPTConfig, LSTMConfig
from lmlab.tasks import CausalLMTask, MaskedLMTask, mask_tokens
from lmlab.tasks.masked_lm import IGNORE


def test_masking_statistics_are_15_80_10_10() -> None:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 100, (256, 256), generator=generator)  # 65,536 tokens
    inputs, labels = mask_tokens(ids, mask_id=100, replacement_ids=torch.arange(100), generator=generator)
    selected = labels != IGNORE
    assert (labels[selected] == ids[selected]).all() and (inputs[~selected] == ids[~selected]).all()
    n = selected.sum().item()
    masked = (inputs[selected] == 100).sum().item() / n
    kept = (inputs[selected] == ids[selected]).sum().item() / n
    assert n / ids.numel() == pytest.approx(0.15, abs=0.005)
    assert masked == pytest.approx(0.80, abs=0.01)
    # random replacements equal the original 1 % of the time, so "kept" is 10 % + 10 % * 1 %
    assert kept == pytest.approx(0.10 + 0.001, abs=0.01)
    assert 1 - masked - kept == pytest.approx(0.10 - 0.001, abs=0.01)


@pytest.mark.parametrize(("block", "expected"), [(256, 38), (64, 10), (8, 1), (3, 1)])
def test_every_window_predicts_the_same_number_of_tokens(block: int, expected: int) -> None:
    generator = torch.Generator().manual_seed(block)
    ids = torch.randint(0, 100, (32, block), generator=generator)
    _, labels = mask_tokens(ids, mask_id=100, replacement_ids=torch.arange(100), generator=generator)
    assert ((labels != IGNORE).sum(-1) == expected).all()  # round(0.15 * block), at least one


def test_masked_lm_loss_under_accumulation_is_the_global_batch_mean() -> None:
    """Mean of two half-batch losses == loss over every masked token of the batch (the accumulation identity)."""
    torch.manual_seed(0)
    task = make_masked(BERT, mask_id=19)
    inputs, labels = task.masked(torch.randint(0, 19, (6, BERT.block_size)), torch.Generator().manual_seed(0))
    logits = task(inputs).float()  # (B, T, V)

    def loss(rows: slice) -> torch.Tensor:
        return F.cross_entropy(logits[rows].flatten(0, 1), labels[rows].flatten(), ignore_index=IGNORE)

    assert ((loss(slice(0, 3)) + loss(slice(3, 6))) / 2).item() == pytest.approx(loss(slice(0, 6)).item(), rel=1e-6)


def test_random_replacements_avoid_special_ids() -> None:
    generator = torch.Generator().manual_seed(1)
    ids = torch.zeros(64, 64, dtype=torch.long)
    allowed = torch.tensor([5, 6])
    inputs, _ = mask_tokens(ids, 9, allowed, mask_prob=0.0, random_prob=1.0, generator=generator)
    assert set(inputs.unique().tolist()) == {0, 5, 6}


def make_masked(model, **kwargs) -> MaskedLMTask:
    return MaskedLMTask(model, optimizer=functools.partial(torch.optim.AdamW, lr=1e-3), **kwargs)


BERT = BertConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=16)


def test_masked_lm_refuses_causal_models() -> None:
    for config in (GPTConfig(vocab_size=20), LSTMConfig(vocab_size=20)):
        with pytest.raises(LmlabError, match="task=masked_lm needs a bidirectional encoder"):
            make_masked(config, mask_id=19)


def test_causal_lm_refuses_encoders() -> None:
    with pytest.raises(LmlabError, match="use task=masked_lm"):
        CausalLMTask(BERT)


def test_masked_lm_needs_a_mask_token() -> None:
    with pytest.raises(LmlabError, match=re.escape("tokenizer.special_tokens=['<mask>']")):
        make_masked(BERT, mask_id=None)


def test_masked_lm_learns_and_reports_accuracy() -> None:
    torch.manual_seed(0)
    task = make_masked(BERT, mask_id=19, special_ids=[19])
    x = torch.arange(8).repeat(64, 1) % 19  # a fixed, learnable pattern, (64, 8)
    data = DataLoader(TensorDataset(x, x), batch_size=16)
    trainer = pl.Trainer(
        max_steps=200, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, val_check_interval=100, check_val_every_n_epoch=None,
    )  # fmt: skip
    trainer.fit(task, train_dataloaders=data, val_dataloaders=data)
    metrics = trainer.callback_metrics
    assert metrics["val/mlm_acc"] > 0.9 and metrics["val/mlm_loss"] == metrics["val/loss"] < 1.0
    assert task.last_val_step == 200
