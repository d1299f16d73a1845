"""The results scripts under scripts/: what they read from finished runs and how they compare them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_run(folder: Path, test_acc: float) -> None:
    folder.mkdir(parents=True)
    metrics = {"test/acc": test_acc, "val/acc": 0.5}
    summary = {"metrics": metrics, "model": {"family": "gpt"}, "parameters": 10, "steps": 3}
    (folder / "summary.json").write_text(json.dumps(summary))


def test_finetune_results_pairs_each_seed_and_averages(tmp_path: Path, capsys) -> None:
    results = load_script("finetune_results")
    for suffix, pretrained, scratch in (("", 0.75, 0.70), ("_s1", 0.70, 0.72), ("_s2", 0.80, 0.70)):
        fake_run(tmp_path / f"gpt_pretrain_finetune{suffix}", pretrained)
        fake_run(tmp_path / f"gpt_scratch{suffix}", scratch)
    fake_run(tmp_path / "gpt_pretrain_finetune_s3", 0.9)  # no control for this seed: left out of the comparison
    results.print_table(tmp_path)
    out = capsys.readouterr().out
    assert "(seed default): pretrained on IMDB text 0.7500, from scratch 0.7000 test accuracy (+5.0 points)" in out
    assert "(seed 1): pretrained on IMDB text 0.7000, from scratch 0.7200 test accuracy (-2.0 points)" in out
    assert "(seed 3)" not in out
    assert "mean over 3 seeds: pretrained 0.7500, from scratch 0.7067 (+4.3 points); pretrained ahead in 2 of 3" in out
