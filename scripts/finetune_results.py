"""Run the sentiment fine-tuning recipes and print a table of their test accuracy and wall time.

    python scripts/finetune_results.py                          # all recipes, runs under outputs/finetune/
    python scripts/finetune_results.py --recipes minilm          # only the MiniLM full fine-tuning (~10 min on 2 cores)
    python scripts/finetune_results.py --recipes gpt_pretrain,gpt_finetune   # pretrain -> fine-tune vs from scratch
    python scripts/finetune_results.py --recipes gpt_finetune    # both fine-tunes again, from the saved pretraining
    python scripts/finetune_results.py --recipes gpt_finetune --seeds 1,2   # ... and with two more fine-tuning seeds
    python scripts/finetune_results.py --read outputs/finetune      # re-read finished runs, run nothing

Each recipe is `lmlab train` in a subprocess (offline: HF_HUB_OFFLINE=1, W&B off); the table comes from each run's
`summary.json` (test metrics of the final weights on the fixed Rotten Tomatoes test split) and the measured wall time
of the whole command (start-up, data, training, validation and test). `gpt_finetune` fine-tunes the GPT of
`gpt_pretrain` (`experiment=sentiment_pretrain_finetune`) and, as its control, the same model shape with the same
tokenizer and budget from random weights (`experiment=sentiment_gpt_scratch`); both numbers are printed side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

RECIPES: dict[str, list[tuple[str, list[str]]]] = {
    "minilm": [("minilm", ["experiment=sentiment_minilm"])],
    "minilm_frozen": [("minilm_frozen", ["experiment=sentiment_minilm", "task.finetune=frozen", "task.head_lr=3e-3"])],
    "minilm_lora": [("minilm_lora", ["experiment=sentiment_minilm", "task.finetune=lora", "optimizer.lr=5e-4"])],
    "gpt_pretrain": [("imdb_pretrain", ["experiment=imdb_pretrain"])],
    "gpt_finetune": [
        ("gpt_pretrain_finetune", ["experiment=sentiment_pretrain_finetune", "task.init_from={imdb_pretrain}"]),
        ("gpt_scratch", ["experiment=sentiment_gpt_scratch", "task.init_from={imdb_pretrain}"]),
    ],
}
"""Recipe name -> stages (run name, overrides); `{run}` in an override is the directory of an earlier stage."""


def run_stage(name: str, overrides: list[str], out: Path, extra: list[str]) -> float:
    """`lmlab train` for one stage; returns its wall time in seconds (and stops the script if it fails)."""
    run_dir = out / name
    known = {p.name: str(p) for p in out.iterdir()} if out.is_dir() else {}
    try:
        args = [o.format(**known) for o in overrides] + extra
    except KeyError as err:
        sys.exit(f"{name} needs the run {err} in {out}; run the recipe that makes it first")
    args += [f"hydra.run.dir={run_dir}", "logger=csv"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    print(f"$ lmlab train {' '.join(args)}", flush=True)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "lmlab", "train", *args], env=env)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{name} failed (exit {result.returncode})")
    (run_dir / "wall_seconds.txt").write_text(f"{seconds:.1f}\n")
    return seconds


def row(run_dir: Path) -> str:
    """One table row from a finished run directory."""
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = summary["metrics"]
    wall = float((run_dir / "wall_seconds.txt").read_text()) if (run_dir / "wall_seconds.txt").is_file() else None

    def fmt(name: str) -> str:
        return f"{metrics[name]:.4f}" if name in metrics else "-"

    minutes = f"{wall / 60:.1f} min" if wall else "-"
    params = f"{summary['parameters'] / 1e6:.2f} M"
    return (
        f"| {run_dir.name} | {summary['model']['family']} | {params} | {summary['steps']} | {fmt('test/acc')} | "
        f"{fmt('test/f1')} | {fmt('val/acc')} | {fmt('val/loss')} | {minutes} |"
    )


def print_table(out: Path) -> None:
    print("| run | model | parameters | steps | test acc | test F1 | val acc | val loss | wall time |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run_dir in sorted(p for p in out.iterdir() if (p / "summary.json").is_file()):
        print(row(run_dir))
    compare(out)


def test_accuracy(run_dir: Path) -> float | None:
    path = run_dir / "summary.json"
    return json.loads(path.read_text())["metrics"].get("test/acc") if path.is_file() else None


def compare(out: Path) -> None:
    """Pretrain -> fine-tune against the same model, tokenizer and budget from random weights, side by side, for
    each fine-tuning seed that has both runs (`gpt_pretrain_finetune[_sN]`, `gpt_scratch[_sN]`)."""
    pairs = []
    for pretrained_dir in sorted(out.glob("gpt_pretrain_finetune*")):
        suffix = pretrained_dir.name.removeprefix("gpt_pretrain_finetune")
        pretrained, scratch = test_accuracy(pretrained_dir), test_accuracy(out / f"gpt_scratch{suffix}")
        if pretrained is None or scratch is None:
            continue
        pairs.append((pretrained, scratch))
        seed = suffix.removeprefix("_s") or "default"
        print(
            f"same GPT, tokenizer and fine-tuning budget, same test split (seed {seed}): pretrained on IMDB text "
            f"{pretrained:.4f}, from scratch {scratch:.4f} test accuracy ({100 * (pretrained - scratch):+.1f} points)"
        )
    if len(pairs) > 1:
        pretrained, scratch = (statistics.mean(arm) for arm in zip(*pairs, strict=True))
        ahead = sum(p > s for p, s in pairs)
        print(f"mean over {len(pairs)} seeds: pretrained {pretrained:.4f}, from scratch {scratch:.4f} "
              f"({100 * (pretrained - scratch):+.1f} points); pretrained ahead in {ahead} of {len(pairs)}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, from: {', '.join(RECIPES)}")
    parser.add_argument("--out", type=Path, default=Path("outputs/finetune"), help="folder of the run directories")
    parser.add_argument("--read", type=Path, help="only print the table of finished runs in this folder")
    parser.add_argument("--seeds", default="", help="gpt_finetune: also fine-tune both arms with these seeds, e.g. 1,2")
    parser.add_argument("overrides", nargs="*", help="extra overrides for every stage, e.g. trainer.max_steps=50")
    args = parser.parse_args()
    if args.read:
        print_table(args.read)
        return
    seeds = [int(seed) for seed in args.seeds.split(",") if seed]
    for recipe in args.recipes.split(","):
        for name, overrides in RECIPES[recipe]:
            run_stage(name, overrides, args.out, args.overrides)
            for seed in seeds if recipe == "gpt_finetune" else []:
                run_stage(f"{name}_s{seed}", [*overrides, f"seed={seed}"], args.out, args.overrides)
    print_table(args.out)


if __name__ == "__main__":
    main()
