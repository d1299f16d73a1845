"""The speedrun's levers one at a time, at equal wall time: which of them buy validation loss on this machine.

    python scripts/speedrun_ablation.py                                   # every row (about 35 min on 2 cores)
    python scripts/speedrun_ablation.py --rows "lr 3e-3,speedrun"         # some rows (the default always runs)
    python scripts/speedrun_ablation.py --quick                           # tiny budgets: checks the pipeline
    python scripts/speedrun_ablation.py --leave-one-out                   # the speedrun, each lever toggled (20 min)

After an untimed run that warms the caches (token ids, CPU calibration) and times one whole-split validation alone,
the default `lmlab train` runs as it is (sampled validations every 500 steps, the whole split at the end); its
wall time, start-up included, is the budget B every row gets. Each row is the default recipe plus one lever (or the
whole `experiment=shakespeare_speedrun`), validated once, at the end, over the whole split. Its step budget is
fitted to B: a probe of `--probe` steps (with a token-sized validation) measures the row's seconds per training
step, start-up and end; one whole-split validation of the default model, timed alone and scaled by the row's FLOPs
per token, stands for the row's final validation; the rest of B buys steps (`trainer.max_steps`, which the
learning-rate schedule follows). The speedrun also runs for 5 B (the issue's second target).

Every run uses the CSV logger only. Prints a markdown table (the README's): steps, ms per step, wall time, validation
loss over the whole split and the change against the default; writes `ablation.json` in `--out`, where finished
runs are kept: the same command continues an interrupted ablation. The 5 B row takes the fewer steps of two fits,
from its probe and from the 1 B speedrun's own run (hundreds of steps): a "within 5 B" target must not overrun.

`--leave-one-out` runs the whole speedrun once per lever with that lever toggled (`LEAVE_ONE_OUT`), at the
speedrun's own step count: the loss per step is what a lever buys, its ms per step what it costs, and a second seed
of the whole recipe is the noise floor (writes `leave_one_out.json`; its runs are kept too, so after changing the
recipe give it a fresh `--out`). Nothing else may run on the machine meanwhile (2 cores: another process changes step
times several-fold).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from finetune_results import run_stage  # scripts/ is the script's own folder, first on sys.path

FINAL_ONLY = ["trainer.val_check_interval=${trainer.max_steps}", "data.val_sample_tokens=null"]
"""Validate once, at the end, over the whole split: what the rows are compared on."""
PROBE = ["data.max_val_tokens=4096", "sample.max_new_tokens=0"]
"""A probe's validation and sample cost next to nothing: it is there for its training seconds per step."""

FINAL_ONLY_ROW = "default (final validation only)"
ROWS: dict[str, list[str]] = {
    FINAL_ONLY_ROW: [],
    "lr 3e-3": ["optimizer.lr=3e-3"],
    "batch 24 + lr 2e-3": ["data.batch_size=24", "optimizer.lr=2e-3"],
    "warmup-stable-decay": ["scheduler=wsd"],
    "rotary positions": ["model.pos_embedding=rope"],
    "RMSNorm": ["model.norm=rmsnorm"],
    "ReLU²": ["model.activation=relu2"],
    "QK-norm": ["model.qk_norm=true"],
    "untied head": ["model.tie_embeddings=false"],
    "Muon (hidden matrices)": ["optimizer=muon"],
    "wider and shallower: 2/4/192": ["model.n_layer=2", "model.n_embd=192"],
    "speedrun": ["experiment=shakespeare_speedrun"],
}
"""Row name -> overrides on top of the default recipe validated only at the end (`FINAL_ONLY`)."""

SPEEDRUN = "speedrun"
LONG_FACTOR = 5
"""The speedrun's last row trains for this many times the budget (the issue's second target)."""

LEAVE_ONE_OUT: dict[str, list[str]] = {
    SPEEDRUN: [],
    "speedrun, seed 2": ["seed=2"],
    "- rotary (learned positions)": ["model.pos_embedding=learned"],
    "- QK-norm": ["model.qk_norm=false"],
    "- Muon (AdamW, lr 3e-3)": ["optimizer=adamw", "~optimizer.muon_lr"],
    "- batch 24 (batch 12)": ["data.batch_size=12"],
    "+ RMSNorm": ["model.norm=rmsnorm"],
    "+ ReLU²": ["model.activation=relu2"],
    "+ untied head": ["model.tie_embeddings=false"],
    "+ warmup-stable-decay": ["scheduler=wsd"],
}
"""`--leave-one-out`: the speedrun with one lever toggled each (removed where the recipe has it, added where the
ablation left it out), at the speedrun's own steps (loss per step does not drift with the machine as wall time does);
a second seed of the whole recipe shows how much a difference must exceed."""


def stage(name: str, overrides: list[str], out: Path) -> float:
    """`lmlab train` with `overrides` into `out/name` and its wall time; a finished stage (summary.json and the wall
    time `run_stage` wrote) is kept, so an interrupted ablation continues where it stopped."""
    wall = out / name / "wall_seconds.txt"
    if wall.is_file() and (out / name / "summary.json").is_file():
        print(f"kept: {out / name}", flush=True)
        return float(wall.read_text())
    return run_stage(name, [], out, overrides)  # overrides in `extra`: run_stage formats the others


def folder_name(row: str) -> str:
    """A row's run folder: its name in ASCII letters, digits and underscores (Hydra's paths must be ASCII)."""
    return "".join(c if c.isascii() and c.isalnum() else "_" for c in row).strip("_")


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def fit_steps(budget: float, probe: dict, validation: float) -> tuple[int, float]:
    """Steps that fill `budget` seconds after the probe's start-up and end and the final validation; and the
    probe's seconds per training step."""
    timing = probe["timing"]
    per_step = timing["training_s"] / probe["steps"]
    fixed = timing["startup_s"] + timing["end_s"] + validation
    return max(10, int((budget - fixed) / per_step)), per_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("outputs/speedrun_ablation"))
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated row names (default: all)")
    parser.add_argument("--probe", type=int, default=60, help="steps of each row's timing probe")
    parser.add_argument("--quick", action="store_true", help="a 40-step default, 10-step probes, rows of 20 steps")
    parser.add_argument("--leave-one-out", action="store_true", help="the speedrun, one lever toggled per row")
    args = parser.parse_args()
    if args.leave_one_out:
        leave_one_out(args.out, ["trainer.max_steps=20", "data.max_val_tokens=8192"] if args.quick else [])
        return
    names = [n.strip() for n in args.rows.split(",") if n.strip()]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        sys.exit(f"unknown rows {unknown}; choose from: {', '.join(ROWS)}")
    quick = ["trainer.max_steps=40", "trainer.val_check_interval=20", "sample.max_new_tokens=8"] if args.quick else []
    probe_steps = 10 if args.quick else args.probe
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    # One whole-split validation of the default model, alone: what a final-only row pays at the end. Run first, it
    # also builds the token cache and the CPU calibration that the timed runs must find ready.
    stage("default.validation", [*FINAL_ONLY, "trainer.max_steps=1", "sample.max_new_tokens=0"], out)
    whole_split = summary(out / "default.validation")["timing"]["validation_s"]
    budget = stage("default", quick, out)
    default = summary(out / "default")
    print(f"budget: the default run's wall time, {budget:.1f} s; one whole-split validation {whole_split:.1f} s")
    results: dict = {"budget_s": budget, "whole_split_validation_s": whole_split,
                     "default": {"val/loss": default["metrics"]["val/loss"], "wall_s": budget,
                                 "steps": default["steps"], "timing": default["timing"]}}  # fmt: skip

    runs = [(name, ROWS[name], 1) for name in names]
    if SPEEDRUN in names:
        runs.append((f"{SPEEDRUN}, {LONG_FACTOR}x the budget", ROWS[SPEEDRUN], LONG_FACTOR))
    for name, overrides, factor in runs:
        slug = folder_name(name)
        base = [*overrides, *FINAL_ONLY]
        stage(f"{slug}.probe", [*base, f"trainer.max_steps={probe_steps}", *PROBE], out)
        probe = summary(out / f"{slug}.probe")
        validation = whole_split * probe["flops_per_token"] / default["flops_per_token"]
        steps, per_step = fit_steps(factor * budget, probe, validation)
        if factor > 1 and SPEEDRUN in results:  # a long run must end within its budget: the slower of two timings
            one_x = summary(out / folder_name(SPEEDRUN))
            steps, per_step = min((steps, per_step), fit_steps(factor * budget, one_x, validation))
        steps = 20 if args.quick else steps
        wall = stage(slug, [*base, f"trainer.max_steps={steps}"], out)
        info = summary(out / slug)
        results[name] = {"val/loss": info["metrics"]["val/loss"], "wall_s": wall, "steps": info["steps"],
                         "budget_s": factor * budget, "ms_per_step": 1e3 * per_step,
                         "timing": info["timing"]}  # fmt: skip
        (out / "ablation.json").write_text(json.dumps(results, indent=2) + "\n")

    print_table(results, [name for name, _, _ in runs])


def leave_one_out(out: Path, quick: list[str]) -> None:
    """Each `LEAVE_ONE_OUT` row: the speedrun with one lever toggled, its steps unchanged; prints the table."""
    out.mkdir(parents=True, exist_ok=True)
    rows = {}
    for name, overrides in LEAVE_ONE_OUT.items():
        slug = "loo_" + folder_name(name)
        wall = stage(slug, ["experiment=shakespeare_speedrun", *overrides, *quick], out)
        info = summary(out / slug)
        rows[name] = {"val/loss": info["metrics"]["val/loss"], "steps": info["steps"], "wall_s": wall,
                      "ms_per_step": 1e3 * info["timing"]["training_s"] / info["steps"]}  # fmt: skip
        (out / "leave_one_out.json").write_text(json.dumps(rows, indent=2) + "\n")
    full = rows[SPEEDRUN]
    print("\n| row | steps | ms/step | val loss (whole split) | vs speedrun | ms/step vs speedrun |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        delta = "" if name == SPEEDRUN else f"{r['val/loss'] - full['val/loss']:+.4f}"
        ratio = "" if name == SPEEDRUN else f"{r['ms_per_step'] / full['ms_per_step']:.2f}x"
        print(f"| {name} | {r['steps']} | {r['ms_per_step']:.1f} | {r['val/loss']:.4f} | {delta} | {ratio} |")


def print_table(results: dict, names: list[str]) -> None:
    """The README's table: each row against the default, and (a lever's own effect) against the default recipe
    validated only at the end, when that row ran."""
    base_loss = results["default"]["val/loss"]
    final_only = results.get(FINAL_ONLY_ROW, {}).get("val/loss")
    print("\n| row | steps | ms/step | wall time | val loss (whole split) | vs default | vs final-only default |")
    print("|---|---|---|---|---|---|---|")
    print(f"| default `lmlab train` (4 validations) | {results['default']['steps']} | | "
          f"{results['budget_s']:.0f} s | {base_loss:.4f} | | |")  # fmt: skip
    for name in names:
        r = results[name]
        lever = f"{r['val/loss'] - final_only:+.4f}" if final_only is not None and name != FINAL_ONLY_ROW else ""
        print(f"| {name} | {r['steps']} | {r['ms_per_step']:.1f} | {r['wall_s']:.0f} s | {r['val/loss']:.4f} | "
              f"{r['val/loss'] - base_loss:+.4f} | {lever} |")  # fmt: skip


if __name__ == "__main__":
    main()
