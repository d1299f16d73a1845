"""Batch arithmetic: global batch -> accumulation, samplers that deal the same global batches to any world size,
and (slow) the same loss curve for 1 process × accumulation 2, 2 DDP processes and 2 FSDP2 processes."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from lmlab.checkpoints.load import load_checkpoint
from lmlab.cli.train import build_trainer
from lmlab.compute.batching import accumulation_steps, describe_batch
from lmlab.data.sharding import EvalShardSampler, GlobalBatchSampler
from lmlab.errors import LmlabError
from tests.helpers.cli import run_cli
from tests.helpers.compose import TINY_MODEL, TINY_OVERRIDES, compose_train


def test_accumulation_from_global_batch() -> None:
    assert accumulation_steps(micro_batch=4, world_size=2, global_size=16) == 2
    assert accumulation_steps(micro_batch=4, world_size=1, global_tokens=16 * 64, block_size=64) == 4
    assert accumulation_steps(micro_batch=12, world_size=1) == 1  # no global batch: one micro-batch per process
    assert accumulation_steps(micro_batch=12, world_size=1, configured=3) == 3
    line = "global batch 16 sequences (1,024 tokens) = micro-batch 4 × 2 processes × accumulation 2"
    assert describe_batch(4, 2, 2, 64) == line


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"global_size": 12}, r"not divisible by data.batch_size × processes = 4 × 2 = 8; use a multiple of 8"),
        ({"global_tokens": 100, "block_size": 64}, r"global_tokens=100 is not a multiple of the sequence length 64"),
        ({"global_size": 8, "global_tokens": 64 * 16, "block_size": 64}, r"disagree .* set only one of them"),
        ({"global_size": 16, "configured": 2}, r"both set the accumulation; set only batch.global_size"),
    ],
)
def test_bad_global_batch_is_one_line(kwargs: dict, message: str) -> None:
    with pytest.raises(LmlabError, match=message):
        accumulation_steps(micro_batch=4, world_size=2, **kwargs)


def micro_batches(sampler: GlobalBatchSampler, micro: int) -> list[list[int]]:
    indices = list(sampler)
    return [indices[i : i + micro] for i in range(0, len(indices), micro)]


def global_batches(world: int, accumulation: int, micro: int, n: int = 103, epoch: int = 0) -> list[set[int]]:
    """Per optimizer step, the set of examples all ranks' micro-batches of that step hold."""
    ranks = []
    for rank in range(world):
        sampler = GlobalBatchSampler(range(n), micro, world, rank, accumulation, seed=7)
        sampler.set_epoch(epoch)
        ranks.append(micro_batches(sampler, micro))
    steps = len(ranks[0]) // accumulation
    window = [slice(k * accumulation, (k + 1) * accumulation) for k in range(steps)]
    return [{i for r in ranks for batch in r[w] for i in batch} for w in window]


def test_every_split_of_the_global_batch_sees_the_same_examples() -> None:
    reference = global_batches(world=1, accumulation=4, micro=3, epoch=1)
    assert len(reference) == 103 // 12 and all(len(step) == 12 for step in reference)
    for world, accumulation, micro in [(2, 2, 3), (4, 1, 3), (2, 1, 6), (1, 1, 12)]:
        assert global_batches(world, accumulation, micro, epoch=1) == reference, (world, accumulation, micro)
    assert global_batches(1, 4, 3, epoch=2) != reference  # a new shuffle each epoch


def test_too_small_split_for_one_global_batch() -> None:
    with pytest.raises(LmlabError, match="fewer than one global batch of 16"):
        GlobalBatchSampler(range(10), micro_batch=4, world_size=2, accumulation=2)


def test_evaluation_shards_cover_every_example_once() -> None:
    shards = [list(EvalShardSampler(range(11), world_size=3, rank=r)) for r in range(3)]
    assert sorted(i for shard in shards for i in shard) == list(range(11))
    assert [len(EvalShardSampler(range(11), 3, r)) for r in range(3)] == [4, 4, 3]
    with pytest.raises(LmlabError, match="fewer than the 4 processes"):
        EvalShardSampler(range(3), world_size=4, rank=0)


def test_trainer_gets_derived_accumulation_and_validates_in_steps(cfg_train, tmp_path: Path, tiny_corpus: Path):
    default = build_trainer(cfg_train)
    assert (default.accumulate_grad_batches, default.val_check_interval) == (1, 2)
    data = ["data=text_files", f"data.corpus.paths=[{tiny_corpus}]"]
    cfg = compose_train(tmp_path, [*data, "batch.global_tokens=192", "data.batch_size=4"])  # 12 sequences of 16
    trainer = build_trainer(cfg)
    assert (trainer.accumulate_grad_batches, trainer.val_check_interval) == (3, 6)
    with pytest.raises(LmlabError, match="use a multiple of 4"):
        build_trainer(compose_train(tmp_path, [*data, "batch.global_size=6"]))


# --- slow: the same loss curve on any world size (CLI in subprocesses, 2 gloo processes) -------------------------

CURVE = [o for o in TINY_OVERRIDES + TINY_MODEL["gpt"] if not o.startswith("trainer.max_steps")] + [
    "trainer.max_steps=6",
    "batch.global_size=8",
    "scheduler=constant",  # plain SGD without clipping: a wrongly normalised gradient changes the curve
    "optimizer._target_=torch.optim.SGD",
    "optimizer.lr=0.5",
    "~optimizer.betas",
    "~optimizer.eps",
    "trainer.gradient_clip_val=0",
]


def train_curve(tmp_path: Path, corpus: Path, name: str, *overrides: str) -> tuple[Path, dict[str, list[float]]]:
    """Run `lmlab train` with the curve settings; return its run dir and its logged train and val losses."""
    run_dir = tmp_path / name
    result = run_cli(
        "train", *CURVE, "data=text_files", f"data.corpus.paths=[{corpus}]", *overrides,
        f"hydra.run.dir={run_dir}", cwd=tmp_path, env={"LMLAB_CACHE": str(tmp_path / "cache")}, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    curves = {key: [float(r[key]) for r in rows if r[key]] for key in ("train/loss", "val/loss")}
    return run_dir, curves


@pytest.fixture(scope="module")
def reference_curve(tmp_path_factory) -> dict[str, list[float]]:
    """One process, micro-batch 4, accumulation 2."""
    tmp_path = tmp_path_factory.mktemp("reference")
    corpus = tmp_path / "corpus.txt"
    from tests.helpers.compose import TINY_TEXT

    corpus.write_text(TINY_TEXT)
    _, curves = train_curve(tmp_path, corpus, "single", "hardware=cpu", "data.batch_size=4")
    assert len(curves["train/loss"]) == 6 and len(curves["val/loss"]) == 3
    assert curves["train/loss"][-1] < curves["train/loss"][0] - 0.1  # it learns: the comparison is not trivial
    return curves


PROFILES = {
    "ddp_cpu": ["hardware=ddp_cpu"],
    "fsdp_cpu": ["hardware=fsdp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"],
}


@pytest.mark.slow
@pytest.mark.parametrize("profile", list(PROFILES))
def test_two_processes_match_one_process_with_accumulation(
    tmp_path: Path, tiny_corpus: Path, reference_curve: dict[str, list[float]], profile: str
) -> None:
    """2 processes × micro-batch 4 × accumulation 1 = 1 process × 4 × 2: same global batches, same loss curve."""
    run_dir, curves = train_curve(tmp_path, tiny_corpus, profile, *PROFILES[profile], "data.batch_size=4")
    for key, reference in reference_curve.items():
        assert curves[key] == pytest.approx(reference, abs=1e-5), key
    loaded = load_checkpoint(run_dir)  # one whole checkpoint file (FSDP gathers it), readable by every command
    ids = torch.tensor([[1, 2, 3]])
    assert loaded.model(ids).shape == (1, 3, loaded.model.config.vocab_size)


@pytest.mark.slow
def test_fsdp_on_cpu_trains_with_the_default_fused_adamw(tmp_path: Path, tiny_corpus: Path) -> None:
    """lmlab's default optimizer (AdamW, fused on CPU too) under FSDP2's sharded parameters, against one process."""
    adamw = [o for o in CURVE if not o.startswith(("optimizer", "~optimizer", "trainer.gradient_clip"))]
    curves = {}
    for name, profile in (("one", ["hardware=cpu"]), ("fsdp", PROFILES["fsdp_cpu"])):
        run = tmp_path / name
        result = run_cli(
            "train", *adamw, "data=text_files", f"data.corpus.paths=[{tiny_corpus}]", "data.batch_size=4", *profile,
            f"hydra.run.dir={run}", cwd=tmp_path, env={"LMLAB_CACHE": str(tmp_path / "cache")}, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        rows = list(csv.DictReader((run / "csv" / "metrics.csv").open()))
        curves[name] = [float(r["train/loss"]) for r in rows if r["train/loss"]]
        state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        assert state["optimizer_states"][0]["param_groups"][0]["fused"] is True
    assert curves["fsdp"] == pytest.approx(curves["one"], abs=1e-4)
    assert curves["fsdp"][-1] < curves["fsdp"][0]
