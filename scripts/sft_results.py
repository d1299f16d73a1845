"""Run the fine-tuning (SFT) recipes: dialogue (held-out reply loss before and after) and translation (BLEU/chrF).

    python scripts/sft_results.py                              # all recipes, runs under outputs/sft/ (~65 min)
    python scripts/sft_results.py --recipes smollm2            # SmolLM2-135M-Instruct + LoRA, English (~15 min)
    python scripts/sft_results.py --recipes gpt_zh_pretrain,gpt_zh   # People's Daily GPT -> Chinese SFT (~12 min)
    python scripts/sft_results.py --recipes gpt_zh --out outputs/sft2 # only the SFT stage, from a saved stage 1 there
    python scripts/sft_results.py --recipes packing            # SmolLM2 training speed packed vs unpacked (~5 min)
    python scripts/sft_results.py --recipes translate_gpt      # GPT from scratch, en -> es Bible (~11 min)
    python scripts/sft_results.py --recipes translate_smollm2  # SmolLM2 zero-shot, then + LoRA, en -> es (~23 min)
    python scripts/sft_results.py --quick                      # every recipe with a tiny budget (smoke test, ~8 min)
    python scripts/sft_results.py --read outputs/sft           # re-read finished runs, run nothing

Each recipe is `lmlab train` in a subprocess (offline: HF_HUB_OFFLINE=1, W&B off). The dialogue SFT recipes validate
before their first step (`initial_validation`), so the table's start is the model's loss on the held-out assistant
tokens before fine-tuning (`csv/metrics.csv`, step 0) and its end is the final weights' (`summary.json`); the
relative drop is (start - end) / start, with a target of at least 20 %. Wall time is the whole command (start-up,
data, training, validation, sample). Stage 1 (`peoples_daily_chat_pretrain`) is a causal LM on news text: its row
shows its final validation loss on that text, and its time, only. `padding` is the share of the training rows'
positions that are padding, and `tok/s` counts real (not padding) training tokens per second over the training steps
(`summary.json`). The `packing` recipe trains SmolLM2 + LoRA for a few steps packed (the recipe: 2 rows of 512
tokens) and unpacked (8 rows of 128 tokens, which 96 % of the conversations fit): the same positions per step, so
tok/s shows what packing buys.

The translation recipes (English -> Spanish Bible verses) are then scored by
`lmlab eval ckpt=<run>/checkpoints/last.ckpt split=test generate=true max_examples=N`: greedy replies to the first N
verses of the held-out test books (Esther, then Hebrews: 470 verses), sacrebleu's corpus BLEU and chrF, read from the
`last.eval.json` that eval writes beside the checkpoint. `translate_smollm2` is two runs of the same recipe:
`trainer.max_steps=0` (SmolLM2 untouched, saved: the zero-shot row) and the LoRA fine-tuning, scored on the same
verses with the same prompts, context and decoding; the target is LoRA SFT ahead of zero-shot by at least 5 chrF.
Generation is the costly part on a CPU, so SmolLM2 replies to the first 100 verses by default (`--smollm2-examples`;
all 100 are from Esther): ~5 minutes for each of the zero-shot and the fine-tuned model on 2 quiet cores (about 2
of them the reply loss over the whole test split, which eval computes first; a batch of 32 replies takes up to ~40 s,
a model that does not stop running on to `max_new_tokens=128`). The 1.3 M-parameter GPT replies to all 470
(`--gpt-examples`; a minute or two).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from finetune_results import run_stage  # scripts/ is the script's own folder, first on sys.path
from lmlab.analysis.report import load_run

PRETRAIN = "peoples_daily_chat_pretrain"
"""Stage 1 of the Chinese recipe, named after its experiment like every run here."""

ZERO_SHOT = "translate_smollm2_bible_zero_shot"
"""The untrained run of the SmolLM2 translation recipe (`trainer.max_steps=0`): SmolLM2 as it ships, saved."""

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
    "translate_gpt": [("translate_gpt_bible", ["experiment=translate_gpt_bible"])],
    "translate_smollm2": [
        (ZERO_SHOT, ["experiment=translate_smollm2_bible"]),
        ("translate_smollm2_bible", ["experiment=translate_smollm2_bible"]),
    ],
}
"""Recipe name -> stages (run name, overrides); `{run}` in an override is the directory of an earlier stage."""

PINNED: dict[str, list[str]] = {ZERO_SHOT: ["trainer.max_steps=0"]}
"""Overrides given after all others (--quick's and the command line's), so they always hold."""

TRANSLATION_RUNS = {name for recipe in ("translate_gpt", "translate_smollm2") for name, _ in RECIPES[recipe]}
"""Runs scored by BLEU and chrF on the test verses after training."""

QUICK: dict[str, list[str]] = {
    "chat_smollm2_chatterbot": ["trainer.max_steps=2", "trainer.val_check_interval=2", "scheduler.warmup_steps=1",
                                "data.max_train_examples=32", "data.max_val_tokens=512", "sample.max_new_tokens=4"],
    "peoples_daily_chat_pretrain": ["trainer.max_steps=20", "trainer.val_check_interval=20", "scheduler.warmup_steps=2",
                                    "model.n_layer=1", "data.max_val_tokens=4096", "sample.max_new_tokens=4"],
    "chat_gpt_chatterbot_zh": ["trainer.max_steps=10", "trainer.val_check_interval=10", "scheduler.warmup_steps=2",
                               "sample.max_new_tokens=4"],
    "chat_smollm2_packed": ["trainer.max_steps=2", "data.max_train_examples=32"],
    "chat_smollm2_unpacked": ["trainer.max_steps=2", "data.max_train_examples=32"],
    "translate_gpt_bible": ["trainer.max_steps=10", "trainer.val_check_interval=10", "scheduler.warmup_steps=2",
                            "model.n_layer=1", "data.source.max_pairs=256", "data.max_val_tokens=2048",
                            "sample.max_new_tokens=4"],
    ZERO_SHOT: ["data.source.max_pairs=32", "data.max_val_tokens=512", "callbacks.samples.max_new_tokens=4",
                "sample.max_new_tokens=4"],
    "translate_smollm2_bible": ["trainer.max_steps=2", "trainer.val_check_interval=2", "scheduler.warmup_steps=1",
                                "data.source.max_pairs=32", "data.max_val_tokens=512",
                                "callbacks.samples.max_new_tokens=4", "sample.max_new_tokens=4"],
}  # fmt: skip
"""--quick: tiny budgets per run, to check that every stage runs and reports (the numbers mean nothing)."""

QUICK_EVAL = ["max_examples=2", "max_new_tokens=4"]
"""--quick: the translation runs reply to two test verses, four tokens each."""

TARGET_DROP = 0.20
"""The relative drop of the held-out reply loss each SFT recipe should reach with its full budget."""
TARGET_CHRF_GAIN = 5.0
"""chrF points by which SmolLM2 + LoRA SFT should beat zero-shot SmolLM2 on the same test verses."""


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


def minutes(path: Path) -> str:
    """A file of seconds (`wall_seconds.txt`, `eval_seconds.txt`) as minutes, or "-" without it."""
    return f"{float(path.read_text()) / 60:.1f} min" if path.is_file() else "-"


def run_eval(run_dir: Path, max_examples: int, extra: list[str]) -> None:
    """`lmlab eval` of the run's final weights: greedy replies to the first test verses, BLEU and chrF (written
    beside the checkpoint as `last.eval.json`); its wall time goes to `eval_seconds.txt`."""
    args = [f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", "split=test", "generate=true",
            f"max_examples={max_examples}", *extra]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    print(f"$ lmlab eval {' '.join(args)}", flush=True)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "lmlab", "eval", *args], env=env)
    if result.returncode != 0:
        sys.exit(f"eval of {run_dir.name} failed (exit {result.returncode})")
    (run_dir / "eval_seconds.txt").write_text(f"{time.perf_counter() - started:.1f}\n")


def generation_scores(run_dir: Path) -> dict | None:
    """BLEU, chrF and the number of verses scored, from `lmlab eval`'s JSON of the final weights; None without it."""
    path = run_dir / "checkpoints" / "last.eval.json"
    if not path.is_file():
        return None
    evaluation = json.loads(path.read_text())
    metrics = evaluation["metrics"]
    return {"bleu": metrics["test/bleu"], "chrf": metrics["test/chrf"], "verses": evaluation["generation"]["replies"]}


def translation_row(run_dir: Path) -> str:
    """One row of the translation table from a finished (and evaluated) run directory."""
    start, end, steps = losses(run_dir)
    scores = generation_scores(run_dir) or {}
    summary = json.loads((run_dir / "summary.json").read_text())
    padding, tokens_per_s = summary.get("padding_fraction"), (summary.get("perf") or {}).get("tokens_per_sec")

    def fmt(value: float | None, pattern: str = "{:.2f}") -> str:
        return "-" if value is None else pattern.format(value)

    return (f"| {run_dir.name} | {steps if steps is not None else '-'} | {scores.get('verses', '-')} | "
            f"{fmt(scores.get('bleu'))} | {fmt(scores.get('chrf'))} | {fmt(start, '{:.4f}')} | {fmt(end, '{:.4f}')} | "
            f"{fmt(padding, '{:.1%}')} | {fmt(tokens_per_s, '{:,.0f}')} | {minutes(run_dir / 'wall_seconds.txt')} | "
            f"{minutes(run_dir / 'eval_seconds.txt')} |")  # fmt: skip


def compare_smollm2(out: Path) -> None:
    """Zero-shot SmolLM2 against SmolLM2 + LoRA SFT on the same test verses, against the chrF target."""
    zero_shot, tuned = generation_scores(out / ZERO_SHOT), generation_scores(out / "translate_smollm2_bible")
    if zero_shot is None or tuned is None:
        return
    if zero_shot["verses"] != tuned["verses"]:
        verses = f"zero-shot scored {zero_shot['verses']} test verses, LoRA SFT {tuned['verses']}"
        print(f"SmolLM2: {verses}; not comparable")
        return
    gain = tuned["chrf"] - zero_shot["chrf"]
    verdict = "met" if gain >= TARGET_CHRF_GAIN else "MISS"
    print(f"SmolLM2-135M-Instruct on the same {tuned['verses']} test verses: chrF {zero_shot['chrf']:.2f} zero-shot, "
          f"{tuned['chrf']:.2f} after LoRA SFT ({gain:+.2f}; target ≥ +{TARGET_CHRF_GAIN:g}: {verdict}); "
          f"BLEU {zero_shot['bleu']:.2f} -> {tuned['bleu']:.2f}")  # fmt: skip


def print_table(out: Path) -> None:
    runs = sorted(p for p in out.iterdir() if (p / "summary.json").is_file())
    dialogue = [r for r in runs if r.name not in TRANSLATION_RUNS]
    translation = [r for r in runs if r.name in TRANSLATION_RUNS]
    if dialogue:
        target = f"target ≥ {TARGET_DROP:.0%}"
        print(f"| recipe | start val loss | end val loss | relative drop | {target} | steps | padding | tok/s | wall |")
        print("|---|---|---|---|---|---|---|---|---|")
        for run_dir in dialogue:
            print(row(run_dir))
    if translation:
        print("\n| translation run | steps | test verses | test BLEU | test chrF | start val loss | end val loss | "
              "padding | tok/s | train time | eval time |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for run_dir in translation:
            print(translation_row(run_dir))
        compare_smollm2(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, from: {', '.join(RECIPES)}")
    parser.add_argument("--out", type=Path, help="folder of the run directories (default outputs/sft, or sft_quick)")
    parser.add_argument("--quick", action="store_true", help="tiny budgets: a smoke test of every stage")
    parser.add_argument("--read", type=Path, help="only print the table of finished runs in this folder")
    parser.add_argument("--gpt-examples", type=int, default=470, help="test verses translate_gpt replies to (470: all)")
    parser.add_argument("--smollm2-examples", type=int, default=100,
                        help="test verses each translate_smollm2 run replies to (zero-shot and LoRA)")  # fmt: skip
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
    examples = {"translate_gpt_bible": args.gpt_examples, ZERO_SHOT: args.smollm2_examples,
                "translate_smollm2_bible": args.smollm2_examples}  # fmt: skip
    for name, overrides in (stage for recipe in recipes for stage in RECIPES[recipe]):
        if (out / name).exists():  # its metrics.csv would gain a second run's rows
            sys.exit(f"{out / name} exists; remove it or give another --out")
        run_stage(name, overrides, out, [*(QUICK[name] if args.quick else []), *args.overrides, *PINNED.get(name, [])])
        if name in TRANSLATION_RUNS:
            run_eval(out / name, examples[name], QUICK_EVAL if args.quick else [])
    print_table(out)


if __name__ == "__main__":
    main()
