from __future__ import annotations

import functools
import math

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lmlab.errors import LmlabError
from lmlab.models import GPTConfig
from lmlab.tasks import CausalLMTask, decay_groups, warmup_cosine, warmup_cosine_factor

CONFIG = GPTConfig(vocab_size=13, block_size=12, n_layer=2, n_head=2, n_embd=32)


def make_task(**kwargs) -> CausalLMTask:
    optimizer = functools.partial(torch.optim.AdamW, lr=3e-3)
    return CausalLMTask(CONFIG, optimizer=optimizer, **kwargs)


def test_weight_decay_only_on_matrices() -> None:
    task = make_task()
    decay, no_decay = decay_groups(task.model, 0.1)
    assert all(p.dim() >= 2 for p in decay["params"]) and decay["weight_decay"] == 0.1
    assert all(p.dim() < 2 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
    assert len(no_decay["params"]) == 2 * CONFIG.n_layer + 1  # LayerNorm gains, no biases
    n_all = sum(p.numel() for p in task.model.parameters())
    assert sum(p.numel() for g in (decay, no_decay) for p in g["params"]) == n_all


def test_overfits_one_batch() -> None:
    torch.manual_seed(0)
    x = torch.randint(0, 13, (4, 13))
    data = DataLoader(TensorDataset(x[:, :-1], x[:, 1:]), batch_size=4)
    task = make_task()
    trainer = pl.Trainer(
        max_steps=150,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(task, train_dataloaders=data)
    assert trainer.callback_metrics["train/loss"] < 0.2  # starts near ln(13) = 2.56


def test_bpb_of_uniform_model_is_log2_vocab_times_tokens_per_byte() -> None:
    token_bytes = [1, 2, 3] + [1] * 10
    task = make_task(token_bytes=token_bytes)
    with torch.no_grad():
        for p in task.model.parameters():
            p.zero_()  # all logits 0: uniform over 13 ids
    y = torch.randint(0, 13, (3, 12))
    task.validation_step((torch.zeros_like(y), y), 0)
    logged = {}
    task.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
    task.on_validation_epoch_end()
    n_bytes = sum(token_bytes[i] for i in y.flatten().tolist())
    assert logged["val/loss"] == pytest.approx(math.log(13), rel=1e-5)
    assert logged["val/ppl"] == pytest.approx(13, rel=1e-4)
    assert logged["val/bpb"] == pytest.approx(math.log2(13) * y.numel() / n_bytes, rel=1e-5)


def test_warmup_cosine_shape() -> None:
    f = functools.partial(warmup_cosine_factor, warmup_steps=10, total_steps=110, min_ratio=0.1)
    assert f(0) == pytest.approx(1 / 11)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.55)
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(10, 120))


def test_warmup_cosine_refuses_min_lr_above_peak() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    with pytest.raises(LmlabError, match="min_lr"):
        warmup_cosine(optimizer, warmup_steps=0, total_steps=10, min_lr=1e-2)
    with pytest.raises(LmlabError, match="max_steps"):
        warmup_cosine(optimizer, warmup_steps=0, total_steps=-1, min_lr=1e-4)


def test_hparams_are_plain_data() -> None:
    task = make_task()
    assert task.hparams["model"] == {"family": "gpt", **CONFIG.__dict__}
    rebuilt = CausalLMTask(task.hparams["model"])
    assert rebuilt.model_config == CONFIG
