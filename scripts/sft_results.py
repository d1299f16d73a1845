"""Run the dialogue fine-tuning (SFT) recipes and print their held-out reply loss before and after, and wall time.

    python scripts/sft_results.py                              # all recipes, runs under outputs/sft/ (~30 min)
    python scripts/sft_results.py --recipes smollm2            # SmolLM2-135M-Instruct + LoRA, English (~15 min)
    python scripts/sft_results.py --recipes gpt_zh_pretrain,gpt_zh   # People's Daily GPT -> Chinese SFT (~12 min)
    python scripts/sft_results.py --recipes gpt_zh --out outputs/sft2 # only the SFT stage, from a saved stage 1 there
    python scripts/sft_results.py --recipes packing            # SmolLM2 training speed packed vs unpacked (~5 min)
    python scripts/sft_results.py --quick                      # every recipe with a tiny budget (smoke test, ~3 min)
    python scripts/sft_results.py --read outputs/sft           # re-read finished runs, run nothing

Each recipe is `lmlab train` in a subprocess (offline: HF_HUB_OFFLINE=1, W&B off). The SFT recipes validate before
their first step (`initial_validation`), so the table's start is the model's loss on the held-out assistant tokens
before fine-tuning (`csv/metrics.csv`, step 0) and its end is the final weights' (`summary.json`); the relative drop
is (start - end) / start, with a target of at least 20 %. Wall time is the whole command (start-up, data, training,
validation, sample). Stage 1 (`peoples_daily_chat_pretrain`) is a causal LM on news text: its row shows its final
validation loss on that text, and its time, only. `padding` is the share of the training rows' positions that are
padding, and `tok/s` counts real (not padding) training tokens per second over the training steps (`summary.json`).
The `packing` recipe trains SmolLM2 + LoRA for a few steps packed (the recipe: 2 rows of 512 tokens) and unpacked
(8 rows of 128 tokens, which 96 % of the conversations fit): the same positions per step, so tok/s shows what
packing buys.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from finetune_results import run_stage  # scripts/ is the script's own folder, first on sys.path
from lmlab.analysis.report import load_run

PRETRAIN = "peoples_daily_chat_pretrain"
"""Stage 1 of the Chinese recipe, named after its experiment like every run here."""

SPEED_ONLY = ["trainer.max_steps=12", "trainer.val_check_interval=12", "initial_validation=false",
              "data.max_val_tokens=2048", "sample.max_new_tokens=4"]  # fmt: skip
"""A short run that measures training speed: throughput's steady state is the steps after the first report."""

UNPACKED = ["data.packing=false", "model.block_size=128", "data.batch_size=8"]
"""One conversation per row, in rows that 96 % of them fit: as many positions per step as the packed recipe."""

RECIPES: dict[str, list[tuple[str, list[str]]]] = {
    "smollm2": [("chat_smollm2_chatterbot", ["experiment=chat_smollm2_chatterbot"])],
    "gpt_zh_pretrain": [(PRETRAIN, [f"experiment={PRETRAIN}"])],
    "gpt_zh": [("chat_gpt_chatterbot_zh", ["experiment=chat_gpt_chatterbot_zh", f"task.init_from={{{PRETRAIN}}}"])],
    "packing": [
        ("chat_smollm2_packed", ["experiment=chat_smollm2_chatterbot", *SPEED_ONLY]),
        ("chat_smollm2_unpacked", ["experiment=chat_smollm2_chatterbot", *SPEED_ONLY, *UNPACKED]),
    ],
}
"""Recipe name -> stages (run name, overrides); `{run}` in an override is the directory of an earlier stage."""

QUICK: dict[str, list[str]] = {
    "chat_smollm2_chatterbot": ["trainer.max_steps=2", "trainer.val_check_interval=2", "scheduler.warmup_steps=1",
                                "data.max_train_examples=32", "data.max_val_tokens=512", "sample.max_new_tokens=4"],
    "peoples_daily_chat_pretrain": ["trainer.max_steps=20", "trainer.val_check_interval=20", "scheduler.warmup_steps=2",
                                    "model.n_layer=1", "data.max_val_tokens=4096", "sample.max_new_tokens=4"],
    "chat_gpt_chatterbot_zh": ["trainer.max_steps=10", "trainer.val_check_interval=10", "scheduler.warmup_steps=2",
                               "sample.max_new_tokens=4"],
    "chat_smollm2_packed": ["trainer.max_steps=2", "data.max_train_examples=32"],
    "chat_smollm2_unpacked": ["trainer.max_steps=2", "data.max_train_examples=32"],
}  # fmt: skip
"""--quick: tiny budgets per run, to check that every stage runs and reports (the numbers mean nothing)."""

TARGET_DROP = 0.20
"""The relative drop of the held-out reply loss each SFT recipe should reach with its full budget."""


def losses(run_dir: Path) -> tuple[float | None, float | None, int | None]:
    """The run's validation loss before its first step (None without an initial validation), at the end, and steps."""
    run = load_run(run_dir, run_dir.parent)
    history = run.history.get("val/loss", [])
    start = history[0][1] if history and history[0][0] == 0 else None
    return start, run.final("val/loss"), (run.summary or {}).get("steps")


def row(run_dir: Path) -> str:
    """One table row from a finished run directory."""
    start, end, steps = losses(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    padding, tokens_per_s = summary.get("padding_fraction"), (summary.get("perf") or {}).get("tokens_per_sec")
    drop = (start - end) / start if start and end is not None else None
    verdict = "-" if drop is None else "met" if drop >= TARGET_DROP else "MISS"
    wall_file = run_dir / "wall_seconds.txt"
    wall = f"{float(wall_file.read_text()) / 60:.1f} min" if wall_file.is_file() else "-"

    def fmt(value: float | None, pattern: str = "{:.4f}") -> str:
        return "-" if value is None else pattern.format(value)

    return (f"| {run_dir.name} | {fmt(start)} | {fmt(end)} | {fmt(drop, '{:.1%}')} | {verdict} | {steps or '-'} | "
            f"{fmt(padding, '{:.1%}')} | {fmt(tokens_per_s, '{:,.0f}')} | {wall} |")  # fmt: skip


def print_table(out: Path) -> None:
    target = f"target ≥ {TARGET_DROP:.0%}"
    print(f"| recipe | start val loss | end val loss | relative drop | {target} | steps | padding | tok/s | wall |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run_dir in sorted(p for p in out.iterdir() if (p / "summary.json").is_file()):
        print(row(run_dir))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, from: {', '.join(RECIPES)}")
    parser.add_argument("--out", type=Path, help="folder of the run directories (default outputs/sft, or sft_quick)")
    parser.add_argument("--quick", action="store_true", help="tiny budgets: a smoke test of every stage")
    parser.add_argument("--read", type=Path, help="only print the table of finished runs in this folder")
    parser.add_argument("overrides", nargs="*", help="extra overrides for every stage, e.g. seed=1")
    args = parser.parse_args()
    if args.read:
        print_table(args.read)
        return
    out = args.out or Path("outputs/sft_quick" if args.quick else "outputs/sft")
    recipes = args.recipes.split(",")
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        sys.exit(f"unknown recipe {', '.join(unknown)}; choose from: {', '.join(RECIPES)}")
    for name, overrides in (stage for recipe in recipes for stage in RECIPES[recipe]):
        if (out / name).exists():  # its metrics.csv would gain a second run's rows
            sys.exit(f"{out / name} exists; remove it or give another --out")
        run_stage(name, overrides, out, [*(QUICK[name] if args.quick else []), *args.overrides])
    print_table(out)


if __name__ == "__main__":
    main()
