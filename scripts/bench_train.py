"""Throughput of lmlab's Trainer path against a minimal plain-PyTorch loop, measured side by side.

    python scripts/bench_train.py                       # the default experiment's model (4/4/128, block 64)
    python scripts/bench_train.py --steps 300 --rounds 3 model.n_layer=6 model.n_head=6 model.n_embd=384

Both paths train the same initial weights on the same batches with the same optimizer, schedule and gradient
clipping; rounds alternate which path goes first. Only steady-state steps count (the first `--warmup` steps of each
segment are dropped). Prints tokens/s of each path per round, the medians and their ratio.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Iterator

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from lmlab.cli.configs import config_dir
from lmlab.cli.train import build_datamodule, build_task, build_trainer
from lmlab.tasks import CausalLMTask, decay_groups


class StepTimer(pl.Callback):
    """Wall time from the start of step `warmup` to the end of the last step."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end = warmup, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.end = time.perf_counter()


def compose_config(steps: int, overrides: list[str], tmp: str) -> DictConfig:
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose("train", overrides=["logger=csv", *overrides])  # W&B is timed by neither path
    with open_dict(cfg):
        cfg.paths.output_dir = tmp
        cfg.trainer.max_steps = steps
        cfg.trainer.limit_val_batches = 0  # training throughput only
        cfg.trainer.num_sanity_val_steps = 0
        cfg.trainer.enable_model_summary = False
        if "model_checkpoint" in (cfg.get("callbacks") or {}):
            cfg.callbacks.model_checkpoint.save_last = False
    return cfg


def batches(datamodule, steps: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    loader = datamodule.train_dataloader()
    for _, batch in zip(range(steps), loader, strict=False):
        yield batch


def plain_loop(task: CausalLMTask, cfg: DictConfig, datamodule, steps: int, warmup: int) -> float:
    """The minimal loop a user would write: same model, data, optimizer, schedule and clipping."""
    from hydra.utils import instantiate

    model = task.model
    model.train()
    optimizer = instantiate(cfg.optimizer)(decay_groups(model, cfg.task.weight_decay))
    scheduler = instantiate(cfg.scheduler)(optimizer)
    start = 0.0
    for step, (x, y) in enumerate(batches(datamodule, steps)):
        if step == warmup:
            start = time.perf_counter()
        logits = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.gradient_clip_val)
        optimizer.step()
        scheduler.step()
    return time.perf_counter() - start


def lightning_path(task: CausalLMTask, cfg: DictConfig, datamodule, warmup: int) -> float:
    timer = StepTimer(warmup)
    trainer = build_trainer(cfg, [timer])
    trainer.fit(task, datamodule=datamodule)
    return timer.end - timer.start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="steps per segment")
    parser.add_argument("--warmup", type=int, default=50, help="steps dropped at the start of each segment")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model.n_layer=6")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import tempfile

    tmp = tempfile.mkdtemp(prefix="lmlab-bench-")
    cfg = compose_config(args.steps, args.overrides, tmp)
    datamodule = build_datamodule(cfg)
    torch.manual_seed(0)
    initial = build_task(cfg, datamodule.tokenizer)
    tokens = (args.steps - args.warmup) * cfg.data.batch_size * cfg.model.block_size
    params = initial.model.num_parameters()
    print(f"model: {params / 1e6:.2f} M parameters, {cfg.data.batch_size}x{cfg.model.block_size} tokens/step, "
          f"{args.threads} threads, {args.steps - args.warmup} timed steps per segment")  # fmt: skip

    results: dict[str, list[float]] = {"plain": [], "lmlab": []}
    for round_ in range(args.rounds):
        order = ["plain", "lmlab"] if round_ % 2 == 0 else ["lmlab", "plain"]
        for path in order:
            task = copy.deepcopy(initial)
            if path == "plain":
                seconds = plain_loop(task, cfg, datamodule, args.steps, args.warmup)
            else:
                seconds = lightning_path(task, cfg, datamodule, args.warmup)
            results[path].append(tokens / seconds)
            print(f"round {round_ + 1} {path:>5}: {tokens / seconds:10.0f} tokens/s")
    plain, lmlab = statistics.median(results["plain"]), statistics.median(results["lmlab"])
    print(f"median plain PyTorch: {plain:.0f} tokens/s")
    print(f"median lmlab Trainer: {lmlab:.0f} tokens/s")
    paired = statistics.median(a / b for a, b in zip(results["lmlab"], results["plain"], strict=True))
    print(f"ratio lmlab/plain: {lmlab / plain:.3f} (medians), {paired:.3f} (median of per-round ratios)")


if __name__ == "__main__":
    main()
