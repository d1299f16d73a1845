"""Time to result: the default `lmlab train` end to end against a minimal loop of nanoGPT's shape (issue 19).

    python scripts/nanogpt_compare.py                # 3 rounds of each on the default recipe
    python scripts/nanogpt_compare.py --rounds 5
    python scripts/nanogpt_compare.py --eval-iters 20 # the loop estimates as nanoGPT's README CPU command does
    python scripts/nanogpt_compare.py --quick        # smoke test: a few steps, a capped validation split
    python scripts/nanogpt_compare.py model.n_layer=6 # lmlab overrides: both sides follow the changed recipe

First the token ids of lmlab's train/validation split are exported from lmlab's own data pipeline (its token cache,
`LMLAB_CACHE`) as nanoGPT's `train.bin`/`val.bin`, beside `recipe.json`: lmlab's model config and training numbers
(steps, batch, block, LR schedule, AdamW, clipping, validation interval). Then each round runs, as separate
processes one after the other and in alternating order (a drifting machine favours neither):
  (a) `scripts/nanogpt_loop.py`: nanoGPT's train.py loop with lmlab's GPT module, including its evaluation schedule
      (`estimate_loss` over `eval_iters` random batches of both splits every `eval_interval` steps, from step 0),
      then a whole-split score of the final weights over the windows lmlab's final validation scores;
  (b) `python -m lmlab train` with the same overrides: its CLI, start-up, validations during fit (the sample) and the
      final whole-split validation, sample and summary.
Each is timed by the wall clock around its process. Printed per run: wall time, final whole-split validation loss,
and the split of each (lmlab's from its summary.json `timing`); then the median of the per-round ratios lmlab / loop,
against the whole loop process and against the loop without its final whole-split score (what nanoGPT's train.py
itself runs: the stricter target).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from omegaconf import DictConfig

SCRIPTS = Path(__file__).resolve().parent
QUICK = ["trainer.max_steps=20", "trainer.val_check_interval=10", "data.max_val_tokens=8192",
         "data.val_sample_tokens=2048", "sample.max_new_tokens=20"]  # fmt: skip
QUICK_EVAL_ITERS = 4
EVAL_ITERS = 200  # nanoGPT's config/train_shakespeare_char.py (its README's CPU command passes --eval_iters=20)


def compose(overrides: list[str]) -> tuple[dict[str, Any], DictConfig]:
    """`lmlab train`'s config with `overrides`: resolved as a dict, and as the config the CLI's builders take."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    from lmlab.config.groups import config_dir
    from lmlab.config.schemas import register_schemas

    register_schemas()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = hydra_compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.task_name = cfg.task_name  # named after the group choices, which the `hydra` node removed here holds
        cfg.paths.output_dir = "."  # nothing is written there: only the data and numbers are read
        del cfg["hydra"]
    return OmegaConf.to_container(cfg, resolve=True), cfg  # type: ignore[return-value]


def export(folder: Path, overrides: list[str], eval_iters: int) -> dict[str, Any]:
    """Write lmlab's token split as `train.bin`/`val.bin` and the recipe both sides follow as `recipe.json`."""
    from lmlab.cli.runner import instantiate_config
    from lmlab.cli.train import build_datamodule
    from lmlab.models import model_config_to_dict

    resolved, cfg = compose(overrides)
    datamodule = build_datamodule(cfg)
    for split, ids in (("train", datamodule.splits.train), ("val", datamodule.splits.val)):
        np.asarray(ids, dtype=np.uint16).tofile(folder / f"{split}.bin")  # lmlab's cache keeps uint16 below 65,536
    model = instantiate_config(cfg.model, "model", vocab_size=datamodule.tokenizer.vocab_size)
    data, trainer, optimizer = resolved["data"], resolved["trainer"], resolved["optimizer"]
    scheduler = resolved["scheduler"]
    recipe = {
        "model": model_config_to_dict(model),
        "seed": resolved["seed"],
        "max_steps": trainer["max_steps"],
        "eval_interval": trainer["val_check_interval"],
        "eval_iters": eval_iters,
        "grad_clip": trainer["gradient_clip_val"],
        "batch_size": data["batch_size"],
        "block_size": data["block_size"],
        "eval_batch_size": data["eval_batch_size"],
        "max_val_tokens": data["max_val_tokens"],
        "lr": optimizer["lr"],
        "betas": optimizer["betas"],
        "weight_decay": resolved["task"].get("weight_decay", 0.1),
        "warmup_steps": scheduler["warmup_steps"],
        "min_lr": scheduler["min_lr"],
    }
    (folder / "recipe.json").write_text(json.dumps(recipe, indent=2))
    return recipe


def timed(command: list[str], cwd: Path) -> tuple[float, str]:
    """Wall seconds of a process and its stdout; fails loudly with its output's end."""
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=os.environ.copy())
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(command[:4])} ... failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    return seconds, done.stdout


def run_loop(data: Path, work: Path, round_: int) -> dict[str, Any]:
    wall, out = timed([sys.executable, str(SCRIPTS / "nanogpt_loop.py"), "--data", str(data),
                       "--out", str(work / f"loop_{round_}")], work)  # fmt: skip
    result = json.loads(out.strip().splitlines()[-1])
    return {"wall": wall, "loss": result["final_val_loss"], "result": result}


def run_lmlab(overrides: list[str], work: Path, round_: int) -> dict[str, Any]:
    run_dir = work / f"lmlab_{round_}"
    wall, _ = timed([sys.executable, "-m", "lmlab", "train", f"hydra.run.dir={run_dir}", *overrides], work)
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"wall": wall, "loss": summary["metrics"]["val/loss"], "result": summary.get("timing", {})}


def describe(name: str, run: dict[str, Any], parts: tuple[str, ...]) -> str:
    split = ", ".join(f"{part.removesuffix('_s')} {run['result'][part]:.1f}" for part in parts if part in run["result"])
    return f"{name:<6} {run['wall']:7.1f} s  val/loss {run['loss']:.4f}  ({split})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="runs of each, alternating which goes first")
    parser.add_argument("--quick", action="store_true", help="smoke test: 20 steps, capped validation")
    parser.add_argument(
        "--eval-iters",
        type=int,
        default=EVAL_ITERS,
        help="the loop's estimate_loss batches per split (nanoGPT's README CPU command uses 20)",
    )
    parser.add_argument("--keep", type=Path, default=None, help="keep the exported data and runs in this folder")
    parser.add_argument("overrides", nargs="*", help="lmlab train overrides, applied to both sides' recipe")
    args = parser.parse_args()
    overrides = [*(QUICK if args.quick else []), *args.overrides]
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        (data := work / "data").mkdir(parents=True, exist_ok=True)
        recipe = export(data, overrides, QUICK_EVAL_ITERS if args.quick else args.eval_iters)
        print(f"recipe: {json.dumps({k: v for k, v in recipe.items() if k != 'model'})}", flush=True)
        ratios, strict = [], []
        for round_ in range(args.rounds):
            order = ("loop", "lmlab") if round_ % 2 == 0 else ("lmlab", "loop")
            runs = {name: run_loop(data, work, round_) if name == "loop" else run_lmlab(overrides, work, round_)
                    for name in order}  # fmt: skip
            loop, lmlab = runs["loop"], runs["lmlab"]
            without_score = loop["wall"] - loop["result"]["final_score_s"]
            ratios.append(lmlab["wall"] / loop["wall"])
            strict.append(lmlab["wall"] / without_score)
            print(f"round {round_ + 1} ({' then '.join(order)}):")
            print("  " + describe("loop", loop, ("startup_s", "training_s", "eval_s", "final_score_s")))
            print("  " + describe("lmlab", lmlab, ("startup_s", "training_s", "validation_s", "end_s")))
            print(f"  lmlab / loop {ratios[-1]:.3f}; / loop without its final whole-split score {strict[-1]:.3f}",
                  flush=True)  # fmt: skip
        print(f"median lmlab / loop wall time: {statistics.median(ratios):.3f}; against the loop without its final "
              f"whole-split score (nanoGPT's train.py): {statistics.median(strict):.3f} (target <= 1)")  # fmt: skip


if __name__ == "__main__":
    main()
