"""`lmlab report`: runs found, ranked by their metric, swept settings as columns, Markdown/CSV/PNG written.

One tiny real training run gives the files in the formats training writes; the fake sweep copies it with scaled
metrics and Hydra-style overrides, so the expected ranking is known.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image

from lmlab.analysis.report import build_report, find_runs, maximized, write_report
from lmlab.cli.main import main
from lmlab.cli.report import folder_argument
from lmlab.errors import LmlabError
from tests.helpers.compose import TINY_MODEL, TINY_OVERRIDES, TINY_TEXT, compose_train

LRS = ["1e-3", "3e-3", "1e-2", "3e-2"]
FACTORS = [1.2, 0.8, 1.0]  # val metrics of jobs 0-2 scaled by these: the ranking is job 1, job 2, job 0
EXPECTED_ORDER = ["1", "2", "0", "3"]  # job 3 has no summary.json: it ranks last, as failed


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real training run (config.yaml, csv/metrics.csv, summary.json as `lmlab train` writes them)."""
    from lmlab.cli.train import train

    tmp = tmp_path_factory.mktemp("real")
    corpus = tmp / "corpus.txt"
    corpus.write_text(TINY_TEXT, encoding="utf-8")
    cfg = compose_train(tmp, ["data=text_files", f"data.corpus.paths=[{corpus}]"])
    train(cfg)
    return Path(cfg.paths.output_dir)


def scale_metrics(job: Path, factor: float) -> None:
    """Multiply the run's validation metrics (summary.json and metrics.csv) by `factor`."""
    summary = json.loads((job / "summary.json").read_text())
    summary["metrics"] = {k: v * factor if k.startswith("val/") else v for k, v in summary["metrics"].items()}
    (job / "summary.json").write_text(json.dumps(summary, indent=2))
    path = job / "csv/metrics.csv"
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        rows, fields = list(reader), list(reader.fieldnames or [])
    for row in rows:
        row |= {k: str(float(v) * factor) for k, v in row.items() if k.startswith("val/") and v}
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def make_job(sweep: Path, num: int, real_run: Path, overrides: list[str]) -> Path:
    """A copy of the real run as job `num` of a Hydra sweep, with these overrides (saved as Hydra saves them)."""
    job = sweep / str(num)
    shutil.copytree(real_run, job, ignore=shutil.ignore_patterns("checkpoints"))
    (job / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create(overrides), job / ".hydra/overrides.yaml")
    config = OmegaConf.load(job / "config.yaml")
    for override in overrides:
        key, value = override.split("=")
        OmegaConf.update(config, key, float(value) if key == "optimizer.lr" else int(value))
    (job / "config.yaml").write_text(OmegaConf.to_yaml(config))
    return job


@pytest.fixture
def sweep(real_run: Path, tmp_path: Path) -> Path:
    """Jobs 0-3 over optimizer.lr; model.n_layer=1 is on some command lines but equals the others' config value."""
    root = tmp_path / "sweep"
    for num, lr in enumerate(LRS):
        extra = ["model.n_layer=1"] if num % 2 else []
        job = make_job(root, num, real_run, [f"optimizer.lr={lr}", "trainer.max_steps=4", *extra])
        if num < len(FACTORS):
            scale_metrics(job, FACTORS[num])
        else:  # crashed: config written, no metrics yet
            (job / "summary.json").unlink()
            shutil.rmtree(job / "csv")
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def test_runs_are_ranked_by_the_optimized_metric_with_swept_settings(sweep: Path) -> None:
    report = build_report(sweep)
    assert report.metric == "val/loss" and not report.maximize  # the config's optimized_metric
    assert [run.name for run in report.runs] == EXPECTED_ORDER
    assert report.swept == ["optimizer.lr"]  # trainer.max_steps and model.n_layer are the same in every run
    rows = report.rows()
    assert [row["optimizer.lr"] for row in rows] == [LRS[int(n)] for n in EXPECTED_ORDER]
    assert [row["status"] for row in rows] == ["ok", "ok", "ok", "failed"]
    finals = [row["val/loss final"] for row in rows[:3]]
    assert finals == sorted(finals) and rows[3]["val/loss final"] is None
    summary = json.loads((sweep / "1/summary.json").read_text())
    assert rows[0]["val/loss final"] == summary["metrics"]["val/loss"]
    assert rows[0]["parameters"] == summary["parameters"] and rows[0]["tokens/s"] == summary["tokens_per_s"]
    assert rows[0]["val/loss best"] <= rows[0]["val/loss final"]


def test_direction_follows_the_metric_name_or_the_option(sweep: Path) -> None:
    assert maximized("val/acc") and maximized("val/mlm_acc") and maximized("test/f1")
    assert not maximized("val/loss") and not maximized("val/bpb") and not maximized("val/ppl")
    report = build_report(sweep, metric="val/bpb", maximize=True, extra_metrics=["val/ppl"])
    assert [run.name for run in report.runs] == ["0", "2", "1", "3"]
    assert report.rows()[0]["val/ppl"] == json.loads((sweep / "0/summary.json").read_text())["metrics"]["val/ppl"]


def test_best_ranking_uses_the_best_logged_value(sweep: Path) -> None:
    path = sweep / "0/csv/metrics.csv"
    text = path.read_text().splitlines()
    header = text[0].split(",")
    early = [""] * len(header)
    early[header.index("epoch")], early[header.index("step")] = "0", "1"
    early[header.index("val/loss")] = "0.01"  # job 0 was the best of all at step 1, then got worse
    path.write_text("\n".join([*text, ",".join(early)]) + "\n")
    assert build_report(sweep, rank_by="best").runs[0].name == "0"
    assert build_report(sweep, rank_by="final").runs[0].name == "1"
    with pytest.raises(LmlabError, match="rank_by='last' is unknown; choose final or best"):
        build_report(sweep, rank_by="last")


def test_writes_markdown_csv_and_valid_plots(sweep: Path, tmp_path: Path) -> None:
    written = write_report(build_report(sweep), tmp_path / "out")
    names = sorted(p.name for p in written)
    assert names == ["report.csv", "report.md", "report_curves.png", "report_vs_optimizer.lr.png"]
    lines = (tmp_path / "out/report.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| rank"))
    assert "| optimizer.lr |" in header and "model.n_layer" not in header and "max_steps" not in header
    table = [line for line in lines if line.startswith("| ") and line != header]
    assert [line.split(" | ")[1] for line in table] == EXPECTED_ORDER
    assert table[-1].endswith("| failed |") and "![report_curves](report_curves.png)" in lines
    with (tmp_path / "out/report.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["run"] for row in rows] == EXPECTED_ORDER and [row["rank"] for row in rows] == ["1", "2", "3", "4"]
    summary = json.loads((sweep / "2/summary.json").read_text())
    assert float(rows[1]["val/loss final"]) == summary["metrics"]["val/loss"] and rows[3]["val/loss final"] == ""
    for png in (p for p in written if p.suffix == ".png"):
        with Image.open(png) as image:
            image.verify()
            assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100


def test_damaged_and_partial_runs_are_failed_rows(sweep: Path) -> None:
    (sweep / "0/summary.json").write_text("{")  # killed while writing
    (sweep / "2/csv/metrics.csv").write_bytes(b"epoch,step,val/loss\n0,1,\xff\xfe")
    hydra_only = sweep / "9/.hydra"
    hydra_only.mkdir(parents=True)
    (hydra_only / "overrides.yaml").write_text("- optimizer.lr=0.1\n")  # failed before writing config.yaml
    report = build_report(sweep)
    status = {row["run"]: row["status"] for row in report.rows()}
    assert status == {"1": "ok", "2": "ok", "0": "failed", "3": "failed", "9": "failed"}
    assert [run.name for run in report.runs][:2] == ["1", "2"]


def test_a_single_run_folder_is_a_report_of_one(real_run: Path, tmp_path: Path) -> None:
    assert find_runs(real_run) == [real_run]
    report = build_report(real_run)
    assert [run.name for run in report.runs] == ["."] and report.swept == []
    written = write_report(report, tmp_path)
    assert (tmp_path / "report_curves.png") in written and not list(tmp_path.glob("report_vs_*"))


def test_folder_of_runs_without_overrides_compares_their_configs(real_run: Path, tmp_path: Path) -> None:
    for name, steps in (("a", 4), ("b", 8)):
        job = tmp_path / "runs" / name
        shutil.copytree(real_run, job, ignore=shutil.ignore_patterns("checkpoints"))
        config = OmegaConf.load(job / "config.yaml")
        config.trainer.max_steps, config.paths.output_dir = steps, str(job)
        (job / "config.yaml").write_text(OmegaConf.to_yaml(config))
    assert build_report(tmp_path / "runs").swept == ["trainer.max_steps"]


def test_cli_positional_folder_prints_table_and_writes(sweep: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["lmlab"])
    main(["report", str(sweep), "metrics=[val/bpb]"])
    out = capsys.readouterr().out
    assert "ranked by final val/loss (lower is better)" in out and "optimizer.lr" in out and "val/bpb" in out
    assert out.index("3e-3") < out.index("1e-2") < out.index("1e-3") < out.index("failed")
    assert f"written: {sweep / 'report.md'}" in out and (sweep / "report_vs_optimizer.lr.png").is_file()


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("missing", "error: {path} does not exist; give a run folder (outputs/...) or a sweep folder (multirun/...)"),
        ("empty", "error: no runs under {path} (no folder with config.yaml, summary.json or .hydra/overrides.yaml)"),
    ],
)
def test_no_runs_is_one_line_and_nonzero(where: str, message: str, tmp_path: Path, capsys, monkeypatch) -> None:
    path = tmp_path / where
    if where == "empty":
        (path / "logs").mkdir(parents=True)
    monkeypatch.setattr(sys, "argv", ["lmlab"])
    with pytest.raises(SystemExit) as exit_:
        main(["report", f"dir={path}"])
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(message.format(path=path)) and "\n" not in err
    assert not path.exists() or [p.name for p in path.iterdir()] == ["logs"]  # nothing written


def test_no_folder_given_names_the_usage(capsys, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["lmlab"])
    with pytest.raises(SystemExit) as exit_:
        main(["report"])
    assert exit_.value.code == 1
    assert capsys.readouterr().err.strip() == (
        "error: give the folder to report on: lmlab report multirun/<date>/<time> (or outputs/...)"
    )


def test_folder_argument_becomes_dir_override() -> None:
    assert folder_argument(["multirun/x", "metric=val/bpb"]) == ["dir='multirun/x'", "metric=val/bpb"]
    assert folder_argument(["--cfg", "job", "it's"]) == ["--cfg", "job", "dir='it\\'s'"]


def test_report_does_not_import_torch(sweep: Path) -> None:
    code = (
        "import sys; from lmlab.cli.main import main; main(['report', sys.argv[1], 'plots=false']); "
        "heavy = [m for m in ('torch', 'pytorch_lightning', 'wandb') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    result = subprocess.run([sys.executable, "-c", code, str(sweep)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (sweep / "report.md").is_file()


@pytest.mark.slow
def test_report_on_a_real_cli_sweep(tmp_path: Path) -> None:
    from tests.helpers.cli import run_cli

    tiny = [o for o in TINY_OVERRIDES + TINY_MODEL["gpt"] if not o.startswith("logger=")]
    sweep = tmp_path / "sweep"
    result = run_cli(
        "train", "-m", "optimizer.lr=1e-3,3e-2", *tiny, "logger=csv", f"hydra.sweep.dir={sweep}",
        cwd=tmp_path, env={"LMLAB_CACHE": str(tmp_path / "cache")}, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_cli("report", str(sweep), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = build_report(sweep)
    assert report.swept == ["optimizer.lr"] and len(report.runs) == 2
    finals = [run.final("val/loss") for run in report.runs]
    assert None not in finals and finals == sorted(finals)
    for name in ("report.md", "report.csv", "report_curves.png", "report_vs_optimizer.lr.png"):
        assert (sweep / name).stat().st_size > 0


def test_brackets_in_settings_print_as_text(sweep: Path, capsys, monkeypatch) -> None:
    overrides = sweep / "0/.hydra/overrides.yaml"
    OmegaConf.save(OmegaConf.create([*OmegaConf.load(overrides), "+tags=[bold,x]"]), overrides)
    monkeypatch.setattr(sys, "argv", ["lmlab"])
    main(["report", str(sweep), "plots=false"])
    assert "[bold,x]" in capsys.readouterr().out  # not taken for Rich markup
    assert "| +tags |" not in (sweep / "report.md").read_text() and "| tags |" in (sweep / "report.md").read_text()


def test_resumed_attempts_are_not_runs_of_their_own(real_run: Path, tmp_path: Path) -> None:
    """Three interruptions, each restarted with `resume=auto`: Hydra makes a folder per invocation, but the run
    lives in the first one (its resumes.log names the later ones). Copied elsewhere, the tree reports the same."""
    from lmlab.config.resume import note_resume

    day = tmp_path / "outputs" / "train" / "day"
    run = make_job(day, 0, real_run, ["optimizer.lr=1e-3"])
    for num in (1, 2, 3):
        attempt = day / str(num)
        (attempt / ".hydra").mkdir(parents=True)
        OmegaConf.save(OmegaConf.create(["optimizer.lr=1e-3", "resume=auto"]), attempt / ".hydra/overrides.yaml")
        (attempt / "train.log").write_text("resume: ...\n")
        note_resume(run, attempt, run / "checkpoints" / "last.ckpt", complete=num == 3)  # 3: found it complete
    (day / "9" / ".hydra").mkdir(parents=True)  # a run that failed before writing its config: still a run
    OmegaConf.save(OmegaConf.create(["optimizer.lr=1e-2"]), day / "9/.hydra/overrides.yaml")
    shutil.copytree(tmp_path / "outputs", tmp_path / "copy")
    for root, prefix in ((tmp_path / "outputs", "train/day"), (tmp_path / "copy" / "train", "day")):
        report = build_report(root)
        assert [(row["run"], row["status"]) for row in report.rows()] == [
            (f"{prefix}/0", "ok"),
            (f"{prefix}/9", "failed"),
        ]
        assert report.swept == ["optimizer.lr"] and report.title().startswith("2 runs")


def test_swept_fractions_print_with_four_significant_digits(sweep: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    lr = "0.0015291934777093281"  # as Optuna samples it
    overrides = sweep / "0/.hydra/overrides.yaml"
    OmegaConf.save(OmegaConf.create([f"optimizer.lr={lr}", "trainer.max_steps=4"]), overrides)
    monkeypatch.setattr(sys, "argv", ["lmlab"])
    main(["report", str(sweep), "plots=false"])
    out = capsys.readouterr().out
    assert "0.001529 " in out and lr not in out
    assert "| 0.001529 |" in (sweep / "report.md").read_text()
    with (sweep / "report.csv").open(newline="") as file:
        assert lr in [row["optimizer.lr"] for row in csv.DictReader(file)]  # the CSV keeps every digit
    assert "| 1e-2 |" in (sweep / "report.md").read_text()  # values already short stay as written
