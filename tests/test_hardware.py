"""Hardware profiles and levers: refusals on the wrong machine, precision warnings, the strategies each profile
builds, fused AdamW, activation checkpointing, and (slow) `model.compile=true`."""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from pytorch_lightning.strategies import DDPStrategy

from lmlab.cli.train import build_datamodule, build_task, build_trainer
from lmlab.compute import hardware
from lmlab.compute.hardware import check_hardware, strategy_name
from lmlab.compute.parallel import FSDP2Strategy
from lmlab.errors import LmlabError
from lmlab.models import GPT, GPTConfig
from lmlab.tasks.base import fused_option
from tests.helpers.compose import compose_train


@pytest.mark.skipif(torch.cuda.is_available(), reason="refusal of CUDA profiles needs a machine without CUDA")
@pytest.mark.parametrize("profile", ["gpu", "ddp", "fsdp", "deepspeed", "multinode"], ids=lambda p: f"hardware={p}")
def test_cuda_profiles_refuse_a_cpu_machine(cfg_train, tmp_path: Path, tiny_corpus: Path, profile: str) -> None:
    cfg = compose_train(tmp_path, [f"hardware={profile}", "data=text_files", f"data.corpus.paths=[{tiny_corpus}]"])
    with pytest.raises(LmlabError, match=r"needs a CUDA GPU and none is visible; use hardware=cpu"):
        build_trainer(cfg)


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="deepspeed is installed")
def test_deepspeed_without_its_package_names_the_install() -> None:
    with pytest.raises(LmlabError, match=r"needs the `deepspeed` package.*pip install deepspeed"):
        check_hardware("cpu", {"_target_": "pytorch_lightning.strategies.DeepSpeedStrategy", "stage": 3})


def test_strategy_names() -> None:
    assert strategy_name("ddp") == "ddp"
    assert strategy_name({"_target_": "pytorch_lightning.strategies.DeepSpeedStrategy"}) == "deepspeedstrategy"
    assert strategy_name(DDPStrategy()) == "ddpstrategy"


@pytest.mark.parametrize(
    ("profile", "strategy", "nodes"),
    [("ddp", DDPStrategy, 1), ("fsdp", FSDP2Strategy, 1), ("multinode", DDPStrategy, 2), ("ddp_cpu", DDPStrategy, 1)],
)
def test_profiles_build_their_strategy(tmp_path: Path, tiny_corpus: Path, profile: str, strategy: type, nodes: int):
    """CUDA profiles pointed at the CPU (so they build here) still configure the strategy they promise."""
    cfg = compose_train(
        tmp_path,
        [f"hardware={profile}", "trainer.accelerator=cpu", "trainer.precision=32-true", "data=text_files",
         f"data.corpus.paths=[{tiny_corpus}]"],
    )  # fmt: skip
    trainer = build_trainer(cfg)
    assert isinstance(trainer.strategy, strategy) and trainer.num_nodes == nodes


def test_half_precision_on_cpu_warns_once(monkeypatch, caplog) -> None:
    hardware.warn_slow_cpu_precision.cache_clear()
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="lmlab"):
        check_hardware("cpu", "auto", "16-mixed")
        check_hardware("cpu", "auto", "16-mixed")
        check_hardware("cpu", "auto", "32-true")
    messages = [r.getMessage() for r in caplog.records]
    assert sum("runs as bf16" in m for m in messages) == 1
    assert sum("very slow" in m and "trainer.precision=32-true" in m for m in messages) == 1
    hardware.warn_slow_cpu_precision.cache_clear()


def test_fused_adamw_on_cuda_and_cpu_when_left_to_lmlab() -> None:
    auto = functools.partial(torch.optim.AdamW, lr=1e-3, fused=None)
    assert fused_option(auto, torch.device("cuda")) == {"fused": True}
    assert fused_option(auto, torch.device("cpu")) == {"fused": True}
    assert fused_option(auto, torch.device("meta")) == {}  # no fused kernel there: torch's default
    assert fused_option(functools.partial(torch.optim.AdamW, fused=False), torch.device("cuda")) == {}
    assert fused_option(functools.partial(torch.optim.SGD, lr=0.1), torch.device("cuda")) == {}
    assert fused_option(functools.partial(torch.optim.SGD, lr=0.1, fused=None), torch.device("cuda")) == {}
    assert fused_option(functools.partial(torch.optim.Adam, fused=None), torch.device("cpu")) == {"fused": True}
    assert fused_option(auto, torch.device("cuda"), loss_scaling=True) == {}  # fp16: Lightning could not clip


def test_bf16_mixed_clips_the_gradients_of_a_fused_adamw(tmp_path: Path, tiny_corpus: Path, monkeypatch) -> None:
    """Lightning's mixed-precision plugin refuses to clip for a fused optimizer (the CUDA default) even under bf16,
    which has no loss scaler; lmlab clips as in fp32 (fused AdamW runs on CPU too, so this runs here)."""
    clipped: list[float] = []
    clip = torch.nn.utils.clip_grad_norm_

    def spy(parameters, max_norm, *args, **kwargs):
        clipped.append(max_norm)
        return clip(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    cfg = compose_train(
        tmp_path,
        ["data=text_files", f"data.corpus.paths=[{tiny_corpus}]", "trainer.max_steps=2", "logger=none",
         "trainer.precision=bf16-mixed", "optimizer.fused=true", "trainer.gradient_clip_val=0.5"],
    )  # fmt: skip
    task, loss = fit(cfg)
    assert task.trainer.optimizers[0].defaults["fused"] is True and math.isfinite(loss)
    assert clipped == [0.5, 0.5]


def test_optimizer_config_leaves_fused_to_lmlab(cfg_train) -> None:
    datamodule = build_datamodule(cfg_train)
    task = build_task(cfg_train, datamodule.tokenizer, datamodule)
    optimizer = task.configure_optimizers()["optimizer"]
    assert cfg_train.optimizer.fused is None and optimizer.defaults["fused"] is True  # CPU: the fused kernel too
    forced = OmegaConf.merge(cfg_train, {"optimizer": {"fused": False}})
    optimizer = build_task(forced, datamodule.tokenizer, datamodule).configure_optimizers()["optimizer"]
    assert optimizer.defaults["fused"] is False  # the config's choice wins


def loss_and_grads(checkpointing: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.1)
    config.activation_checkpointing = checkpointing
    model = GPT(config).train()
    ids = torch.randint(0, 32, (3, 16), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(2)  # the same dropout masks in both runs
    loss = torch.nn.functional.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    return loss.detach(), [p.grad for p in model.parameters()]


def test_activation_checkpointing_gives_the_same_loss_and_gradients() -> None:
    loss, grads = loss_and_grads(checkpointing=False)
    loss_ckpt, grads_ckpt = loss_and_grads(checkpointing=True)
    assert torch.equal(loss, loss_ckpt)
    assert all(torch.allclose(g, h, atol=1e-7) for g, h in zip(grads, grads_ckpt, strict=True))
    assert any(g.abs().sum() > 0 for g in grads)


def fit(cfg) -> tuple[pl.LightningModule, float]:
    pl.seed_everything(cfg.seed)  # the same initial weights in every call
    datamodule = build_datamodule(cfg)
    task = build_task(cfg, datamodule.tokenizer, datamodule)
    trainer = build_trainer(cfg)
    trainer.fit(task, datamodule=datamodule)
    return task, float(trainer.callback_metrics["train/loss"])


MASKED_LM = ["model=bert", "model.dropout=0", "task=masked_lm", "tokenizer.special_tokens=['<mask>']"]  # no dropout:
# compiled dropout draws from another random stream


@pytest.mark.slow
@pytest.mark.parametrize("objective", [[], MASKED_LM], ids=["causal_lm", "masked_lm"])
def test_compile_trains_the_inner_model(tmp_path: Path, tiny_corpus: Path, objective: list[str]) -> None:
    from lmlab.tasks.base import token_cross_entropy

    data = ["data=text_files", f"data.corpus.paths=[{tiny_corpus}]", "trainer.max_steps=3", "logger=none", *objective]
    eager, eager_loss = fit(compose_train(tmp_path / "eager", data))
    task, compiled_loss = fit(compose_train(tmp_path / "compiled", [*data, "model.compile=true"]))
    assert task.model._compiled_call_impl is not None  # the nn.Module, not the LightningModule, was compiled
    assert not hasattr(task, "_orig_mod") and "model.wte.weight" in task.state_dict()  # checkpoint keys unchanged
    assert eager.token_loss is token_cross_entropy  # and the token loss with it (fused log-softmax and gradient)
    assert task.token_loss._torchdynamo_orig_callable is token_cross_entropy
    assert compiled_loss == pytest.approx(eager_loss, abs=1e-4)


@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_bf16_compile_and_fused_adamw(tmp_path: Path, tiny_corpus: Path) -> None:
    """On a CUDA machine: hardware=gpu (bf16-mixed) with model.compile=true trains, with the fused AdamW kernel."""
    cfg = compose_train(
        tmp_path,
        ["hardware=gpu", "model.compile=true", "data=text_files", f"data.corpus.paths=[{tiny_corpus}]", "logger=none"],
    )
    task, loss = fit(cfg)
    assert task.model._compiled_call_impl is not None and math.isfinite(loss)
    assert task.trainer.optimizers[0].defaults["fused"] is True


@pytest.mark.gpu
def test_gpu_steps_between_logging_steps_never_wait_for_the_gpu(tmp_path: Path, tiny_corpus: Path) -> None:
    """With the safety callbacks `lmlab train` adds, a step that logs nothing makes no host-device synchronisation
    (torch's sync debug mode flags each one): the non-finite check goes to fused AdamW and is read a step later, and
    the progress bar reads CPU values. Logging steps (every 5 here) may wait once."""
    import linecache
    import warnings

    from lmlab.callbacks import safety_callbacks

    def drains(caught: list) -> int:
        """Synchronisations, less the deferred check's wait for the previous step's flags (the GPU keeps the steps
        queued since then)."""
        syncs = [w for w in caught if "synchroniz" in str(w.message)]  # "called a synchronizing CUDA operation"
        return sum("event.synchronize()" not in linecache.getline(w.filename, w.lineno) for w in syncs)

    class SyncsPerStep(pl.Callback):
        def __init__(self, caught: list) -> None:
            self.caught, self.per_step = caught, {}

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.per_step[trainer.global_step] = drains(self.caught)  # cumulative count after this step

    cfg = compose_train(
        tmp_path,
        ["hardware=gpu", "data=text_files", f"data.corpus.paths=[{tiny_corpus}]", "trainer.max_steps=24",
         "trainer.log_every_n_steps=5", "+trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0",
         "logger=none"],
    )  # fmt: skip
    datamodule = build_datamodule(cfg)
    task = build_task(cfg, datamodule.tokenizer, datamodule)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        counter = SyncsPerStep(caught)
        trainer = build_trainer(cfg, [counter, *safety_callbacks()])
        torch.cuda.set_sync_debug_mode("warn")
        try:
            trainer.fit(task, datamodule=datamodule)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    counts = counter.per_step
    quiet = [s for s in range(3, 24) if s % 5 not in (0, 1) and s - 1 in counts]  # steps s-1 → s, no logging
    syncs = {s: counts[s] - counts[s - 1] for s in quiet}
    assert quiet and all(n == 0 for n in syncs.values()), syncs
