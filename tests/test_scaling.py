"""Scaling-law fit (`lmlab.analysis.scaling`, `lmlab report DIR fit=scaling`) on synthetic runs from known constants."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from lmlab.analysis.scaling import (
    ChinchillaFit,
    ScalingPoint,
    bootstrap,
    fit_chinchilla,
    held_out_check,
    spread,
)
from lmlab.cli.main import main
from lmlab.errors import LmlabError

TRUE = ChinchillaFit(E=0.9, A=30.0, B=200.0, alpha=0.35, beta=0.3)
"""Constants behind the synthetic runs: losses from ~5 down to ~2.3 over the grid, as char-level runs give."""
SIZES = np.geomspace(2e4, 1e6, 6)
TOKENS = np.geomspace(1e6, 3e7, 4)


def synthetic(noise: float = 0.002, seed: int = 0) -> list[ScalingPoint]:
    """A 6 sizes × 4 budgets grid with multiplicative log-normal noise on the loss."""
    rng = np.random.default_rng(seed)
    return [
        ScalingPoint(f"{i}", float(n), float(d), float(TRUE.predict(n, d) * np.exp(rng.normal(0.0, noise))))
        for i, (n, d) in enumerate(itertools.product(SIZES, TOKENS))
    ]


@pytest.fixture(scope="module")
def fitted() -> ChinchillaFit:
    return fit_chinchilla(synthetic())


def test_constants_are_recovered(fitted: ChinchillaFit) -> None:
    assert pytest.approx(TRUE.E, rel=0.05) == fitted.E
    assert fitted.alpha == pytest.approx(TRUE.alpha, abs=0.03)
    assert fitted.beta == pytest.approx(TRUE.beta, abs=0.03)
    assert np.log10(fitted.A) == pytest.approx(np.log10(TRUE.A), abs=0.15)
    assert np.log10(fitted.B) == pytest.approx(np.log10(TRUE.B), abs=0.15)


def test_noiseless_fit_is_exact() -> None:
    fit = fit_chinchilla(synthetic(noise=0.0), starts=[(5.0, 5.0, 0.0, 0.5, 0.5), (2.0, 8.0, -0.5, 0.25, 0.75)])
    for name in ("E", "A", "B", "alpha", "beta"):
        assert getattr(fit, name) == pytest.approx(getattr(TRUE, name), rel=0.01), name


def test_bootstrap_gives_finite_spreads(fitted: ChinchillaFit) -> None:
    std = spread(bootstrap(synthetic(), fitted, samples=10, seed=1))
    assert set(std) == {"E", "A", "B", "alpha", "beta"}
    assert all(np.isfinite(v) and v >= 0 for v in std.values()) and std["alpha"] > 0


def test_allocation_matches_the_closed_form_and_minimises_loss() -> None:
    compute = 1e15
    n, d = TRUE.optimal(compute)
    assert 6 * n * d == pytest.approx(compute)
    a, b = TRUE.alpha, TRUE.beta
    g = (a * TRUE.A / (b * TRUE.B)) ** (1 / (a + b))
    assert n == pytest.approx(g * (compute / 6) ** (b / (a + b)))
    others = np.geomspace(n / 10, n * 10, 101)  # every other split of the same compute is worse
    assert TRUE.frontier(compute) <= TRUE.predict(others, compute / (6 * others)).min() + 1e-12


def test_held_out_largest_run_is_predicted_within_one_percent() -> None:
    check = held_out_check(synthetic())
    assert check["run"] == "23" and check["fit_runs"] >= 5
    assert check["relative_error"] < 0.01


def write_runs(root: Path, points: list[ScalingPoint], keep: set[str] | None = None) -> Path:
    """Minimal run folders as `lmlab train -m` leaves them: overrides, config and summary.json."""
    for num, point in enumerate(points):
        job = root / str(num)
        (job / ".hydra").mkdir(parents=True)
        overrides = [f"model.n_embd={int(point.n)}", f"trainer.max_steps={int(point.d)}"]
        OmegaConf.save(OmegaConf.create(overrides), job / ".hydra/overrides.yaml")
        (job / "config.yaml").write_text("optimized_metric: val/loss\n")
        summary = {"metrics": {"val/loss": point.loss}, "parameters": int(point.n), "train_tokens": int(point.d),
                   "non_embedding_parameters": int(point.n * 0.9), "steps": 10}  # fmt: skip
        summary = {k: v for k, v in summary.items() if keep is None or k in keep}
        (job / "summary.json").write_text(json.dumps(summary))
    return root


def test_cli_prints_constants_and_writes_png_and_json(tmp_path: Path, capsys, monkeypatch) -> None:
    sweep = write_runs(tmp_path / "sweep", synthetic())
    monkeypatch.setattr(sys, "argv", ["lmlab"])
    main(["report", str(sweep), "fit=scaling", "compute=1e15", "scaling.bootstrap=5", "plots=false"])
    out = capsys.readouterr().out
    assert "E = 0.9" in out and "alpha = 0.3" in out and "for compute C = 1e+15 FLOPs" in out
    assert "use N* = " in out and "held-out check: fit on" in out
    result = json.loads((sweep / "scaling.json").read_text())
    assert result["allocation"]["compute"] == 1e15 and len(result["runs"]) == 24
    assert result["fit"]["E"] == pytest.approx(TRUE.E, rel=0.05)
    with Image.open(sweep / "scaling.png") as image:
        assert image.size[0] > 500


@pytest.mark.parametrize(
    ("runs", "keep", "message"),
    [
        (4, None, "error: fit=scaling needs at least 5 finished runs with parameters, train_tokens"),
        (8, {"metrics", "parameters", "steps"}, "error: fit=scaling needs at least 5 finished runs"),
    ],
)
def test_too_few_runs_or_fields_is_one_line(runs: int, keep, message: str, tmp_path: Path, capsys, monkeypatch) -> None:
    sweep = write_runs(tmp_path / "sweep", synthetic()[:runs], keep)
    monkeypatch.setattr(sys, "argv", ["lmlab"])
    with pytest.raises(SystemExit) as exit_:
        main(["report", str(sweep), "fit=scaling", "plots=false"])
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err
    assert not (sweep / "scaling.json").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["fit=chinchilla"], "error: fit='chinchilla' is unknown; choose fit=scaling (or leave fit out)"),
        (
            ["fit=scaling", "compute=lots"],
            "error: compute='lots' is not a positive number of FLOPs; give e.g. compute=1e15",
        ),
    ],
)
def test_bad_fit_options_are_one_line(options: list[str], message: str, tmp_path: Path, capsys, monkeypatch) -> None:
    sweep = write_runs(tmp_path / "sweep", synthetic()[:6])
    monkeypatch.setattr(sys, "argv", ["lmlab"])
    with pytest.raises(SystemExit):
        main(["report", str(sweep), *options, "plots=false"])
    assert capsys.readouterr().err.strip() == message
    assert not (sweep / "report.md").exists()  # refused before anything is written


def test_unknown_parameters_name_the_choices() -> None:
    from lmlab.analysis.scaling import scaling_points

    with pytest.raises(LmlabError, match="choose total or non_embedding"):
        scaling_points([], "val/loss", "all")


def test_runs_record_non_embedding_parameters_and_compute() -> None:
    from lmlab.models import GPT, GPTConfig
    from lmlab.runs.summary import scaling_fields

    model = GPT(GPTConfig(vocab_size=65, block_size=16, n_layer=1, n_head=2, n_embd=16))
    fields = scaling_fields(model, tokens=1000, seq_len=16)
    tables = model.wte.weight.numel() + model.wpe.weight.numel()
    assert fields["non_embedding_parameters"] == model.num_parameters() - tables
    assert fields["train_flops"] == pytest.approx(model.flops_per_token(16) * 1000)
    assert fields["train_flops"] > 6 * model.num_parameters(non_embedding=True) * 1000  # + attention
