"""Training throughput of lmlab's Trainer path against a plain PyTorch loop and Hugging Face's `Trainer`, and MFU.

    python scripts/bench_train.py                  # CPU, fp32: the comparisons below, 7 rounds (~8 min on 2 cores)
    python scripts/bench_train.py --rounds 5 --threads 2
    python scripts/bench_train.py --hook-points    # CPU: the default GPT with its hook points vs without (~3 min)
    python scripts/bench_train.py --gpu            # CUDA: the 124 M GPT-2 shape in bf16, tokens/s and MFU
    python scripts/bench_train.py --gpu model.compile=true data.batch_size=32 --plain --hf   # + a hand-written
                                                   # loop and HF's Trainer on the same batches

CPU mode measures side by side in one run; each round runs every path once, in a rotated order, and the ratios
are the medians of per-round ratios (the machine's speed drifts between rounds, a pair within a round much less):
  (a) lmlab (Trainer, default callbacks and CSV logger) vs a minimal plain-PyTorch loop with the same model,
      initial weights, batches, AdamW, schedule and clipping, for the default experiment's GPT (4/4/128) and a
      6/6/384 GPT (with biases, so that (b) compares the same shape);
  (b) lmlab vs `transformers.Trainer` training a `GPT2LMHeadModel` of the 6/6/384 shape (SDPA attention, exact
      GELU, no dropout) on the same windows: fp32, CPU, no evaluation, no saving, no logging;
  (c) MFU of lmlab's 6/6/384 GPT: achieved model FLOP/s (6·N + attention per token, `lmlab.models.flops`) over the
      fp32 matmul peak measured in the same round (2048² products).
Only steady-state steps count: the first `--warmup` steps of each segment are dropped.

`--hook-points` times the default experiment's GPT through lmlab's Trainer path as it is, with the interpretability
hook points (`HookPoint`, ~55 per forward pass) present but unused, against the same model with every hook point
bypassed (its call replaced by a plain identity function, as if the calls were not there); rounds rotate the order,
and the ratio is the median of per-round ratios (target: >= 0.99).

GPU mode trains the GPT-2 small shape (12/12/768, block 1024, vocabulary 50,304 as nanoGPT pads it) through
lmlab's Trainer path on random tokens with `hardware=gpu` (bf16-mixed) unless overridden, and prints steady-state
tokens/s and MFU against the GPU's peak from Lightning's table; `--plain` and `--hf` time a hand-written loop and
`transformers.Trainer` (bf16, a `GPT2LMHeadModel` of the same shape) on the same batches.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from lmlab.cli.train import build_datamodule, build_task, build_trainer
from lmlab.compute.perf import cpu_matmul_flops
from lmlab.config.groups import config_dir
from lmlab.tasks import decay_groups
from lmlab.tasks.base import fused_option, token_cross_entropy

BIG = ["model.n_layer=6", "model.n_head=6", "model.n_embd=384", "model.bias=true"]
TARGETS = {"plain": 0.97, "hf": 1.3, "mfu": 0.60}


class StepTimer(pl.Callback):
    """Wall time from the start of optimizer step `warmup` to the end of the last step."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end = warmup, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup and not self.start:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.end = time.perf_counter()


def compose_config(steps: int, overrides: list[str], tmp: str) -> DictConfig:
    """`lmlab train`'s config with a training-only budget (no validation, no saved checkpoint, CSV logs)."""
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose("train", overrides=["logger=csv", *overrides])  # W&B is timed by no path
    with open_dict(cfg):
        cfg.paths.output_dir = tmp
        cfg.trainer.max_steps = steps
        cfg.trainer.limit_val_batches = 0  # training throughput only
        cfg.trainer.num_sanity_val_steps = 0
        cfg.trainer.enable_model_summary = False
        if "model_checkpoint" in (cfg.get("callbacks") or {}):
            cfg.callbacks.model_checkpoint.save_last = False
    return cfg


def fixed_batches(datamodule: Any, steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first `steps` training batches, so every path trains on the same windows."""
    return [batch for _, batch in zip(range(steps), datamodule.train_dataloader(), strict=False)]


def plain_loop(model: torch.nn.Module, cfg: DictConfig, batches: list, warmup: int) -> float:
    """The minimal loop a user would write: same model, data, optimizer (the same AdamW kernel lmlab picks: the
    ratio measures the framework, not the kernel), schedule and clipping."""
    from hydra.utils import instantiate

    model.train()
    factory = instantiate(cfg.optimizer)
    optimizer = factory(decay_groups(model, cfg.task.weight_decay), **fused_option(factory, torch.device("cpu")))
    scheduler = instantiate(cfg.scheduler)(optimizer)
    start = 0.0
    for step, (x, y) in enumerate(batches):
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


def lmlab_path(task: pl.LightningModule, cfg: DictConfig, batches: list, warmup: int) -> float:
    """lmlab's Trainer path (the hardware profile, callbacks and logger of `cfg`) over the same batches."""
    from lmlab.callbacks import safety_callbacks

    timer = StepTimer(warmup)
    trainer = build_trainer(cfg, [timer, *safety_callbacks()])  # what `lmlab train` adds: RNG state, signals, NaN stop
    trainer.fit(task, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))  # as they are
    return timer.end - timer.start


def hf_model(cfg: DictConfig, vocab_size: int) -> torch.nn.Module:
    """A `GPT2LMHeadModel` of the lmlab GPT's shape (biases, tied head, exact GELU, SDPA, no dropout)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab_size, n_positions=cfg.model.block_size, n_embd=cfg.model.n_embd, n_layer=cfg.model.n_layer,
        n_head=cfg.model.n_head, activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        use_cache=False, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    try:
        return GPT2LMHeadModel(config, attn_implementation="sdpa")
    except (TypeError, ValueError):
        return GPT2LMHeadModel(config)


def hf_trainer_path(
    model: torch.nn.Module, cfg: DictConfig, batches: list, warmup: int, tmp: str, compile: bool = False
) -> float:
    """`transformers.Trainer` on the same windows (input_ids = x; the model shifts its labels), AdamW with the same
    hyper-parameters, cosine schedule and clipping; no evaluation, saving or logging. On CUDA it trains in bf16 when
    `cfg` does (`bf16=True`, HF's mixed precision) and compiles the model when `compile` is set; the rest is HF's
    defaults (fused AdamW with torch >= 2.8, its own data loader)."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class Timer(TrainerCallback):
        start = end = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == warmup and not self.start:
                synchronize()
                Timer.start = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            synchronize()
            Timer.end = time.perf_counter()

    rows = [{"input_ids": x[i], "labels": x[i]} for x, _ in batches for i in range(x.size(0))]
    opt, cuda = cfg.optimizer, torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=tmp, max_steps=len(batches), per_device_train_batch_size=batches[0][0].size(0),
        learning_rate=opt.lr, weight_decay=cfg.task.weight_decay, adam_beta1=opt.betas[0], adam_beta2=opt.betas[1],
        adam_epsilon=opt.eps, lr_scheduler_type="cosine", warmup_steps=cfg.scheduler.get("warmup_steps", 0),
        max_grad_norm=cfg.trainer.gradient_clip_val, logging_strategy="no", save_strategy="no", eval_strategy="no",
        report_to="none", disable_tqdm=True, use_cpu=not cuda, dataloader_pin_memory=cuda, seed=cfg.seed,
        bf16=cuda and str(cfg.trainer.precision) == "bf16-mixed", torch_compile=compile,
    )  # fmt: skip
    Trainer(model=model, args=args, train_dataset=rows, callbacks=[Timer()]).train()
    return Timer.end - Timer.start


def round_robin(paths: dict[str, Callable[[], float]], round_: int) -> dict[str, float]:
    """Run each path once, starting at a different one each round; returns seconds per path."""
    names = list(paths)
    order = names[round_ % len(names) :] + names[: round_ % len(names)]
    return {name: paths[name]() for name in order}


def cpu_bench(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    tmp = tempfile.mkdtemp(prefix="lmlab-bench-")
    setups = {}
    for name, overrides, steps in (("default", [], args.steps), ("6/6/384", BIG, args.big_steps)):
        cfg = compose_config(steps, [*overrides, *args.overrides], tmp)
        datamodule = build_datamodule(cfg)
        torch.manual_seed(0)
        task = build_task(cfg, datamodule.tokenizer)
        batches = fixed_batches(datamodule, steps)
        warmup = args.warmup if name == "default" else args.big_warmup
        tokens = (steps - warmup) * batches[0][0].numel()
        setups[name] = SimpleNamespace(cfg=cfg, task=task, batches=batches, warmup=warmup, tokens=tokens,
                                       vocab=datamodule.tokenizer.vocab_size)  # fmt: skip
        x = batches[0][0]
        print(f"{name}: {task.model.num_parameters() / 1e6:.2f} M parameters, batch {x.size(0)}x{x.size(1)}, "
              f"{steps - warmup} timed steps per segment")  # fmt: skip
    big = setups["6/6/384"]
    big.hf_initial = hf_model(big.cfg, big.vocab)
    print(f"threads: {args.threads}; rounds: {args.rounds}")

    results: dict[str, list[float]] = {}
    for round_ in range(args.rounds):
        peak = cpu_matmul_flops.__wrapped__(threads=args.threads)  # measured again each round, not cached
        for name, s in setups.items():
            with open_dict(s.cfg):
                s.cfg.callbacks.throughput.peak_flops = peak  # no calibration inside the lmlab path
            paths = {
                "plain": lambda s=s: plain_loop(copy.deepcopy(s.task).model, s.cfg, s.batches, s.warmup),
                "lmlab": lambda s=s: lmlab_path(copy.deepcopy(s.task), s.cfg, s.batches, s.warmup),
            }
            if name == "6/6/384":
                paths["hf"] = lambda s=s: hf_trainer_path(copy.deepcopy(s.hf_initial), s.cfg, s.batches, s.warmup, tmp)
            for path, seconds in round_robin(paths, round_).items():
                results.setdefault(f"{name} {path}", []).append(s.tokens / seconds)
        r = {k: v[-1] for k, v in results.items()}
        mfu = r["6/6/384 lmlab"] * big.task.model.flops_per_token() / peak
        results.setdefault("mfu", []).append(mfu)
        results.setdefault("peak", []).append(peak)
        speeds = ", ".join(f"{k} {v:,.0f}" for k, v in r.items() if k not in ("mfu", "peak"))
        print(f"round {round_ + 1}: peak {peak / 1e9:.1f} GFLOP/s; {speeds} tokens/s; MFU {mfu:.1%}")
    report(results, big.task.model.flops_per_token())


@contextlib.contextmanager
def hook_points_bypassed() -> Iterator[None]:
    """Every `HookPoint` called as a plain function instead of an `nn.Module` (what the model cost without them)."""
    from lmlab.models.layers import HookPoint

    HookPoint.__call__ = lambda self, x: x
    try:
        yield
    finally:
        del HookPoint.__call__


def hook_points_bench(args: argparse.Namespace) -> None:
    """Training tokens/s of the default GPT with its hook points present (unused) vs bypassed, side by side."""
    torch.set_num_threads(args.threads)
    tmp = tempfile.mkdtemp(prefix="lmlab-bench-hooks-")
    cfg = compose_config(args.steps, list(args.overrides), tmp)
    datamodule = build_datamodule(cfg)
    torch.manual_seed(0)
    task = build_task(cfg, datamodule.tokenizer)
    batches = fixed_batches(datamodule, args.steps)
    tokens = (args.steps - args.warmup) * batches[0][0].numel()
    with open_dict(cfg):
        cfg.callbacks.throughput.peak_flops = 1e11  # no calibration inside the timed path

    def bypassed() -> float:
        with hook_points_bypassed():
            return lmlab_path(copy.deepcopy(task), cfg, batches, args.warmup)

    paths = {"with hook points": lambda: lmlab_path(copy.deepcopy(task), cfg, batches, args.warmup),
             "bypassed": bypassed}  # fmt: skip
    results: dict[str, list[float]] = {}
    for round_ in range(args.rounds):
        for path, seconds in round_robin(paths, round_).items():
            results.setdefault(path, []).append(tokens / seconds)
        print(f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in results.items()) + " tokens/s")
    ratio = median_ratio(results, "with hook points", "bypassed")
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"\ndefault GPT, {args.steps - args.warmup} timed steps x {args.rounds} rounds: with hook points "
          f"{med['with hook points']:,.0f} tokens/s, bypassed {med['bypassed']:,.0f} tokens/s")  # fmt: skip
    print(f"  {'met ' if ratio >= 0.99 else 'MISS'} with / without >= 0.99: {ratio:.4f} (median of per-round ratios)")


def median_ratio(results: dict[str, list[float]], a: str, b: str) -> float:
    return statistics.median(x / y for x, y in zip(results[a], results[b], strict=True))


def report(results: dict[str, list[float]], flops_per_token: float) -> None:
    """The compact table: median tokens/s per path, median per-round ratios, MFU, and the targets."""
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"\n{'model':<9} {'plain':>10} {'lmlab':>10} {'HF Trainer':>11} {'lmlab/plain':>12} {'lmlab/HF':>9}"
          "   (tokens/s, medians; ratios: medians of per-round ratios)")  # fmt: skip
    checks = []
    for name in ("default", "6/6/384"):
        vs_plain = median_ratio(results, f"{name} lmlab", f"{name} plain")
        checks.append((f"lmlab >= {TARGETS['plain']}x plain loop ({name})", vs_plain, TARGETS["plain"]))
        hf = f"{med[f'{name} hf']:>11,.0f}" if f"{name} hf" in med else f"{'-':>11}"
        vs_hf = ""
        if f"{name} hf" in med:
            ratio = median_ratio(results, f"{name} lmlab", f"{name} hf")
            checks.append((f"lmlab >= {TARGETS['hf']}x HF Trainer ({name})", ratio, TARGETS["hf"]))
            vs_hf = f"{ratio:>9.3f}"
        print(f"{name:<9} {med[f'{name} plain']:>10,.0f} {med[f'{name} lmlab']:>10,.0f} {hf} {vs_plain:>12.3f} {vs_hf}")
    print(f"MFU of lmlab's 6/6/384 GPT: {med['mfu']:.1%} of the measured fp32 matmul peak "
          f"({med['peak'] / 1e9:.1f} GFLOP/s median; {flops_per_token / 1e6:.1f} MFLOP per token)")  # fmt: skip
    checks.append((f"MFU >= {TARGETS['mfu']:.0%} (6/6/384, fp32)", med["mfu"], TARGETS["mfu"]))
    print("\ntargets:")
    for what, value, target in checks:
        print(f"  {'met ' if value >= target else 'MISS'} {what}: {value:.3f}")


class RandomTokens(torch.utils.data.Dataset):
    """`length` random windows (x, y) of `block` tokens: throughput does not depend on what the tokens are."""

    def __init__(self, length: int, block: int, vocab_size: int) -> None:
        self.ids = torch.randint(0, vocab_size, (length, block + 1), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.ids[i, :-1], self.ids[i, 1:]


def plain_gpu_loop(model: torch.nn.Module, cfg: DictConfig, loader: Any, warmup: int) -> float:
    """The hand-written CUDA loop of nanoGPT's kind: the same model (compiled with its loss when the config says
    so, as nanoGPT compiles the loss inside its model), bf16 autocast, fused AdamW, clipping and batches; seconds
    from step `warmup` to the end."""
    from hydra.utils import instantiate

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # CPU: to try the script without a GPU
    model.to(device).train()
    loss_fn = token_cross_entropy
    if cfg.model.get("compile", False):
        model.compile()
        loss_fn = torch.compile(token_cross_entropy)
    optimizer = instantiate(cfg.optimizer)(decay_groups(model, cfg.task.weight_decay), fused=True)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=str(cfg.trainer.precision) == "bf16-mixed")
    start = 0.0
    for step, (x, y) in enumerate(loader):
        if step == warmup:
            synchronize()
            start = time.perf_counter()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast:
            loss = loss_fn(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.gradient_clip_val)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    synchronize()
    return time.perf_counter() - start


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def gpu_bench(args: argparse.Namespace) -> None:
    """The GPT-2 small shape through lmlab's Trainer path (and, with --plain, a hand-written loop of the same model
    and batches): steady-state tokens/s and MFU."""
    from lmlab.callbacks import Throughput

    chosen = {o.split("=", 1)[0] for o in args.overrides}
    base = [o for o in ("model=gpt2_small", "hardware=gpu") if o.split("=")[0] not in chosen]
    tmp = tempfile.mkdtemp(prefix="lmlab-bench-gpu-")
    cfg = compose_config(args.steps, [*base, "scheduler=constant", *args.overrides], tmp)
    vocab = args.vocab_size
    tokenizer = SimpleNamespace(vocab_size=vocab, kind="bpe", token_bytes=lambda: [1] * vocab)
    torch.manual_seed(0)
    task = build_task(cfg, tokenizer)
    initial = copy.deepcopy(task.model) if args.plain else None
    block, batch = cfg.model.block_size, cfg.data.batch_size
    loader = torch.utils.data.DataLoader(RandomTokens(args.steps * batch, block, vocab), batch_size=batch)
    from lmlab.callbacks import safety_callbacks

    timer = StepTimer(args.warmup)
    trainer = build_trainer(cfg, [timer, *safety_callbacks()])  # as `lmlab train` runs: NaN stop, RNG state, signals
    trainer.fit(task, train_dataloaders=loader)
    tokens_per_sec = (args.steps - args.warmup) * batch * block * trainer.world_size / (timer.end - timer.start)
    meter = next((c for c in trainer.callbacks if isinstance(c, Throughput)), None)
    flops = task.model.flops_per_token(block)
    peak = meter.peak_flops if meter is not None else None
    print(
        f"\nGPT-2 small shape: {task.model.num_parameters() / 1e6:.1f} M parameters, batch {batch}x{block}, "
        f"precision {trainer.precision}, {trainer.world_size} device(s), compile={cfg.model.get('compile', False)}"
    )
    print(f"steady state ({args.steps - args.warmup} steps): {tokens_per_sec:,.0f} tokens/s, "
          f"{tokens_per_sec * flops / 1e12:.1f} TFLOP/s model FLOPs")  # fmt: skip
    if peak:
        mfu = tokens_per_sec * flops / peak
        print(f"MFU: {mfu:.1%} of {peak / 1e12:.0f} TFLOP/s peak (target >= 40%: {'met' if mfu >= 0.4 else 'MISS'})")
    else:
        print("MFU: unknown (the GPU is not in Lightning's table; set callbacks.throughput.peak_flops=<FLOP/s>)")
    if torch.cuda.is_available():
        print(f"peak memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB allocated")
    timed = (args.steps - args.warmup) * batch * block
    if initial is not None:
        plain = timed / plain_gpu_loop(initial, cfg, loader, args.warmup)
        print(f"plain PyTorch loop: {plain:,.0f} tokens/s ({plain * flops / 1e12:.1f} TFLOP/s); "
              f"lmlab / plain = {tokens_per_sec / plain:.3f}")  # fmt: skip
    if args.hf:
        compiled = bool(cfg.model.get("compile", False))
        for hf_compile in sorted({False, compiled}):  # HF's default (eager), and compiled as lmlab is
            model = hf_model(cfg, vocab)
            hf = timed / hf_trainer_path(model, cfg, list(loader), args.warmup, tmp, compile=hf_compile)
            ratio, target = tokens_per_sec / hf, TARGETS["hf"]
            print(f"HF Trainer, GPT2LMHeadModel, torch_compile={hf_compile}: {hf:,.0f} tokens/s; lmlab / HF = "
                  f"{ratio:.3f} (target >= {target}: {'met' if ratio >= target else 'MISS'})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)  # ratios swing ±10 % per round
    parser.add_argument("--steps", type=int, default=None, help="steps per segment (default model; GPU mode)")
    parser.add_argument("--warmup", type=int, default=None, help="steps dropped at the start of each segment")
    parser.add_argument("--big-steps", type=int, default=30, help="steps per segment of the 6/6/384 GPT")
    parser.add_argument("--big-warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--gpu", action="store_true", help="the GPT-2 small shape on CUDA instead (bf16-mixed)")
    parser.add_argument("--hook-points", action="store_true", help="the default GPT with hook points vs without")
    parser.add_argument("--vocab-size", type=int, default=50304, help="GPU mode: the model's vocabulary")
    parser.add_argument("--plain", action="store_true", help="GPU mode: also time a hand-written loop (one GPU)")
    parser.add_argument(
        "--hf", action="store_true", help="GPU mode: also time HF's Trainer (eager, and compiled when lmlab is)"
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every lmlab model, e.g. data.batch_size=8")
    args = parser.parse_args()
    if args.gpu:
        args.steps, args.warmup = args.steps or 60, args.warmup if args.warmup is not None else 20
        gpu_bench(args)
    else:
        args.steps, args.warmup = args.steps or 200, args.warmup if args.warmup is not None else 30
        hook_points_bench(args) if args.hook_points else cpu_bench(args)


if __name__ == "__main__":
    main()
