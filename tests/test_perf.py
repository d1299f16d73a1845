"""Throughput and MFU: the FLOPs count, the callback's metrics, the run summary, and the preflight check."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from lmlab.callbacks.throughput import Throughput, batch_shape
from lmlab.cli.train import train
from lmlab.compute import perf
from lmlab.compute.perf import cpu_matmul_flops, device_peak_flops
from lmlab.compute.preflight import estimate_memory, levers, shard_divisors
from lmlab.errors import LmlabError
from lmlab.models import GPT, LSTM, GPTConfig, LSTMConfig
from lmlab.models.flops import matmul_parameters
from tests.helpers.compose import compose_train


def test_gpt_flops_match_a_hand_count() -> None:
    V, T, L, C = 11, 8, 2, 16
    model = GPT(GPTConfig(vocab_size=V, block_size=T, n_layer=L, n_head=2, n_embd=C, bias=True))
    per_layer = 12 * C * C + 9 * C + 4 * C  # qkv, proj, fc, proj weights; their biases (3C+C+4C+C); 2 norms' gain+bias
    matmul = V * C + L * per_layer + 2 * C  # tied token table (= the head), blocks, final norm; no position table
    assert matmul_parameters(model) == matmul == model.num_parameters(non_embedding=True)
    assert model.flops_per_token() == 6 * matmul + 12 * L * C * T
    assert model.flops_per_token(4) == 6 * matmul + 12 * L * C * 4


def test_gpt_flops_agree_with_torch_flop_counter() -> None:
    """6·N + attention is within 1 % of the FLOPs torch counts in one forward + backward (the math attention
    kernel, whose matmuls the counter sees; only norms and biases are in N and not counted)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    B, T = 2, 32
    model = GPT(GPTConfig(vocab_size=64, block_size=T, n_layer=2, n_head=4, n_embd=64))
    idx = torch.randint(0, 64, (B, T))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(idx).flatten(0, 1), idx.flatten()).backward()
    counted = counter.get_total_flops() / (B * T)
    assert abs(counted / model.flops_per_token() - 1) < 0.01


def test_lstm_flops_leave_out_the_lookup_table() -> None:
    model = LSTM(LSTMConfig(vocab_size=20, n_layer=1, n_embd=8, n_hidden=12))
    total = sum(p.numel() for p in model.parameters())
    assert model.flops_per_token() == 6 * (total - 20 * 8)


def test_peak_flops_configured_calibrated_or_unknown() -> None:
    cpu = torch.device("cpu")
    assert device_peak_flops(cpu, "32-true", configured=5e9) == 5e9
    assert device_peak_flops(torch.device("meta"), "32-true") is None  # neither listed nor calibrated
    assert cpu_matmul_flops(sizes=(64, 128), seconds=0.02) > 1e6
    assert cpu_matmul_flops(sizes=(64, 128), seconds=0.02, dtype=torch.bfloat16) > 1e5


@pytest.mark.parametrize(
    ("precision", "calibrated"),
    [("32-true", torch.float32), ("bf16-mixed", torch.bfloat16), ("bf16-true", torch.bfloat16),
     ("16-mixed", torch.bfloat16)],
)  # fmt: skip
def test_cpu_peak_is_calibrated_in_the_dtype_matmuls_run_in(monkeypatch, precision: str, calibrated) -> None:
    """MFU under bf16 on a CPU is measured against a bf16 matmul peak (AMX: ~6x fp32; no bf16 hardware: ~1 %)."""
    asked: list[torch.dtype] = []

    def fake_calibration(threads: int | None = None, dtype: torch.dtype = torch.float32) -> float:
        asked.append(dtype)
        return 7e9

    monkeypatch.setattr(perf, "cpu_matmul_flops", fake_calibration)
    assert device_peak_flops(torch.device("cpu"), precision) == 7e9
    assert asked == [calibrated]


def test_cpu_calibration_is_kept_for_the_next_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lmlab.compute import perf

    cache, cpu = tmp_path / "perf" / "cpu_peak_flops.json", torch.device("cpu")
    monkeypatch.setattr(perf, "cpu_matmul_flops", lambda threads, dtype: 7e10)
    assert device_peak_flops(cpu, "32-true", cache=cache) == 7e10 and cache.is_file()

    def calibrate(threads: int, dtype: torch.dtype) -> float:
        raise AssertionError("a calibration kept in the cache is not measured again")

    monkeypatch.setattr(perf, "cpu_matmul_flops", calibrate)
    assert device_peak_flops(cpu, "32-true", cache=cache) == 7e10
    cache.write_text("not json")  # a damaged cache: measured again, not an error
    monkeypatch.setattr(perf, "cpu_matmul_flops", lambda threads, dtype: 8e10)
    assert device_peak_flops(cpu, "32-true", cache=cache) == 8e10


@pytest.mark.parametrize(
    ("name", "dtype", "dense"),
    [
        ("NVIDIA H200", torch.bfloat16, 989.4e12),  # Lightning's own H200 row holds the with-sparsity 2e15
        ("NVIDIA H100 80GB HBM3", torch.bfloat16, 989.4e12),
        ("NVIDIA H100", torch.float16, 989.4e12),  # a name Lightning's parser misses
        ("NVIDIA A100-SXM4-80GB", torch.bfloat16, 312e12),
    ],
)
def test_gpu_peak_is_the_dense_rate(monkeypatch, name: str, dtype: torch.dtype, dense: float) -> None:
    from lmlab.compute.perf import gpu_peak_flops

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert gpu_peak_flops(torch.device("cuda", 0), dtype) == pytest.approx(dense, rel=0.01)


def test_batch_shape_of_tuples_dicts_and_tensors() -> None:
    ids = torch.zeros(3, 5, dtype=torch.long)
    assert batch_shape((ids, ids)) == batch_shape({"input_ids": ids}) == batch_shape(ids) == (3, 15)


def test_tiny_run_logs_throughput_and_mfu(tmp_path, tiny_corpus, capsys, caplog) -> None:
    """A normal config passes the preflight (and prints it); MFU against a configured peak is in (0, 1]."""
    caplog.set_level("INFO", logger="lmlab")
    cfg = compose_train(
        tmp_path,
        ["data=text_files", f"data.corpus.paths=[{tiny_corpus}]", "callbacks.throughput.peak_flops=1e11",
         "trainer.max_steps=6", "trainer.val_check_interval=3"],
    )  # fmt: skip
    train(cfg)
    run = Path(cfg.paths.output_dir)
    rows = [r for r in csv.DictReader((run / "csv" / "metrics.csv").open()) if r["perf/mfu"]]
    assert len(rows) == 6  # every optimizer step (log_every_n_steps=1)
    for row in rows:
        assert float(row["perf/tokens_per_sec"]) > 0 and 0 < float(row["perf/mfu"]) <= 1
        assert float(row["perf/flops_per_sec"]) == pytest.approx(float(row["perf/mfu"]) * 1e11, rel=1e-4)
    perf = json.loads((run / "summary.json").read_text())["perf"]
    assert 0 < perf["mfu"] <= 1 and perf["peak_flops"] == 1e11
    assert perf["tokens_per_sec"] == pytest.approx(perf["samples_per_sec"] * cfg.model.block_size)
    assert perf["peak_memory_bytes"] > 50 * 2**20  # torch alone takes more than this
    out = capsys.readouterr().out
    assert "MFU" in out and "peak memory" in out and "tokens/s" in out
    assert "preflight:" in caplog.text and "tokens per optimizer step" in caplog.text and "AdamW" in caplog.text


def test_callback_summary_without_a_flops_estimate() -> None:
    callback = Throughput(peak_flops=1e9)
    callback.flops_per_token, callback.peak_flops = 0.0, 1e9
    assert set(callback.rates(4, 64, 2.0)) == {"tokens_per_sec", "samples_per_sec"}  # no FLOP/s, no MFU


def test_summary_leaves_out_the_warm_up_window(monkeypatch) -> None:
    """A slow first window (compilation, CUDA start-up) does not drag down the run's tokens/s."""
    clock = iter([10.0, 11.0, 12.0])  # windows end at these times: 10 s of warm-up, then 1 s and 1 s
    monkeypatch.setattr("lmlab.callbacks.throughput.time.perf_counter", lambda: next(clock))
    callback = Throughput()
    callback._start = 0.0
    for _ in range(3):
        callback._window = [2, 100, 0.0]
        callback._close_window()
    assert callback.summary()["tokens_per_sec"] == pytest.approx(100.0)  # 200 tokens in the last 2 s, not 300 in 12


class FakeClock:
    """`time.perf_counter` that moves only when told."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def drive(callback: Throughput, clock: FakeClock, seconds_per_step: list[float], max_steps: int) -> list[dict]:
    """Run the callback's hooks over one step per entry (4 sequences of 8 tokens), validating after step 3; return
    what it logged at each report."""
    from types import SimpleNamespace

    reports: list[dict] = []
    module = SimpleNamespace(log=lambda name, value, **kwargs: reports[-1].__setitem__(name, (value.item(), kwargs)))
    batch = torch.zeros(4, 8, dtype=torch.long)
    for step, seconds in enumerate(seconds_per_step, start=1):
        trainer = SimpleNamespace(world_size=1, global_step=step, optimizers=[], max_steps=max_steps)
        callback.on_train_batch_start(trainer, module, batch, 0)
        clock.now += seconds
        reports.append({})
        callback.on_train_batch_end(trainer, module, None, batch, 0)
        clock.now += 0.5  # the rest of the step: logging, progress bar
        if step == 3:
            callback.on_validation_start(trainer, module)
            clock.now += 100.0  # validation: not training time
    callback.on_train_end(trainer, module)
    return [r for r in reports if r]


def test_a_window_faster_than_the_calibrated_peak_raises_it_so_mfu_stays_at_most_one(monkeypatch, caplog) -> None:
    """A CPU calibration taken while other processes ran is below what a later window achieves; MFU must not read
    106 % then: the peak becomes the best rate reached, in every report and in the summary."""
    clock = FakeClock()
    monkeypatch.setattr("lmlab.callbacks.throughput.time.perf_counter", clock)
    callback = Throughput(every_n_steps=1)
    callback.flops_per_token, callback.peak_flops = 1e6, 32e6  # calibrated: 1 step of 32 tokens per second
    caplog.set_level("INFO", logger="lmlab")
    reports = drive(callback, clock, [1.0, 1.0, 0.25, 1.0], max_steps=4)  # step 3's window: 0.5 + 0.25 s
    mfus = [r["perf/mfu"][0] for r in reports]  # each window's, for the loggers
    assert max(mfus) == pytest.approx(1.0) and all(m <= 1.0 for m in mfus), mfus
    assert callback.peak_flops == pytest.approx(32e6 / 0.75)
    assert callback.summary()["mfu"] <= 1.0 and all(r["perf/avg_mfu"][0] <= 1.0 for r in reports)
    assert "above the estimated peak" in caplog.text


def test_the_progress_bar_ends_on_the_run_summary_numbers(monkeypatch) -> None:
    """The bar shows the run's steady-state rates so far (the loggers each window's): its last `tok/s` and `mfu`
    are the summary's, even when the budget ends between reports and a validation pause lies in between."""
    clock = FakeClock()
    monkeypatch.setattr("lmlab.callbacks.throughput.time.perf_counter", clock)
    callback = Throughput(every_n_steps=2, peak_flops=1e9)
    callback.flops_per_token, callback.peak_flops = 1e6, 1e9
    reports = drive(callback, clock, [5.0, 1.0, 1.0, 1.0, 0.1], max_steps=5)  # slow warm-up; a fast last step
    assert [sorted(k for k, (_, kw) in r.items() if kw["prog_bar"]) for r in reports] == [
        ["perf/avg_mfu", "perf/avg_tokens_per_sec"]
    ] * 3  # steps 2, 4 and the last (5)
    assert all(not kw["logger"] for r in reports for _, kw in r.values() if kw["prog_bar"])  # not charted
    summary = callback.summary()
    assert reports[-1]["perf/avg_tokens_per_sec"][0] == pytest.approx(summary["tokens_per_sec"])
    assert reports[-1]["perf/avg_mfu"][0] == pytest.approx(summary["mfu"])
    # steps 3-5 of 32 tokens (1-2 are the warm-up window) over their windows: 0.5 + 1 + 0.5, 1, 0.5 + 0.1 seconds
    assert summary["tokens_per_sec"] == pytest.approx(3 * 32 / (2.0 + 1.0 + 0.6))
    assert reports[-1]["perf/tokens_per_sec"][0] == pytest.approx(32 / 0.6)  # the last window, for the loggers


def test_reported_rates_are_cpu_tensors_so_the_progress_bar_never_waits_for_a_gpu() -> None:
    """Lightning turns a logged number into a tensor on the model's device and reads progress-bar values back on
    every step; a CPU tensor keeps that read-back free on a GPU run."""
    from types import SimpleNamespace

    logged = {}
    module = SimpleNamespace(log=lambda name, value, **kwargs: logged.setdefault(name, value))
    optimizer = SimpleNamespace(param_groups=[{"lr": 3e-4}])
    trainer = SimpleNamespace(world_size=1, global_step=10, optimizers=[optimizer], max_steps=100)
    callback = Throughput(every_n_steps=10, peak_flops=1e12)
    callback.flops_per_token, callback.peak_flops, callback._start = 1e6, 1e12, 0.0
    callback._first = (0, 0, 1.0)  # past the warm-up window
    callback.on_train_batch_end(trainer, module, None, torch.zeros(4, 8, dtype=torch.long), 0)
    assert {"perf/tokens_per_sec", "perf/mfu", "perf/avg_tokens_per_sec", "train/lr"} <= set(logged)
    assert all(isinstance(v, torch.Tensor) and v.device.type == "cpu" for v in logged.values()), logged
    assert logged["train/lr"].item() == pytest.approx(3e-4)


def test_preflight_refuses_before_the_first_step(tmp_path, tiny_corpus, caplog) -> None:
    cfg = compose_train(
        tmp_path, ["data=text_files", f"data.corpus.paths=[{tiny_corpus}]", "preflight.device_memory_gb=0.0001"]
    )
    with pytest.raises(LmlabError, match=r"exceeds preflight.device_memory_gb=0.0001; .*data.batch_size"):
        train(cfg)
    run = Path(cfg.paths.output_dir)
    assert not (run / "checkpoints").exists() and not (run / "csv" / "metrics.csv").exists()


def test_memory_estimate_by_precision_and_sharding() -> None:
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32))
    n = sum(p.numel() for p in model.parameters())
    fp32 = estimate_memory(model, "32-true", micro_batch=4, seq_len=16)
    assert (fp32.weights, fp32.grads, fp32.optimizer) == (4 * n, 4 * n, 8 * n)
    half = estimate_memory(model, "bf16-true", micro_batch=4, seq_len=16)
    assert half.states == fp32.states / 2 and half.activations < fp32.activations
    sharded = estimate_memory(model, "32-true", micro_batch=4, seq_len=16, shards=(4, 4, 4))
    assert sharded.states == fp32.states / 4 and sharded.activations == fp32.activations
    bf16 = estimate_memory(model, "bf16-mixed", micro_batch=4, seq_len=16)
    fused = estimate_memory(model, "bf16-mixed", micro_batch=4, seq_len=16, compiled_loss=True)
    assert bf16.activations - fused.activations == 4 * 16 * 50 * (8 - 2)  # an fp32 log-softmax less, a bf16 grad more
    model.config.activation_checkpointing = True  # the config flag (the block code reads the same name)
    assert estimate_memory(model, "32-true", micro_batch=4, seq_len=16).activations < fp32.activations
    assert "data.batch_size" in levers(estimate_memory(model, "32-true", micro_batch=4096, seq_len=16))
    assert "hardware=fsdp" in levers(estimate_memory(model, "32-true", micro_batch=1, seq_len=1))


def test_shard_divisors_follow_the_strategy() -> None:
    from pytorch_lightning.strategies import DDPStrategy, ModelParallelStrategy

    assert shard_divisors(DDPStrategy(), 4) == (1, 1, 1)
    assert shard_divisors(ModelParallelStrategy(), 4) == (4, 4, 4)


def test_train_loss_is_logged_on_logging_steps_and_the_last() -> None:
    from types import SimpleNamespace

    from lmlab.tasks import CausalLMTask

    task = CausalLMTask(GPTConfig(vocab_size=8, block_size=4, n_layer=1, n_head=1, n_embd=4))
    logged = []
    for step in range(25):
        task._trainer = SimpleNamespace(fast_dev_run=False, global_step=step, log_every_n_steps=10, max_steps=25)
        logged += [step] if task.is_logging_step() else []
    assert logged == [9, 19, 24]  # optimizer steps 10, 20 and the last, 25
