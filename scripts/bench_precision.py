"""Where `bf16-mixed` pays off on this CPU: training tokens/s of lmlab in fp32 and bf16 for growing GPT shapes.

    python scripts/bench_precision.py                       # 3 shapes x {32-true, bf16-mixed}, 2 rounds
    python scripts/bench_precision.py --shapes 4/4/128,6/6/384 --steps 40 --rounds 3
    python scripts/bench_precision.py --steps 4 --rounds 1 --shapes 2/2/64   # a quick check

First the CPU's matmul peaks are calibrated in fp32 and bf16 (`lmlab.compute.perf.cpu_matmul_flops`): an Intel Xeon
with AMX multiplies bf16 several times faster than fp32, a CPU without bf16 instructions (AMD Zen2) about 100x
slower. Then each shape (layers/heads/width, block 64, batch 12, the Shakespeare characters) trains `--steps` steps
with `lmlab train` in each precision, rounds alternating the order; the steady-state tokens/s and MFU (against the
peak of the precision's own dtype) come from each run's summary.json. Prints a markdown table with the bf16/fp32
ratio per shape (the median over rounds). Nothing else may run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from lmlab.compute.perf import cpu_matmul_flops

PRECISIONS = ("32-true", "bf16-mixed")


def train(shape: str, precision: str, steps: int, out: Path) -> dict:
    """One `lmlab train` of the shape in the precision; its summary.json."""
    n_layer, n_head, n_embd = (int(x) for x in shape.split("/"))
    args = [f"model.n_layer={n_layer}", f"model.n_head={n_head}", f"model.n_embd={n_embd}",
            f"trainer.precision={precision}", f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}",
            "trainer.log_every_n_steps=1", "data.max_val_tokens=4096", "sample.max_new_tokens=0", "logger=csv",
            "callbacks.throughput.peak_cache=null", f"hydra.run.dir={out}"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    done = subprocess.run([sys.executable, "-m", "lmlab", "train", *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"lmlab train {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return json.loads((out / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="4/4/128,6/6/384,8/8/512", help="layers/heads/width, comma-separated")
    parser.add_argument("--steps", type=int, default=30, help="training steps of each run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_precision"))
    args = parser.parse_args()
    threads = torch.get_num_threads()
    peaks = {dtype: cpu_matmul_flops(threads=threads, dtype=dtype) for dtype in (torch.float32, torch.bfloat16)}
    fp32, bf16 = peaks[torch.float32], peaks[torch.bfloat16]
    print(f"matmul peak ({threads} threads): fp32 {fp32 / 1e9:.1f} GFLOP/s, bf16 {bf16 / 1e9:.1f} GFLOP/s "
          f"(bf16/fp32 {bf16 / fp32:.2f}x)", flush=True)  # fmt: skip

    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    rates: dict[tuple[str, str], list[float]] = {}
    mfu: dict[tuple[str, str], float] = {}
    parameters: dict[str, int] = {}
    for round_ in range(args.rounds):
        order = PRECISIONS if round_ % 2 == 0 else PRECISIONS[::-1]
        for shape in shapes:
            for precision in order:
                info = train(shape, precision, args.steps, args.out / f"{shape.replace('/', '-')}_{precision}_{round_}")
                tokens_per_s = info["perf"]["tokens_per_sec"]
                rates.setdefault((shape, precision), []).append(tokens_per_s)
                mfu[(shape, precision)] = info["perf"].get("mfu") or 0.0
                parameters[shape] = info["parameters"]
                print(f"round {round_ + 1}: {shape} {precision}: {tokens_per_s:,.0f} tokens/s", flush=True)

    print("\n| shape | parameters | fp32 tokens/s | bf16-mixed tokens/s | bf16 / fp32 | MFU fp32 | MFU bf16 |")
    print("|---|---|---|---|---|---|---|")
    for shape in shapes:
        a, b = (statistics.median(rates[(shape, p)]) for p in PRECISIONS)
        print(f"| {shape} | {parameters[shape] / 1e6:.2f} M | {a:,.0f} | {b:,.0f} | {b / a:.2f}x | "
              f"{mfu[(shape, '32-true')]:.1%} | {mfu[(shape, 'bf16-mixed')]:.1%} |")  # fmt: skip


if __name__ == "__main__":
    main()
