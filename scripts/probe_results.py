"""Train small models, probe every layer with `lmlab probe`, and print accuracy per layer vs the majority class.

    python scripts/probe_results.py                        # every recipe, runs under outputs/probe_results/
    python scripts/probe_results.py --recipes sentiment    # a GPT fine-tuned on Rotten Tomatoes, and its untrained twin
    python scripts/probe_results.py --recipes shakespeare  # a char GPT on Shakespeare: next_vowel and speaker labels
    python scripts/probe_results.py --quick                # tiny budgets: checks the pipeline in about a minute
    python scripts/probe_results.py --read outputs/probe_results   # re-read finished probes, run nothing

Each stage is `lmlab train` or `lmlab probe` in a subprocess (offline, W&B off, CSV logs); the tables come from each
probe's `probe.json` (held-out accuracy per layer; the sentiment probes score the fixed Rotten Tomatoes test split,
the Shakespeare probes windows from the corpus's last tenth) and the wall time of each command.

- `sentiment`: a 4-layer GPT classifier trained from scratch on Rotten Tomatoes (BPE, mean pooling, 3 epochs), and
  the same model with no training (`trainer.max_steps=0`): what the fine-tuning wrote into the residual stream,
  against what mean-pooled random embeddings already give. Probed on mean-pooled texts.
- `shakespeare`: the char-level Shakespeare GPT of the default `lmlab train` (`experiment=shakespeare_char`), per token
  for `next_vowel` (the next character is a vowel) and `speaker` (inside a speaker's name).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SENTIMENT_MODEL = ["task=classification", "data=rotten_tomatoes", "tokenizer=bpe", "tokenizer.vocab_size=4000",
                   "model.n_layer=4", "model.n_head=4", "model.n_embd=128", "model.block_size=64",
                   "task.pooling=mean", "optimizer.lr=1e-3", "trainer.val_check_interval=214", "test=true"]  # fmt: skip
TRAIN: dict[str, list[str]] = {
    "sentiment_gpt": [*SENTIMENT_MODEL, "trainer.max_steps=642"],  # three epochs of the 6,824 training sentences
    "sentiment_untrained": [*SENTIMENT_MODEL, "trainer.max_steps=0"],
    "shakespeare_char": ["experiment=shakespeare_char"],  # the default `lmlab train` (2,000 steps): the README's model
}
"""Training runs by name: `lmlab train` overrides."""

TOKENS = ["probe.max_examples=20000"]  # training tokens (and 5,000 each to validate and test)
PROBES: dict[str, list[tuple[str, str, list[str]]]] = {
    "sentiment": [
        ("sentiment_gpt", "sentiment_gpt", ["probe.pooling=mean", "probe.max_examples=8000"]),  # whole splits
        ("sentiment_untrained", "sentiment_untrained", ["probe.pooling=mean", "probe.max_examples=8000"]),
    ],
    "shakespeare": [
        ("shakespeare_next_vowel", "shakespeare_char", ["data=shakespeare", "probe.label=next_vowel", *TOKENS]),
        ("shakespeare_speaker", "shakespeare_char", ["data=shakespeare", "probe.label=speaker", *TOKENS]),
    ],
}
"""Recipe -> probes (probe name, training run it reads, `lmlab probe` overrides)."""

QUICK_TRAIN = ["trainer.max_steps=6", "trainer.val_check_interval=3", "data.max_val_tokens=2000",
               "data.max_train_examples=400", "sample.max_new_tokens=8"]  # fmt: skip
QUICK_PROBE = ["probe.max_examples=200", "probe.epochs=2"]


def lmlab(command: str, args: list[str], log: Path) -> float:
    """`lmlab COMMAND ARGS` in a subprocess, output to `log`; returns the wall time (stops the script on failure)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    print(f"$ lmlab {command} {' '.join(args)}", flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("w") as out:
        result = subprocess.run([sys.executable, "-m", "lmlab", command, *args], env=env, stdout=out, stderr=out)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"lmlab {command} failed (exit {result.returncode}); see {log}")
    return seconds


def train(name: str, out: Path, quick: bool) -> None:
    """Train a run once (a finished run in `out` is kept)."""
    run_dir = out / name
    if (run_dir / "checkpoints" / "last.ckpt").is_file():
        return
    extra = [o for o in QUICK_TRAIN if "max_train_examples" not in o or "sentiment" in name] if quick else []
    if quick and name == "sentiment_untrained":
        extra = [o for o in extra if not o.startswith("trainer.max_steps")]
    args = [*TRAIN[name], *extra, "logger=csv", f"hydra.run.dir={run_dir}"]
    (out / f"{name}.seconds").write_text(f"{lmlab('train', args, run_dir / 'train.log'):.1f}\n")


def probe(name: str, run: str, overrides: list[str], out: Path, quick: bool) -> None:
    """Probe every layer of a training run."""
    probe_dir = out / "probes" / name
    args = [f"ckpt={out / run}", *overrides, *(QUICK_PROBE if quick else []), "logger=csv",
            f"hydra.run.dir={probe_dir}"]  # fmt: skip
    seconds = lmlab("probe", args, out / "probes" / f"{name}.log")
    (probe_dir / "wall_seconds.txt").write_text(f"{seconds:.1f}\n")


def print_tables(out: Path) -> None:
    """One markdown table per probe: held-out accuracy per layer, the majority class, the gain, the wall time."""
    for probe_dir in sorted(p for p in (out / "probes").glob("*") if (p / "probe.json").is_file()):
        summary = json.loads((probe_dir / "probe.json").read_text())
        timing = probe_dir / "wall_seconds.txt"
        wall = timing.read_text().strip() if timing.is_file() else "?"
        print(f"\n{probe_dir.name}: {summary['data']}, {summary['what']}; {summary['examples']} examples; "
              f"probe wall time {wall} s")  # fmt: skip
        print("| layer | test acc | train acc | majority | gain (points) |")
        print("|---|---|---|---|---|")
        for row in summary["layers"]:
            print(f"| {row['layer']} | {row['test_acc']:.4f} | {row['train_acc']:.4f} | {row['majority']:.4f} | "
                  f"{row['gain_points']:+.1f} |")  # fmt: skip
        print(f"best layer {summary['best_layer']}: {summary['best_acc']:.4f} vs majority {summary['majority']:.4f} "
              f"({summary['gain_points']:+.1f} points)")  # fmt: skip
    for seconds in sorted(out.glob("*.seconds")):
        print(f"training {seconds.stem}: {float(seconds.read_text()):.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default=",".join(PROBES), help=f"comma-separated, from: {', '.join(PROBES)}")
    parser.add_argument("--out", type=Path, default=Path("outputs/probe_results"), help="folder of the runs")
    parser.add_argument("--read", type=Path, help="only print the tables of finished probes in this folder")
    parser.add_argument("--quick", action="store_true", help="tiny budgets, to check the pipeline")
    args = parser.parse_args()
    if args.read:
        print_tables(args.read)
        return
    for recipe in args.recipes.split(","):
        if recipe not in PROBES:
            sys.exit(f"unknown recipe {recipe!r}; choose from: {', '.join(PROBES)}")
        for name, run, overrides in PROBES[recipe]:
            train(run, args.out, args.quick)
            probe(name, run, overrides, args.out, args.quick)
    print_tables(args.out)


if __name__ == "__main__":
    main()
