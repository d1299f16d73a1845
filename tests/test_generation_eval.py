"""Evaluation for generation: BLEU/chrF with their signatures, greedy batched replies, the reply-token count of SFT
eval, and `lmlab eval generate=true` on a tiny SFT checkpoint."""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import pytest
import torch

from lmlab.analysis.report import build_report
from lmlab.cli import eval as eval_cli
from lmlab.cli.train import train
from lmlab.data.conversations import conversation
from lmlab.data.sft import SFTDataModule
from lmlab.errors import LmlabError
from lmlab.generation.chat import prompt_ids
from lmlab.inference.evaluate import count_targets
from lmlab.inference.generation_metrics import bleu_tokenizer, corpus_scores, greedy_replies, prompts_and_references
from lmlab.models import GPT, GPTConfig
from lmlab.tokenizers import CharTokenizerConfig
from tests.helpers.cli import one_line_error
from tests.helpers.compose import command, compose_train
from tests.helpers.sft import TINY_SFT, TinyChats, tiny_conversations
from tests.test_generation import spiky

REFERENCES = ["the cat sat on the mat", "hello there", "yes", "one two three"]


def sft_data(packing: bool = False, block_size: int = 48) -> SFTDataModule:
    data = SFTDataModule(TinyChats(), CharTokenizerConfig(), block_size, batch_size=4, eval_batch_size=3,
                         packing=packing)  # fmt: skip
    data.setup()
    return data


def trained_targets(data: SFTDataModule, split: str) -> int:
    """Reply tokens of a split counted from the rendered examples (a token is a target of the one before it)."""
    return sum(sum(example.trained[1:]) for row in data.datasets[split].rows for example in row)


def test_a_perfect_match_scores_100_and_signatures_say_how() -> None:
    bleu, chrf, signatures = corpus_scores(REFERENCES, REFERENCES)
    assert bleu == pytest.approx(100.0) and chrf == pytest.approx(100.0)  # short replies too (effective order)
    assert signatures["bleu"].startswith("nrefs:1|") and "eff:yes" in signatures["bleu"]
    assert "version:2." in signatures["bleu"] and "version:2." in signatures["chrf"]


def test_different_hypotheses_score_lower_and_disjoint_ones_zero() -> None:
    close = ["the cat sat on a mat", "hello there", "no", "one two four"]
    bleu, chrf, _ = corpus_scores(close, REFERENCES)
    assert 10 < bleu < 100 and 10 < chrf < 100
    assert corpus_scores(["qqq", "zzz", "xxx", "jjj"], REFERENCES)[:2] == (0.0, 0.0)
    with pytest.raises(LmlabError, match="1 hypotheses for 4 references"):
        corpus_scores(["x"], REFERENCES)


def test_chinese_references_are_scored_by_character() -> None:
    references = ["我很好，谢谢", "今天天气很好"]
    hypotheses = ["我很好", "今天天气不好"]
    bleu, _, signatures = corpus_scores(hypotheses, references)
    assert "tok:zh" in signatures["bleu"] and bleu > 10  # as one 13a "word" per sentence, nothing would match
    assert "tok:13a" in corpus_scores(REFERENCES, REFERENCES)[2]["bleu"]
    assert (
        bleu_tokenizer(["OK 好"]) == "13a" and bleu_tokenizer(["好的 OK"]) == "13a" and bleu_tokenizer(["好的"]) == "zh"
    )


def test_the_reference_is_the_last_assistant_turn_and_the_prompt_all_before_it() -> None:
    chats = [
        conversation(("system", "s"), ("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d")),
        conversation(("user", "a"), ("assistant", "b"), ("user", "unanswered")),
        conversation(("assistant", "no prompt")),
    ]
    pairs = prompts_and_references(chats)
    assert [(len(messages), reference) for messages, reference in pairs] == [(4, "d"), (1, "b")]


def test_greedy_batched_replies_equal_one_at_a_time() -> None:
    data = sft_data()
    tokenizer = data.tokenizer
    torch.manual_seed(0)
    model = spiky(GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32)))
    prompts = [prompt_ids(tokenizer, messages) for messages, _ in prompts_and_references(tiny_conversations(7))]
    assert len({len(p) for p in prompts}) > 2  # lengths differ: rows are left-padded in a batch
    batched = greedy_replies(model, tokenizer, prompts, 32, max_new_tokens=12, batch_size=4)
    alone = [greedy_replies(model, tokenizer, [p], 32, max_new_tokens=12, batch_size=1)[0] for p in prompts]
    assert batched == alone and any(batched)


@pytest.mark.parametrize("packing", [False, True])
def test_sft_rows_count_their_reply_tokens_only(packing: bool) -> None:
    data = sft_data(packing)
    loader = data.val_dataloader()
    rows = sum(len(row) for row in data.datasets["val"].rows)
    assert count_targets(loader) == trained_targets(data, "val") < rows * data.block_size


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float]]:
    """A tiny SFT run that learns the replies of `TinyChats` (as tests/test_sft.py trains one)."""
    tmp_path = tmp_path_factory.mktemp("sft_eval")
    steps = ["trainer.max_steps=40", "trainer.val_check_interval=40", "scheduler=constant", "optimizer.lr=1e-2"]
    cfg = compose_train(tmp_path, [*TINY_SFT, "model.block_size=48", *steps])
    metrics = train(cfg)
    return Path(cfg.paths.output_dir), metrics


def test_eval_scores_the_reply_tokens_and_counts_them(sft_run, tmp_path) -> None:
    run_dir, metrics = sft_run
    ckpt = f"ckpt={run_dir}/checkpoints/last.ckpt"
    on_val = eval_cli.evaluate(command("eval", [ckpt]))
    assert on_val.metrics["val/loss"] == pytest.approx(metrics["val/loss"], rel=1e-5)
    assert on_val.source == {"data": "tiny_chats", "split": "val"} and on_val.generation is None
    expected = sft_data()  # the same conversations and tokenizer recipe as the run's (block_size 48)
    assert on_val.tokens == trained_targets(expected, "val")
    on_test = eval_cli.evaluate(command("eval", [ckpt, "split=test", "batch_size=2"]))
    assert on_test.tokens == trained_targets(expected, "test") and on_test.tokens != on_val.tokens
    assert set(on_test.metrics) == {"test/loss", "test/ppl", "test/bpb"}  # named after the split they score
    text = tmp_path / "replies.txt"
    text.write_text("hello there\nfine thanks\n" * 8, encoding="utf-8")
    on_text = eval_cli.evaluate(command("eval", [ckpt, f"text_file={text}"]))  # plain windows, every token scored
    assert on_text.tokens == 8 * 24 - 1 and math.isfinite(on_text.metrics["val/loss"])


def test_eval_generate_writes_bleu_chrf_and_replies(sft_run, capsys) -> None:
    run_dir, _ = sft_run
    ckpt = f"ckpt={run_dir}/checkpoints/last.ckpt"
    overrides = [ckpt, "generate=true", "split=test", "max_examples=3", "max_new_tokens=20"]
    evaluation = eval_cli.evaluate(command("eval", overrides))
    written = json.loads((run_dir / "checkpoints" / "last.eval.json").read_text())
    assert written["metrics"] == evaluation.metrics
    assert {"test/bleu", "test/chrf", "test/loss", "test/ppl"} <= set(evaluation.metrics)
    generation = written["generation"]
    assert generation["replies"] == 3 and len(generation["examples"]) == 3
    references = [messages[-1].content for messages in tiny_conversations(48)[2::10][:3]]
    assert [e["reference"] for e in generation["examples"]] == references
    assert all(e["prompt"].endswith("<|assistant|>") and "<|end|>" not in e["hypothesis"]
               for e in generation["examples"])  # fmt: skip
    assert evaluation.metrics["test/chrf"] > 20  # the run learned its replies (a fixed function of the question)
    out = capsys.readouterr().out
    assert "bleu signature: nrefs:1|" in out and "chrf signature: nrefs:1|" in out and "test/bleu" in out
    report = build_report(run_dir, metric="test/chrf")  # `lmlab report` shows the evaluation beside training
    assert report.maximize and report.runs[0].final("test/chrf") == evaluation.metrics["test/chrf"]


class FakeWandbRun:
    def __init__(self, calls: dict, **settings) -> None:
        calls["init"], self.calls = settings, calls
        self.summary = calls.setdefault("summary", {})

    def log(self, data: dict) -> None:
        self.calls["log"] = data

    def finish(self) -> None:
        self.calls["finished"] = True


def test_eval_adds_its_metrics_and_replies_to_the_training_runs_wandb_run(sft_run, monkeypatch) -> None:
    run_dir, _ = sft_run
    calls: dict = {}
    fake = types.SimpleNamespace(
        init=lambda **kw: FakeWandbRun(calls, **kw), Table=lambda columns, data: (columns, data)
    )
    monkeypatch.setitem(sys.modules, "wandb", fake)
    overrides = [f"ckpt={run_dir}", "generate=true", "split=test", "max_examples=2", "max_new_tokens=8"]
    eval_cli.evaluate(command("eval", overrides))
    assert calls == {}  # the run logged to CSV only: it has no W&B run to add to
    (run_dir / "wandb_run_id").write_text("abc123\n")
    settings = {"project": "lmlab-tests", "mode": "offline"}
    monkeypatch.setattr(eval_cli, "wandb_settings", lambda loaded: settings)
    evaluation = eval_cli.evaluate(command("eval", overrides))
    assert calls["init"] | {"dir": None} == {"project": "lmlab-tests", "id": "abc123", "resume": "allow", "dir": None,
                                              "mode": "offline"}  # fmt: skip
    assert calls["summary"] == {f"eval/{k}": v for k, v in evaluation.metrics.items()} and calls["finished"]
    columns, rows = calls["log"]["eval/examples"]
    assert columns == ["prompt", "hypothesis", "reference"] and len(rows) == 2
    calls.clear()
    eval_cli.evaluate(command("eval", [*overrides, "wandb=false"]))
    assert calls == {}


def test_bad_generation_eval_inputs_are_one_line_errors(sft_run, tmp_path, tiny_corpus, capsys) -> None:
    run_dir, _ = sft_run
    cases = {
        ("split=train",): "split='train' is unknown; choose val or test",
        ("generate=true", f"text_file={tiny_corpus}"): "not a text_file; drop one of the two",
        ("generate=true", "max_examples=0"): "max_examples=0 must be a positive integer",
        ("generate=true", "data=text_files", f"data.corpus.paths=[{tiny_corpus}]", f"cache_dir={tmp_path}"):
            "generate=true replies to conversations",
    }  # fmt: skip
    for overrides, message in cases.items():
        assert message in one_line_error(eval_cli.evaluate, command("eval", [f"ckpt={run_dir}", *overrides]), capsys)


@pytest.mark.gpu
def test_eval_generate_on_cuda_decodes_on_the_gpu(sft_run, monkeypatch) -> None:
    """Lightning hands the model back on the CPU after validation; the replies must still be decoded on the GPU."""
    from lmlab.inference import generation_metrics

    devices = []
    decode = generation_metrics.greedy_replies

    def recording(model, *args, **kwargs):
        devices.append(next(model.parameters()).device.type)
        return decode(model, *args, **kwargs)

    monkeypatch.setattr(generation_metrics, "greedy_replies", recording)
    run_dir, _ = sft_run
    overrides = [f"ckpt={run_dir}/checkpoints/last.ckpt", "device=cuda", "generate=true", "max_examples=3"]
    evaluation = eval_cli.evaluate(command("eval", overrides))
    assert devices == ["cuda"] and math.isfinite(evaluation.metrics["val/chrf"])
