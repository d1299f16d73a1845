"""What a run shows a user: other libraries' start-up noise silenced (real warnings kept), and control characters of
a corpus or a sample shown, not obeyed by the terminal."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest

from lmlab.cli.generate import _write, print_completions
from lmlab.data import TextFilesCorpus, build_token_cache
from lmlab.data.cache import ControlCharacters
from lmlab.generation import Completion
from lmlab.runs.quiet import DropMessages, quiet_third_party
from lmlab.runs.summary import print_run_summary
from lmlab.terminal import visible
from lmlab.tokenizers import CharTokenizerConfig
from tests.helpers.cli import run_cli
from tests.helpers.compose import TINY_OVERRIDES, TINY_TEXT, tiny_model

LITLOGGER_TIP = (
    "💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger](https://pypi.org/project/"
    "litlogger/) to enable LitLogger, which logs metrics and artifacts automatically to the Lightning Experiments "
    "platform."
)
LEAFSPEC = "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)` instead."


def test_visible_escapes_control_characters_but_keeps_layout() -> None:
    text = "red \x1b[31mtext\x1b[0m\tbell\x07\r\nback\x08 del\x7f csi\x9b é 中\n"
    assert visible(text) == "red \\x1b[31mtext\\x1b[0m\tbell\\x07\r\nback\\x08 del\\x7f csi\\x9b é 中\n"


def test_quiet_drops_only_the_named_messages() -> None:
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    rank_zero.addHandler(handler)
    level = rank_zero.level
    rank_zero.setLevel(logging.INFO)  # whatever level an earlier test (e.g. `lmlab eval`) gave Lightning's loggers
    try:
        with warnings.catch_warnings(record=True) as caught:  # restores the warning filters afterwards
            warnings.simplefilter("always")
            quiet_third_party()
            quiet_third_party()  # twice, as a sweep's jobs do: one filter
            warnings.warn(LEAFSPEC, FutureWarning, stacklevel=1)
            warnings.warn("a real deprecation", FutureWarning, stacklevel=1)
            rank_zero.info(LITLOGGER_TIP)
            rank_zero.info("GPU available: False, used: False")
    finally:
        rank_zero.removeHandler(handler)
        rank_zero.setLevel(level)
    assert [str(w.message) for w in caught] == ["a real deprecation"]
    assert [r.getMessage() for r in records] == ["GPU available: False, used: False"]
    assert sum(isinstance(f, DropMessages) for f in rank_zero.filters) == 1


def test_the_progress_bar_brings_a_model_summary_without_flops(capsys) -> None:
    """Lightning pairs a Rich bar with its RichModelSummary, whose FLOPs column and total read 0 for lmlab's tasks."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import RichModelSummary

    from lmlab.callbacks import LMModelSummary, LMProgressBar

    bar = LMProgressBar()
    trainer = pl.Trainer(callbacks=[bar], accelerator="cpu", logger=False, enable_checkpointing=False)
    assert [type(c) for c in trainer.callbacks if isinstance(c, RichModelSummary)] == [RichModelSummary]
    bar.setup(trainer, pl.LightningModule(), "fit")
    (summary,) = [c for c in trainer.callbacks if isinstance(c, RichModelSummary)]
    assert type(summary) is LMModelSummary
    columns = [(" ", ["0"]), ("Name", ["model"]), ("Type", ["GPT"]), ("Params", ["3.9 K"]), ("Mode", ["train"])]
    summary.summarize([*columns, ("FLOPs", ["0"])], 3900, 3900, 0.016, {"train": 21, "eval": 0}, total_flops=0)
    out = capsys.readouterr().out
    assert "GPT" in out and "Trainable params: 3.9 K" in out and "Modules in train mode: 21" in out
    assert "FLOPs" not in out


def test_control_characters_are_counted_with_the_first_line() -> None:
    controls = ControlCharacters()
    for piece in ("plain line\nsecond\n", "third ", "has \x1bAN ESCAPE\nand a bell\x07\n"):
        controls.add(piece)
    assert (controls.count, controls.line, controls.example) == (2, 3, "has \x1bAN ESCAPE")


def test_building_a_token_cache_warns_of_control_characters(tmp_path: Path, caplog) -> None:
    clean, ansi = tmp_path / "clean.txt", tmp_path / "fortunes.txt"
    clean.write_text(TINY_TEXT, encoding="utf-8")
    ansi.write_text("A fortune:\n\x1b[1mBold\x1b[0m advice.\n" + TINY_TEXT, encoding="utf-8")
    caplog.set_level("WARNING", logger="lmlab")
    build_token_cache(TextFilesCorpus([str(clean)]), CharTokenizerConfig(), 0.1, tmp_path / "cache")
    assert "control characters" not in caplog.text
    build_token_cache(TextFilesCorpus([str(ansi)]), CharTokenizerConfig(), 0.1, tmp_path / "cache")
    assert "corpus text_files has 2 control characters, e.g. on line 2: '\\x1b[1mBold\\x1b[0m advice.'" in caplog.text
    assert "\x1b" not in caplog.text


SAMPLE = "Enter \x1b[31mKING\x1b[0m [/b] [bold]x\x07\n\tExit"
SHOWN = "Enter \\x1b[31mKING\\x1b[0m [/b] [bold]x\\x07"


def test_run_summary_shows_a_samples_control_characters_and_brackets(tmp_path: Path, capsys) -> None:
    print_run_summary(tmp_path, {"val/loss": 1.0}, None, SAMPLE)
    out = capsys.readouterr().out
    assert SHOWN in out and "Exit" in out  # the line break and tab kept (Rich prints the tab as spaces)
    assert "\x1b" not in out and "\x07" not in out


def test_generate_prints_control_characters_visibly_but_returns_the_text(capsys) -> None:
    completion = Completion(prompt="Enter ", text=SAMPLE[6:])
    print_completions([completion], ["Enter "], 1)
    _write(0, "\x1b[2J")  # streamed: a piece that would clear the screen
    out = capsys.readouterr().out
    assert out == visible(SAMPLE) + "\n" + "\\x1b[2J"
    assert completion.text == SAMPLE[6:]  # the API's text is the model's own


@pytest.mark.slow
def test_train_output_has_no_third_party_noise_but_real_warnings(tmp_path: Path) -> None:
    """A tiny `lmlab train` as a user runs it (model summary on, W&B offline and not silenced) prints none of the
    known start-up noise, while a real Lightning warning and lmlab's own still show."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\x1b[1mBold\x1b[0m\n" + TINY_TEXT, encoding="utf-8")
    overrides = [o for o in TINY_OVERRIDES if not o.startswith(("trainer.enable_model_summary", "logger="))]
    result = run_cli(
        "train", *overrides, *tiny_model([]), "trainer.max_steps=2", "trainer.log_every_n_steps=100",
        "data=text_files", f"data.corpus.paths=[{corpus}]", f"hydra.run.dir={tmp_path / 'run'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        cwd=tmp_path, env={"WANDB_SILENT": None, "WANDB_MODE": "offline"}, timeout=300,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Trainable params" in output and "wandb" in output  # the summary and W&B did speak
    for noise in ("litlogger", "anonymous setting", "LeafSpec", "FLOPs", "Total Flops"):
        assert noise not in output, noise
    assert "smaller than the logging interval" in output  # Lightning's warning: log_every_n_steps=100 > batches
    assert "has 2 control characters" in output  # lmlab's warning
