"""Linear probes: layer choice, labels derived from text, independence of the per-layer heads, and a probe that
beats the majority baseline where the information is there (and not where it is not)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from lmlab.cli.probe import probe
from lmlab.errors import LmlabError
from lmlab.interp.probe import (
    ProbeData,
    fit_probes,
    majority_baseline,
    probe_layers,
    sequence_features,
    speaker_labels,
    token_features,
    token_labels,
)
from lmlab.models import build_model
from lmlab.models.gpt import GPT, GPTConfig
from lmlab.models.ngram import NGramConfig
from tests.helpers.classification import fake_lm_checkpoint, labeled_csv
from tests.helpers.cli import one_line_error, run_cli
from tests.helpers.compose import TINY_TEXT, command
from tests.helpers.interp import ngram_checkpoint, train_tiny


def tiny_gpt(n_embd: int = 16) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=n_embd)).eval()


def token_data(seed: int, n: int, label: str = "current") -> ProbeData:
    """Token features of random windows; the label is whether the current token is below 12 (readable from the
    embedding: 40 token and 12 position vectors in 64 dimensions leave room for a separating direction), or a coin
    flip (readable from nothing)."""
    generator = torch.Generator().manual_seed(seed)
    windows = torch.randint(0, 40, (n, 12), generator=generator)
    labels = (windows < 12).long() if label == "current" else torch.randint(0, 2, (n, 12), generator=generator)
    model = tiny_gpt(n_embd=64)
    return token_features(model, windows, labels, probe_layers(model))


def test_layers_are_embed_then_blocks_and_out_of_range_is_an_error() -> None:
    model = tiny_gpt()
    assert probe_layers(model) == ["embed", "0", "1"]
    assert probe_layers(model, 1) == ["1"] and probe_layers(model, "embed") == ["embed"]
    with pytest.raises(LmlabError, match=r"probe.layer=2 is out of range; this model has layers embed and 0..1"):
        probe_layers(model, 2)
    with pytest.raises(LmlabError, match="ngram model has no hook points"):
        probe_layers(build_model(NGramConfig(vocab_size=40, order=3)))


def test_probe_beats_the_majority_baseline_by_15_points_where_the_label_is_readable() -> None:
    result = fit_probes(probe_layers(tiny_gpt()), token_data(0, 60), token_data(1, 20), token_data(2, 20), epochs=8)
    assert 0.6 <= result.majority <= 0.8  # 28 of 40 tokens are >= 12: "no" is the majority
    assert result.test_acc["embed"] >= 0.95  # the embedding alone names the token
    assert result.best_acc - result.majority >= 0.15
    assert result.sizes == {"train": 720, "val": 240, "test": 240}


def test_probe_of_a_coin_flip_stays_near_the_baseline() -> None:
    """Held-out examples are really held out: a label nothing predicts gives chance accuracy on test, however
    well the probe fits its training examples."""
    train, val, test = (token_data(seed, n, "coin") for seed, n in ((0, 30), (1, 20), (2, 40)))
    result = fit_probes(probe_layers(tiny_gpt()), train, val, test, epochs=10)
    assert max(result.test_acc.values()) < 0.6
    assert max(result.train_acc.values()) > max(result.test_acc.values())


def test_heads_train_independently() -> None:
    data = [token_data(seed, 20) for seed in (0, 1, 2)]
    together = fit_probes(["embed", "0", "1"], *data, epochs=2)
    only = [ProbeData(d.features[:, 1:2], d.labels) for d in data]  # layer 0 alone
    alone = fit_probes(["0"], *only, epochs=2)
    assert alone.test_acc["0"] == together.test_acc["0"]
    assert alone.train_acc["0"] == together.train_acc["0"]


def test_sequence_features_pool_real_tokens_only() -> None:
    model = tiny_gpt()
    ids = [[3, 5, 7], [3, 5, 7, 9, 11]]
    mean = sequence_features(model, ids, [0, 1], ["embed", "1"], pad_id=0, pooling="mean")
    last = sequence_features(model, ids, [0, 1], ["embed", "1"], pad_id=0, pooling="last")
    assert mean.features.shape == (2, 2, 16)
    alone = sequence_features(model, ids[:1], [0], ["embed", "1"], pad_id=0, pooling="mean")
    assert torch.allclose(mean.features[0], alone.features[0], atol=1e-5)  # padding changed nothing
    embed = model.wte(torch.tensor([3, 5, 7, 9, 11])) + model.wpe(torch.arange(5))
    assert torch.allclose(last.features[1, 0], embed[-1], atol=1e-5)
    with pytest.raises(LmlabError, match=r"probe.pooling='cls' is unknown"):
        sequence_features(model, ids, [0, 1], ["embed"], pad_id=0, pooling="cls")


def test_token_labels_follow_the_text() -> None:
    assert token_labels(list("hat"), "next_vowel") == [1, 0, 0]  # h->a, a->t, t->(end)
    assert token_labels(["ha", "t a", "nd"], "next_vowel") == [0, 0, 0]  # each piece's last char: a->t, a->n, d
    assert token_labels(["th", "e", " a"], "next_vowel") == [1, 0, 0]
    text = "First Citizen:\nBefore we proceed.\n\nAll:\nSpeak: now.\n\nKING HENRY V:\nAy.\n"
    labels = speaker_labels(text)
    inside = "".join(c for c, y in zip(text, labels, strict=True) if y)
    assert inside == "First CitizenAllKING HENRY V"  # not "Speak", a colon inside a line of speech
    assert token_labels(list("All:\n"), "speaker") == [1, 1, 1, 0, 0]
    with pytest.raises(LmlabError, match=r"probe.label='vowels' is unknown; choose one of: next_vowel, speaker"):
        token_labels(list("ab"), "vowels")


def test_majority_baseline_is_the_training_majority_scored_on_test() -> None:
    assert majority_baseline(torch.tensor([1, 1, 0]), torch.tensor([0, 0, 0, 1])) == (1, 0.25)


# --- the command ---------------------------------------------------------------------------------------------------


def probe_cfg(tmp_path: Path, ckpt: Path, *overrides: str, data: list[str] | None = None) -> DictConfig:
    """The probe command's config on a tiny text (token label `speaker`) or on `data`."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TINY_TEXT, encoding="utf-8")
    text = ["data=text_files", f"data.corpus.paths=[{corpus}]", "probe.label=speaker"]
    return command("probe", [f"ckpt={ckpt}", *(data or text), "logger=csv", f"paths.output_dir={tmp_path / 'run'}",
                             "probe.max_examples=200", "probe.epochs=2", *overrides])  # fmt: skip


def lm_checkpoint(tmp_path: Path) -> Path:
    return fake_lm_checkpoint(tmp_path / "lm.ckpt", TINY_TEXT + "abcdefghijklmnopqrstuvwxyz")


def test_probe_command_writes_a_row_per_layer_and_logs_the_accuracies(tmp_path: Path) -> None:
    result = probe(probe_cfg(tmp_path, lm_checkpoint(tmp_path)))
    run = tmp_path / "run"
    rows = list(csv.DictReader((run / "probe.csv").open()))
    assert [r["layer"] for r in rows] == ["embed", "0"] and rows[1]["hook"] == "blocks.0.hook_resid_post"
    summary = json.loads((run / "probe.json").read_text())
    assert summary["best_acc"] == result.best_acc and summary["label_names"] == ["text", "speaker"]
    assert summary["majority_label"] == "text" and summary["examples"]["train"] >= 200
    assert (run / "probe.png").stat().st_size > 0
    logged = list(csv.DictReader((run / "csv" / "metrics.csv").open()))
    assert any(r.get("test/acc/0") for r in logged) and any(r.get("val/acc/embed") for r in logged)
    assert any(r.get("test/majority") for r in logged)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["probe.layer=3"], "probe.layer=3 is out of range; this model has layers embed and 0..0"),
        (["probe.label=null"], "is plain text; choose what to probe for: probe.label=next_vowel or speaker"),
        (["probe.max_examples=2"], "probe.max_examples=2 is too few"),
    ],
)
def test_probe_command_bad_inputs_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture, overrides: list[str], message: str
) -> None:
    err = one_line_error(probe, probe_cfg(tmp_path, lm_checkpoint(tmp_path), *overrides), capsys)
    assert message in err


def test_probe_command_refuses_a_label_for_labeled_data_and_an_ngram(tmp_path: Path, capsys) -> None:
    labeled = ["data=text_classification", f"data.source.train={labeled_csv(tmp_path)}", "probe.label=speaker"]
    err = one_line_error(probe, probe_cfg(tmp_path, lm_checkpoint(tmp_path), data=labeled), capsys)
    assert "labeled data brings its own labels: drop probe.label" in err
    err = one_line_error(probe, probe_cfg(tmp_path, ngram_checkpoint(tmp_path)), capsys)
    assert "ngram model has no hook points" in err


@pytest.mark.slow
def test_cli_probe_on_a_trained_checkpoint_one_job_per_layer(tmp_path: Path) -> None:
    run_dir = train_tiny(tmp_path)
    sweep = tmp_path / "sweep"
    result = run_cli(
        "probe", "-m", f"ckpt={run_dir}", "data=text_files", f"data.corpus.paths=[{tmp_path / 'corpus.txt'}]",
        "probe.label=next_vowel", "probe.layer=embed,0", "probe.max_examples=300", "probe.epochs=3", "logger=csv",
        f"hydra.sweep.dir={sweep}", cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for job, layer in ((0, "embed"), (1, "0")):
        rows = list(csv.DictReader((sweep / str(job) / "probe.csv").open()))
        assert [r["layer"] for r in rows] == [layer]
        assert 0.0 <= float(rows[0]["test_acc"]) <= 1.0 and (sweep / str(job) / "probe.png").is_file()
    bad = run_cli("probe", f"ckpt={run_dir}", "data=text_files", f"data.corpus.paths=[{tmp_path / 'corpus.txt'}]",
                  "probe.label=speaker", "probe.layer=7", "logger=csv", cwd=tmp_path)  # fmt: skip
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1].startswith("error: probe.layer=7 is out")


def test_probe_command_on_labeled_texts_pools_each_text(tmp_path: Path) -> None:
    labeled = ["data=text_classification", f"data.source.train={labeled_csv(tmp_path, n=80)}", "probe.pooling=last"]
    result = probe(probe_cfg(tmp_path, lm_checkpoint(tmp_path), data=labeled))
    summary = json.loads((tmp_path / "run" / "probe.json").read_text())
    assert summary["what"] == "last-pooled texts" and summary["label_names"] == ["neg", "pos"]
    assert result.sizes == {"train": 64, "val": 8, "test": 8}  # the file's fixed 80/10/10 split


def test_probe_results_script_prints_a_table_per_probe(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "probe_results.py"
    spec = importlib.util.spec_from_file_location("probe_results", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    folder = tmp_path / "probes" / "sentiment_gpt"
    folder.mkdir(parents=True)
    rows = [{"layer": "embed", "test_acc": 0.6, "train_acc": 0.7, "majority": 0.5, "gain_points": 10.0},
            {"layer": "0", "test_acc": 0.72, "train_acc": 0.8, "majority": 0.5, "gain_points": 22.0}]  # fmt: skip
    summary = {"data": "rotten_tomatoes", "what": "mean-pooled texts", "examples": {"train": 10}, "layers": rows,
               "best_layer": "0", "best_acc": 0.72, "majority": 0.5, "gain_points": 22.0}  # fmt: skip
    (folder / "probe.json").write_text(json.dumps(summary))
    (folder / "wall_seconds.txt").write_text("12.5\n")
    script.print_tables(tmp_path)
    out = capsys.readouterr().out
    assert "probe wall time 12.5 s" in out and "| 0 | 0.7200 | 0.8000 | 0.5000 | +22.0 |" in out
    assert "best layer 0: 0.7200 vs majority 0.5000 (+22.0 points)" in out
