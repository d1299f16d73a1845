"""Results table of a sweep (or of several run folders) from each run's `summary.json`.

    lmlab train -m experiment=ladder model=ngram,lstm,gpt
    python scripts/ladder_table.py multirun/<date>/<time>          # prints a Markdown table
    python scripts/ladder_table.py --run multirun/ladder            # runs the sweep first, then prints the table

Rows are sorted by validation bits per byte (lower is better).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

COLUMNS = ("model", "val bpb", "val ppl", "val loss", "parameters", "train time", "tokens/s")


def rows(root: Path) -> list[dict[str, str]]:
    """One row per `summary.json` found below `root`."""
    found = []
    for path in sorted(root.rglob("summary.json")):
        summary = json.loads(path.read_text())
        metrics, model = summary["metrics"], summary["model"]
        shape = {k: model[k] for k in ("order", "n_layer", "n_head", "n_embd", "n_hidden") if k in model}
        found.append(
            {
                "model": f"{model['family']} ({', '.join(f'{k}={v}' for k, v in shape.items())})",
                "val bpb": f"{metrics['val/bpb']:.3f}",
                "val ppl": f"{metrics['val/ppl']:.2f}",
                "val loss": f"{metrics['val/loss']:.4f}",
                "parameters": f"{summary['parameters'] / 1e6:.2f} M",
                "train time": f"{summary['fit_seconds']:.0f} s",
                "tokens/s": f"{summary['tokens_per_s']:,.0f}",
                "_bpb": metrics["val/bpb"],
            }
        )
    return sorted(found, key=lambda r: r["_bpb"])


def markdown(table: list[dict[str, str]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row[c] for c in COLUMNS) + " |" for row in table]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="sweep or run folder to read (with --run: where the sweep goes)")
    parser.add_argument("--run", action="store_true", help="run `lmlab train -m experiment=ladder ...` first")
    parser.add_argument("--models", default="ngram,lstm,gpt")
    args = parser.parse_args()
    if args.run:
        command = [sys.executable, "-m", "lmlab", "train", "-m", "experiment=ladder", f"model={args.models}"]
        subprocess.run([*command, f"hydra.sweep.dir={args.root}"], check=True)
    table = rows(args.root)
    if not table:
        sys.exit(f"error: no summary.json below {args.root}; point to a finished run or sweep folder")
    print(markdown(table))


if __name__ == "__main__":
    main()
