"""The command line: dispatch, one-line errors, and Hydra's own flags passing straight through."""

from __future__ import annotations

import pytest

from lmlab.cli.main import COMMANDS, main
from lmlab.config.groups import check_group_choices, group_options, null_choices_as_deletions
from lmlab.config.validate import check_override_syntax
from lmlab.errors import LmlabError
from tests.helpers.cli import run_cli


def test_unknown_group_choice_lists_choices() -> None:
    with pytest.raises(LmlabError, match=r"unknown model 'gtp'; did you mean gpt\? choose one of: bert, gpt, "):
        check_group_choices("train", ["model=gtp"])
    with pytest.raises(LmlabError, match=r"unknown hardware 'tpu'; did you mean gpu\? choose one of: cpu, ddp, "):
        check_group_choices("train", ["hardware=cpu,tpu"])
    check_group_choices("train", ["model=gpt", "model.n_layer=2", "debug=null", "+foo=1", "hydra.run.dir=x"])


def test_unknown_command(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["trian"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: unknown command 'trian'; choose one of: {', '.join(COMMANDS)}"
    assert {"train", "generate", "eval", "predict", "export", "report"} <= set(COMMANDS)


def test_bad_group_choice_from_the_shell_is_one_line() -> None:
    result = run_cli("train", "model=nope")
    assert result.returncode != 0
    expected = f"error: unknown model 'nope'; choose one of: {', '.join(group_options('model'))}"
    assert result.stderr.strip() == expected and "ngram" in expected


def test_null_choice_means_no_option_of_that_group(tmp_path) -> None:
    """Hydra refuses `group=null` on the command line with a traceback; lmlab passes it on as `~group`."""
    assert null_choices_as_deletions("train", ["experiment=null", "debug=fdr", "model.dropout=null", "+x=null"]) == [
        "~experiment", "debug=fdr", "model.dropout=null", "+x=null"
    ]  # fmt: skip
    assert null_choices_as_deletions("eval", ["data=null"]) == ["~data"]  # eval's default: the checkpoint's data
    with pytest.raises(LmlabError, match=r"^model=null: `lmlab train` needs a model; choose one of: bert, gpt, "):
        null_choices_as_deletions("train", ["model=null"])
    result = run_cli("train", "experiment=null", "--cfg", "job", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (
        "batch_size: 12" in result.stdout
        and "task_name: ${lmlab.choice:data}_${lmlab.choice:tokenizer}" in result.stdout
    )


def test_non_ascii_override_names_the_quoting(capsys) -> None:
    """Hydra's grammar reads non-ASCII text only inside quotes; its lexer error gave no hint."""
    with pytest.raises(LmlabError, match=r"quote the value: 'sample\.prompt=\"中国\"'$"):
        check_override_syntax(["sample.prompt=中国"])
    with pytest.raises(LmlabError, match=r"quote the value: 'data\.corpus\.paths=\[\"a\.txt\",\"数据\.txt\"\]'$"):
        check_override_syntax(["data.corpus.paths=[a.txt,数据.txt]"])
    check_override_syntax(['sample.prompt="中国"', "data.corpus.paths=['数据.txt']", "-m", "--cfg", "job"])


def test_cfg_job_prints_composed_config(tmp_path) -> None:
    result = run_cli("train", "--cfg", "job", "model.n_layer=6", "optimizer.lr=3e-4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "n_layer: 6" in result.stdout and "lr: 0.0003" in result.stdout
    assert not (tmp_path / "outputs").exists()


def test_help_lists_commands_and_hydra_help() -> None:
    assert "train" in run_cli("--help").stdout
    result = run_cli("train", "--help")
    assert result.returncode == 0 and "model: bert, gpt" in result.stdout


def test_config_error_is_one_line(tmp_path) -> None:
    result = run_cli("train", "model.n_head=3", "debug=fdr", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "not divisible by model.n_head=3" in last
    assert "Traceback" not in result.stderr


def test_missing_data_file_is_one_line(tmp_path) -> None:
    result = run_cli(
        "train",
        "data=text_files",
        f"data.corpus.paths=[{tmp_path}/nope.txt]",
        f"hydra.run.dir={tmp_path}/run",
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: data file {tmp_path}/nope.txt does not exist; check the path in data.corpus.paths"
    )


def test_command_process_freezes_its_objects_for_a_fast_exit(tmp_path) -> None:
    """The `lmlab` process freezes its heap when the command ends (the exit then skips collecting the imports'
    objects), even when the command fails; a caller that passes `argv` keeps its collector as it was."""
    import gc
    import subprocess
    import sys

    report = (
        "import atexit, gc, sys; atexit.register(lambda: print('frozen', gc.get_freeze_count()));"
        "from lmlab.cli.main import main; sys.argv = ['lmlab', 'report', sys.argv[1]]; main()"
    )
    result = subprocess.run([sys.executable, "-c", report, str(tmp_path / "none")], capture_output=True, text=True)
    assert result.returncode == 1 and "error:" in result.stderr  # the command failed, as a user error
    frozen = int(result.stdout.split("frozen")[-1])
    assert frozen > 10_000, result.stdout
    before = gc.get_freeze_count()
    with pytest.raises(SystemExit):
        main(["report", str(tmp_path / "none")])
    assert gc.get_freeze_count() == before
