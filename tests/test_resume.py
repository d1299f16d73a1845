"""Resume, interruptions, atomic checkpoints and the finite-loss stop, in process on tiny runs."""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from lmlab.checkpoints.find import checkpoints_of
from lmlab.checkpoints.load import load_checkpoint, read_checkpoint
from lmlab.cli.train import train
from lmlab.config.groups import config_dir
from lmlab.config.resume import finished, new_run_instead, resume_run
from lmlab.data.sharding import GlobalBatchSampler
from lmlab.errors import LmlabError
from tests.helpers.compose import TINY_TEXT, compose_train
from tests.helpers.runs import base_overrides, metric_rows, stop_at


def test_sampler_starts_inside_an_epoch_and_depends_only_on_seed_and_epoch() -> None:
    data = list(range(10))
    whole = list(GlobalBatchSampler(data, micro_batch=2, seed=3))
    sampler = GlobalBatchSampler(data, micro_batch=2, seed=3)
    sampler.start_at(0, 4)
    assert list(sampler) == whole[4:]
    assert list(sampler) == whole  # the skip applies to one iteration only
    sampler.set_epoch(1)
    assert sorted(sampler) == data and list(sampler) != whole


def test_stop_mid_epoch_and_resume_gives_the_uninterrupted_metrics(tmp_path: Path, tiny_corpus: Path) -> None:
    straight = train(compose_train(tmp_path / "straight", base_overrides(tiny_corpus)))

    stops = stop_at([4, 9], [int(signal.SIGTERM), int(signal.SIGINT)])
    stopped = compose_train(tmp_path / "stopped", [*base_overrides(tiny_corpus), *stops])
    run_dir = Path(stopped.paths.output_dir)
    with pytest.raises(SystemExit) as exit_info:
        train(stopped)
    assert exit_info.value.code == 143
    assert read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 4
    with pytest.raises(SystemExit) as exit_info:  # resumed, then stopped by Ctrl+C inside the second epoch
        train(compose_train(tmp_path / "again", [*base_overrides(tiny_corpus), f"resume={run_dir}"]))
    assert exit_info.value.code == 130
    assert read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 9
    resumed = train(compose_train(tmp_path / "last", [*base_overrides(tiny_corpus), f"resume={run_dir}"]))

    assert resumed == straight  # val/loss, val/ppl, val/bpb: exactly equal
    assert metric_rows(run_dir) == metric_rows(tmp_path / "straight" / "run")  # every step's loss, logged once
    straight_last = read_checkpoint(tmp_path / "straight" / "run" / "checkpoints" / "last.ckpt")
    resumed_last = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert resumed_last["global_step"] == straight_last["global_step"] > 9
    assert sorted(p.name for p in checkpoints_of(run_dir)) == ["best-step000010.ckpt", "last.ckpt"]
    for key, weights in straight_last["state_dict"].items():
        assert torch.equal(resumed_last["state_dict"][key], weights), key
    assert len((run_dir / "resumes.log").read_text().splitlines()) == 2
    assert not (tmp_path / "again" / "run" / "checkpoints").exists()  # the run stayed in its own folder


def test_same_seed_and_config_give_identical_metrics(tmp_path: Path, tiny_corpus: Path) -> None:
    overrides = [*base_overrides(tiny_corpus), "trainer.max_steps=3", "trainer.val_check_interval=3"]
    first = train(compose_train(tmp_path / "one", overrides))
    second = train(compose_train(tmp_path / "two", overrides))
    assert first == second and first["val/loss"] > 0


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """One tiny finished run at `<tmp>/outputs/day/one/run`, and the overrides that made it."""
    root = tmp_path_factory.mktemp("resume")
    corpus = root / "corpus.txt"
    corpus.write_text(TINY_TEXT, encoding="utf-8")
    overrides = [*base_overrides(corpus), "trainer.max_steps=2"]
    cfg = compose_train(root / "outputs" / "day" / "one", overrides)
    train(cfg)
    return Path(cfg.paths.output_dir), overrides


def test_resume_refuses_a_change_the_checkpoint_depends_on(finished_run: tuple[Path, list[str]]) -> None:
    run_dir, overrides = finished_run
    here = run_dir.parents[1] / "changed"
    changed = compose_train(here, [*overrides, "model.n_embd=32", f"resume={run_dir}"])
    with pytest.raises(LmlabError, match=r"model.n_embd=32 changes model.n_embd") as error:
        resume_run(changed, ["model.n_embd=32", f"resume={run_dir}"])
    assert str(error.value).endswith("or start a new run (leave out resume)")  # causal_lm has no task.init_from
    classification = OmegaConf.create({"task": OmegaConf.load(config_dir() / "task" / "classification.yaml")})
    assert "add task.init_from=<checkpoint>" in new_run_instead(classification)  # test_finetune runs that advice
    with pytest.raises(LmlabError, match=r"hardware=ddp_cpu replaces or removes a part of the saved config"):
        resume_run(compose_train(here, [*overrides, f"resume={run_dir}"]), ["hardware=ddp_cpu"])
    (run_dir / ".hydra").mkdir(exist_ok=True)  # Hydra's record of the first invocation's group choices
    (run_dir / ".hydra" / "hydra.yaml").write_text("hydra:\n  runtime:\n    choices:\n      hardware: ddp_cpu\n")
    resume_run(compose_train(here, [*overrides, f"resume={run_dir}"]), ["hardware=ddp_cpu"])  # the same choice
    longer = compose_train(here, [*overrides, "trainer.log_every_n_steps=2", f"resume={run_dir}"])
    cfg, checkpoint = resume_run(longer, ["trainer.log_every_n_steps=2", f"resume={run_dir}"])
    assert cfg.trainer.log_every_n_steps == 2 and cfg.paths.output_dir == str(run_dir)
    assert Path(checkpoint) == checkpoints_of(run_dir)[0]


def test_resume_auto_finds_the_run_of_the_same_config(finished_run: tuple[Path, list[str]]) -> None:
    run_dir, overrides = finished_run
    later = compose_train(run_dir.parents[1] / "two", [*overrides, "resume=auto"])
    cfg, checkpoint = resume_run(later, [])
    assert cfg.paths.output_dir == str(run_dir) and Path(checkpoint).parent == run_dir / "checkpoints"
    other = compose_train(run_dir.parents[1] / "three", [*overrides, "seed=7", "resume=auto"])
    cfg, checkpoint = resume_run(other, [])  # no run of this config yet: a new run
    assert checkpoint is None and cfg.paths.output_dir == other.paths.output_dir


def test_resuming_a_finished_run_changes_nothing(
    finished_run: tuple[Path, list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    """The docs' restart command (`resume=auto`), repeated after the run ended: one line, the same metrics, and no
    file of the run rewritten (no second final validation row, no summary without train/loss and throughput)."""
    run_dir, overrides = finished_run
    journal = run_dir / "resumes.log"  # one line per invocation, so `lmlab report` knows its folder is not a run
    files = lambda: {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p != journal}  # noqa: E731
    before, lines = files(), journal.read_text().splitlines() if journal.is_file() else []
    summary = json.loads((run_dir / "summary.json").read_text())
    with caplog.at_level(logging.INFO, logger="lmlab"):
        metrics = train(compose_train(run_dir.parents[1] / "again", [*overrides, "resume=auto"]))
    assert metrics == summary["metrics"]
    assert files() == before
    assert f"the run in {run_dir} is complete" in caplog.text
    assert journal.read_text().splitlines()[:-1] == lines and "complete" in journal.read_text().splitlines()[-1]
    longer = compose_train(run_dir.parents[1] / "longer", [*overrides, "trainer.max_steps=3", f"resume={run_dir}"])
    cfg, checkpoint = resume_run(longer, ["trainer.max_steps=3"])
    assert checkpoint and finished(cfg) is None  # a raised budget trains on


@pytest.mark.parametrize(
    "mode", ["read-at-once", "deferred-on-cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
)  # fmt: skip
def test_non_finite_loss_stops_before_writing_weights(
    tmp_path: Path, tiny_corpus: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deferred: the GPU path (flag to fused AdamW's found_inf, read one step later), forced on the CPU; `cuda`
    takes it by default (one GPU, fused AdamW, bf16-mixed)."""
    import lmlab.callbacks
    from lmlab.callbacks import FiniteLoss, GracefulInterrupt, RNGState

    if mode == "deferred-on-cpu":
        monkeypatch.setattr(
            lmlab.callbacks, "safety_callbacks", lambda i=None: [RNGState(), i or GracefulInterrupt(), FiniteLoss(True)]
        )
    explode = [
        *base_overrides(tiny_corpus),
        "trainer.max_steps=40",
        "optimizer.lr=1e12",
        "hardware=gpu" if mode == "cuda" else f"optimizer.fused={str(mode == 'deferred-on-cpu').lower()}",
        "trainer.gradient_clip_val=null",
        "+callbacks.model_checkpoint.every_n_train_steps=1",
        "callbacks.model_checkpoint.monitor=null",
    ]
    cfg = compose_train(tmp_path, explode)
    with pytest.raises(LmlabError, match=r"training stopped at step \d+: .*not finite.*last good checkpoint .*last"):
        train(cfg)
    saved = checkpoints_of(Path(cfg.paths.output_dir))
    assert saved
    for path in saved:  # nothing non-finite reached the disk
        assert all(bool(torch.isfinite(w).all()) for w in load_checkpoint(path).model.state_dict().values())


@pytest.mark.parametrize(
    ("loss", "grad", "precision", "error"),
    [
        (1.0, float("inf"), "32-true", r"a gradient is not finite"),
        (float("nan"), 1.0, "32-true", r"the loss is nan \(not finite\)"),
        (1.0, 1.0, "32-true", None),
        (1.0, float("inf"), "16-mixed", None),  # fp16's grad scaler skips such steps itself
    ],
)
def test_finite_loss_checks_loss_and_gradients(loss: float, grad: float, precision: str, error: str | None) -> None:
    from types import SimpleNamespace

    from lmlab.callbacks import FiniteLoss

    module = torch.nn.Linear(2, 1)
    for p in module.parameters():
        p.grad = torch.full_like(p, grad)
    trainer = SimpleNamespace(
        precision=precision, global_step=3, checkpoint_callback=None, optimizers=[],
        strategy=SimpleNamespace(reduce_boolean_decision=lambda decision, all=True: decision),
    )  # fmt: skip
    check = FiniteLoss()
    check.on_before_backward(trainer, module, torch.tensor(loss))
    if error is None:
        check.on_before_optimizer_step(trainer, module, None)
    else:
        with pytest.raises(LmlabError, match=rf"training stopped at step 4: {error}"):
            check.on_before_optimizer_step(trainer, module, None)


@pytest.mark.parametrize("last_step", [False, True], ids=["caught-next-step", "caught-at-train-end"])
def test_deferred_check_skips_the_bad_step_and_stops_with_its_number(last_step: bool) -> None:
    """The GPU path on the CPU: the flag goes to fused AdamW (no weight or moment changes), the error comes one step
    later (or when training ends) and names the bad step."""
    from types import SimpleNamespace

    from lmlab.callbacks import FiniteLoss

    module = torch.nn.Linear(2, 1)
    optimizer = torch.optim.AdamW(module.parameters(), lr=0.1, fused=True)
    trainer = SimpleNamespace(
        precision="32-true", global_step=3, checkpoint_callback=None, optimizers=[optimizer], world_size=1,
        strategy=SimpleNamespace(reduce_boolean_decision=lambda decision, all=True: decision),
    )  # fmt: skip
    check = FiniteLoss(deferred=True)

    def step(grad: float) -> None:
        for p in module.parameters():
            p.grad = torch.full_like(p, grad)
        check.on_before_backward(trainer, module, torch.tensor(1.0))
        check.on_before_optimizer_step(trainer, module, optimizer)
        optimizer.step()
        trainer.global_step += 1

    step(1.0)
    before = [p.detach().clone() for p in module.parameters()]
    moments = [optimizer.state[p]["exp_avg"].clone() for p in module.parameters()]
    step(float("nan"))  # step 5: no error yet, and nothing changed
    assert all(torch.equal(a, p) for a, p in zip(before, module.parameters(), strict=True))
    assert all(torch.equal(m, optimizer.state[p]["exp_avg"]) for m, p in zip(moments, module.parameters(), strict=True))
    with pytest.raises(LmlabError, match=r"training stopped at step 5: a gradient is not finite"):
        check.on_train_end(trainer, module) if last_step else step(1.0)
    assert all(torch.equal(a, p) for a, p in zip(before, module.parameters(), strict=True))


def test_finite_loss_reads_back_at_once_off_cuda_and_with_unfused_optimizers() -> None:
    from types import SimpleNamespace

    from lmlab.callbacks import FiniteLoss

    params = [torch.nn.Parameter(torch.ones(1))]
    fused, plain = torch.optim.AdamW(params, fused=True), torch.optim.AdamW(params)
    cpu = SimpleNamespace(world_size=1, strategy=SimpleNamespace(root_device=torch.device("cpu")))
    cuda = SimpleNamespace(world_size=1, strategy=SimpleNamespace(root_device=torch.device("cuda", 0)))
    two_gpus = SimpleNamespace(world_size=2, strategy=SimpleNamespace(root_device=torch.device("cuda", 0)))
    assert FiniteLoss().defers(cuda, fused) and not FiniteLoss().defers(cuda, plain)
    assert not FiniteLoss().defers(cpu, fused) and not FiniteLoss().defers(two_gpus, fused)
    assert FiniteLoss(deferred=True).defers(cpu, fused) and not FiniteLoss(deferred=False).defers(cuda, fused)


def test_resume_from_a_checkpoint_file_continues_its_run(finished_run: tuple[Path, list[str]]) -> None:
    run_dir, overrides = finished_run
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    cfg, chosen = resume_run(compose_train(run_dir.parents[1] / "four", [*overrides, f"resume={checkpoint}"]), [])
    assert cfg.paths.output_dir == str(run_dir) and Path(chosen) == checkpoint
    loose = run_dir.parents[1] / "loose.ckpt"  # a checkpoint outside its run folder: ckpt_path, which any task has
    loose.write_bytes(checkpoint.read_bytes())
    with pytest.raises(LmlabError, match=rf"not inside an lmlab run folder .*; .* give ckpt_path={loose} instead"):
        resume_run(compose_train(run_dir.parents[1] / "six", [*overrides, f"resume={loose}"]), [])
    missing = compose_train(run_dir.parents[1] / "five", [*overrides, f"resume={run_dir}/nothing"])
    with pytest.raises(LmlabError, match=r"does not exist; give a run folder, a .ckpt file, or resume=auto"):
        resume_run(missing, [])
