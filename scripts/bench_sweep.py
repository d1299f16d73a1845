"""A 4-job grid sweep, serially (Hydra's basic launcher) and in parallel (`hydra/launcher=joblib`), back to back.

    python scripts/bench_sweep.py                  # model.n_embd=64,128 x optimizer.lr=1e-3,3e-3, 500 steps each
    python scripts/bench_sweep.py --rounds 2       # alternate the two launchers twice
    python scripts/bench_sweep.py --steps 50       # a quick check

Each sweep is one `lmlab train -m` subprocess timed by wall clock (start-up included); the script prints both wall
times, the ratio, and each job's validation loss (parallel jobs run on fewer threads each, so their losses may differ
from the serial ones in the last digits, never more). Nothing else may run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

GRID = ["model.n_embd=64,128", "optimizer.lr=1e-3,3e-3"]


def sweep(launcher: str, steps: int, out: Path) -> tuple[float, list[float]]:
    """Run the grid with `launcher` (basic or joblib); its wall time and the jobs' final val/loss."""
    args = [*GRID, f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}", "logger=csv",
            "callbacks=none", "sample.max_new_tokens=0", f"hydra.sweep.dir={out}"]  # fmt: skip
    if launcher == "joblib":
        args.append("hydra/launcher=joblib")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    print(f"$ lmlab train -m {' '.join(args)}", flush=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lmlab", "train", "-m", *args], env=env, check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    wall = time.perf_counter() - started
    losses = [json.loads(p.read_text())["metrics"]["val/loss"] for p in sorted(out.glob("*/summary.json"))]
    return wall, losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=500, help="training steps of each job")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_sweep"))
    args = parser.parse_args()
    walls: dict[str, list[float]] = {"basic": [], "joblib": []}
    for round_ in range(args.rounds):
        for launcher in walls:
            wall, losses = sweep(launcher, args.steps, args.out / f"{launcher}{round_}")
            walls[launcher].append(wall)
            print(f"{launcher}: {wall:.1f} s, val/loss {', '.join(f'{x:.4f}' for x in losses)}", flush=True)
    serial, parallel = min(walls["basic"]), min(walls["joblib"])
    print(f"\n4-job sweep, {args.steps} steps each, on {os.cpu_count()} cores: serial {serial:.1f} s, "
          f"joblib {parallel:.1f} s, speed-up {serial / parallel:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
