"""`lmlab generate` and `lmlab eval` on checkpoints of tiny training runs: every causal family, and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lmlab.cli import eval as eval_cli
from lmlab.cli import generate as generate_cli
from lmlab.cli.train import train
from tests.helpers.classification import fake_lm_checkpoint
from tests.helpers.cli import one_line_error, run_cli
from tests.helpers.companions import ENCODER
from tests.helpers.compose import TINY_TEXT, command, compose_train

FAMILIES = ["gpt", "lstm", "ngram"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, float]]]:
    """One tiny training run per family (and a BERT): run directory and final metrics."""
    root = tmp_path_factory.mktemp("runs")
    corpus = root / "corpus.txt"
    corpus.write_text(TINY_TEXT, encoding="utf-8")
    data = ["data=text_files", f"data.corpus.paths=[{corpus}]", "trainer.max_steps=6", "trainer.val_check_interval=3"]
    found = {}
    for family, extra in [*((f, []) for f in FAMILIES), ("bert", ENCODER[1:])]:
        cfg = compose_train(root / family, [f"model={family}", *extra, *data])
        cfg.paths.cache_dir = str(root / "cache")
        found[family] = (Path(cfg.paths.output_dir), train(cfg))
    return found


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_continues_a_prompt(runs, family: str, capsys) -> None:
    run_dir, _ = runs[family]
    cfg = command("generate", [f"ckpt={run_dir}", "prompt='First Citizen:\\n'", "max_new_tokens=20"])
    (completion,) = generate_cli.generate(cfg)
    assert completion.prompt == "First Citizen:\n" and completion.num_tokens == 20 and completion.text
    assert capsys.readouterr().out == f"First Citizen:\n{completion.text}\n"  # streamed: one prompt


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_batches_a_prompt_file_with_samples_and_stops(runs, family: str, tmp_path, capsys) -> None:
    run_dir, _ = runs[family]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("First\n\nAll:\nYou are all\n", encoding="utf-8")
    overrides = [f"ckpt={run_dir}/checkpoints/last.ckpt", f"prompt_file={prompts}", "max_new_tokens=15"]
    cfg = command("generate", [*overrides, "num_samples=2", "stop=[e]", "seed=5", "temperature=1.0", "top_p=0.9"])
    completions = generate_cli.generate(cfg)
    assert [c.prompt for c in completions] == ["First", "First", "All:", "All:", "You are all", "You are all"]
    assert all("e" not in c.text and (c.stopped or c.num_tokens == 15) for c in completions)
    out = capsys.readouterr().out
    assert out.count("─── prompt") == 6 and "prompt 3 · sample 2/2" in out
    streamed = generate_cli.generate(command("generate", [*overrides, "num_samples=2", "stop=[e]", "seed=5",
                                                          "temperature=1.0", "top_p=0.9", "stream=true"]))  # fmt: skip
    assert [c.text for c in streamed] == [c.text for c in completions]  # one at a time, same text


def test_greedy_generate_is_the_same_with_and_without_cache(runs) -> None:
    run_dir, _ = runs["gpt"]
    base = [f"ckpt={run_dir}", "prompt=First", "max_new_tokens=40", "temperature=0", "stream=false"]
    cached = generate_cli.generate(command("generate", base))
    plain = generate_cli.generate(command("generate", [*base, "use_cache=false"]))
    assert cached[0].text == plain[0].text


@pytest.mark.parametrize("family", FAMILIES)
def test_eval_reproduces_the_validation_metrics(runs, family: str, capsys) -> None:
    run_dir, metrics = runs[family]
    cfg = command("eval", [f"ckpt={run_dir}/checkpoints/last.ckpt", f"cache_dir={run_dir.parent.parent / 'cache'}"])
    evaluation = eval_cli.evaluate(cfg)
    for name in ("val/loss", "val/ppl", "val/bpb"):
        assert evaluation.metrics[name] == pytest.approx(metrics[name], rel=1e-5)
    written = json.loads((run_dir / "checkpoints" / "last.eval.json").read_text())
    assert written["metrics"] == evaluation.metrics and written["source"] == {"data": "text_files", "split": "val"}
    assert written["model"] == family and written["tokens"] == 256
    out = capsys.readouterr().out
    assert "val/bpb" in out and "last.eval.json" in out


def test_eval_scores_a_text_file_and_the_training_split(runs, tmp_path) -> None:
    run_dir, _ = runs["gpt"]
    text = tmp_path / "notes.txt"
    text.write_text("Speak, speak. You are all resolved rather to die than to famish?\n" * 5, encoding="utf-8")
    on_file = eval_cli.evaluate(command("eval", [f"ckpt={run_dir}", f"text_file={text}"]))
    assert (
        on_file.source == {"text_file": str(text)} and on_file.tokens == 5 * 65 - 1
    )  # every token after the first, the tail too
    assert math.isfinite(on_file.metrics["val/bpb"])
    cache = f"cache_dir={run_dir.parent.parent / 'cache'}"
    on_train = eval_cli.evaluate(command("eval", [f"ckpt={run_dir}", cache, "split=train", "max_tokens=64"]))
    assert on_train.source["split"] == "train" and on_train.tokens == 64 and "train/loss" in on_train.metrics
    other = tmp_path / "other.txt"
    other.write_text(TINY_TEXT.upper(), encoding="utf-8")  # unseen characters become U+FFFD
    overrides = [f"ckpt={run_dir}", cache, "data=text_files", f"data.corpus.paths=[{other}]", "batch_size=4"]
    on_other = eval_cli.evaluate(command("eval", overrides))
    assert on_other.source == {"data": "text_files", "split": "val"} and math.isfinite(on_other.metrics["val/loss"])


def test_eval_of_a_text_file_with_unknown_characters_warns_and_scores_it(runs, tmp_path, caplog) -> None:
    run_dir, _ = runs["gpt"]
    text = tmp_path / "accents.txt"
    text.write_text("First Citizen: café, naïve café 中.\n" * 10, encoding="utf-8")
    evaluation = eval_cli.evaluate(command("eval", [f"ckpt={run_dir}", f"text_file={text}"]))
    assert math.isfinite(evaluation.metrics["val/loss"])  # scored, with the unknown characters as U+FFFD
    (warning,) = [r.getMessage() for r in caplog.records if "does not know" in r.getMessage()]
    assert f"text_file {text} has 40 characters the checkpoint's tokenizer does not know ('é', 'ï', '中')" in warning


def test_eval_of_a_masked_lm_reports_mlm_metrics(runs) -> None:
    run_dir, metrics = runs["bert"]
    cfg = command("eval", [f"ckpt={run_dir}/checkpoints/last.ckpt", f"cache_dir={run_dir.parent.parent / 'cache'}"])
    evaluation = eval_cli.evaluate(cfg)
    assert evaluation.metrics["val/mlm_acc"] == pytest.approx(metrics["val/mlm_acc"], rel=1e-5)
    assert evaluation.metrics["val/mlm_loss"] == pytest.approx(metrics["val/mlm_loss"], rel=1e-5)


def test_generate_refuses_a_masked_lm(runs, capsys) -> None:
    run_dir, _ = runs["bert"]
    err = one_line_error(generate_cli.generate, command("generate", [f"ckpt={run_dir}"]), capsys)
    assert "model=bert is a bidirectional encoder" in err and "causal model" in err


def test_bad_checkpoints_are_one_line_errors(tmp_path, capsys) -> None:
    garbage = tmp_path / "broken.ckpt"
    garbage.write_bytes(b"PK\x03\x04 this is not a checkpoint" * 10)
    empty = tmp_path / "empty_run"
    (empty / "checkpoints").mkdir(parents=True)
    cases = {
        str(tmp_path / "nope.ckpt"): "does not exist",
        str(empty): "holds no checkpoint",
        str(garbage): "truncated or corrupt",
    }
    for name, command_function in (("generate", generate_cli.generate), ("eval", eval_cli.evaluate)):
        for path, message in cases.items():
            assert message in one_line_error(command_function, command(name, [f"ckpt={path}"]), capsys)


def test_bad_prompts_are_one_line_errors(runs, tmp_path, capsys) -> None:
    run_dir, _ = runs["gpt"]
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n", encoding="utf-8")
    cases = {
        f"prompt_file={blank}": "has no prompts",
        f"prompt_file={tmp_path / 'nope.txt'}": "does not exist",
        "prompt=''": "prompt is empty",
        "chat=true": "needs a chat template",
        "prompt='Citizen é中é'": "the prompt has characters the model's tokenizer does not know: 'é', '中'; remove",
        "temperature=-1": "temperature=-1",
        "top_p=0": "top_p=0.0 must lie in (0, 1]",  # typed: float
        "top_p=1.5": "top_p=1.5 must lie in (0, 1]",
        "device=tpu": "device='tpu' is unknown",
    }
    for override, message in cases.items():
        assert message in one_line_error(
            generate_cli.generate, command("generate", [f"ckpt={run_dir}", override]), capsys
        )


def test_bad_eval_inputs_are_one_line_errors(runs, tmp_path, capsys) -> None:
    run_dir, _ = runs["gpt"]
    short = tmp_path / "short.txt"
    short.write_text("too short", encoding="utf-8")
    cases = {
        f"text_file={tmp_path / 'nope.txt'}": "does not exist",
        f"text_file={short}": "fewer than block_size+1=17",
        f"text_file={tmp_path}": f"text_file {tmp_path} is a folder; give one UTF-8 text file",
        "split=test": "split='test' is unknown",
    }
    for override, message in cases.items():
        assert message in one_line_error(eval_cli.evaluate, command("eval", [f"ckpt={run_dir}", override]), capsys)


@pytest.mark.slow
def test_cli_generate_prints_text_and_writes_no_files(runs, tmp_path) -> None:
    run_dir, _ = runs["gpt"]
    result = run_cli("generate", f"ckpt={run_dir}", "prompt=First", "max_new_tokens=30", "seed=3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("First") and len(result.stdout) > len("First") + 10
    result = run_cli("eval", f"ckpt={run_dir}", f"cache_dir={tmp_path / 'cache'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "val/bpb" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # no outputs/, .hydra/ or log files
    result = run_cli("generate", f"ckpt={tmp_path / 'nope'}", cwd=tmp_path)
    assert result.returncode == 1 and result.stderr.strip().startswith("error: checkpoint")
    assert len(result.stderr.strip().splitlines()) == 1


def processor_overrides(tmp_path: Path) -> list[str]:
    """A tiny untrained GPT with a char tokenizer, sampled hot: it produces every character."""
    ckpt = fake_lm_checkpoint(tmp_path / "lm.ckpt", TINY_TEXT)
    return [f"ckpt={ckpt}", "prompt=First", "max_new_tokens=200", "temperature=2.0", "device=cpu", "stream=false"]


VALID = "repetition_penalty, no_repeat_ngram, bad_words, sequence_bias, forced_eos, min_length"
BANNED = "processors=[{name:bad_words,words:[e,t,'\\n']},{name:sequence_bias,bias:{a:-1.0}}]"  # \\n: a newline


def test_generate_applies_processors_from_the_command_line(tmp_path, capsys) -> None:
    base = processor_overrides(tmp_path)
    (free,) = generate_cli.generate(command("generate", base))
    assert {"e", "t", "\n"} <= set(free.text)
    (done,) = generate_cli.generate(command("generate", [*base, BANNED, "min_p=0.02"]))
    assert done.num_tokens == 200 and not {"e", "t", "\n"} & set(done.text)
    assert capsys.readouterr().out.endswith(f"First{done.text}\n")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("processors=[{name:nope}]", f"unknown processor name 'nope'; valid names: {VALID}"),
        ("processors=[no_repeat_ngram]", "a mapping with a name, e.g."),
        ("processors=[{name:no_repeat_ngram,n:3}]", "its keys are: size"),
        ("processors=[{name:forced_eos,max_length:9}]", "this tokenizer has no end-of-sequence token"),
        ("min_p=2", "min_p=2.0 must lie in [0, 1]"),
    ],
)
def test_bad_processors_are_one_line_errors(tmp_path, capsys, override: str, message: str) -> None:
    cfg = command("generate", [*processor_overrides(tmp_path), override])
    assert message in one_line_error(generate_cli.generate, cfg, capsys)


@pytest.mark.slow
def test_cli_generate_with_processors(tmp_path) -> None:
    base = processor_overrides(tmp_path)
    result = run_cli("generate", *base, BANNED, "min_p=0.02", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("First") and not {"e", "t"} & set(result.stdout.removeprefix("First"))
    assert result.stdout.count("\n") == 1  # the one print ends
    result = run_cli("generate", *base, "processors=[{name:no_repeat_ngrams,size:3}]", cwd=tmp_path)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert f"unknown processor name 'no_repeat_ngrams'; valid names: {VALID}" in result.stderr
