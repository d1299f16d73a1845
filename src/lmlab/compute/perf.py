"""What a device can do and what a run used: peak FLOP/s (GPU table or CPU calibration) and peak memory."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import platform
import resource
import sys
import time
from pathlib import Path

import torch

from lmlab.io import atomic_write_text

log = logging.getLogger("lmlab")

PRECISION_DTYPES = {"64": torch.float64, "32": torch.float32, "16": torch.float16, "bf16": torch.bfloat16}
"""Compute dtype by the first part of Lightning's precision string (`bf16-mixed` -> bfloat16)."""

_SAME_AS = {"h200": "h100 sxm", "h100": "h100 sxm"}
"""GPUs whose dense rates are another entry's: the H200 SXM has the H100 SXM's tensor cores and clocks, while
Lightning's own `h200 sxm1` row holds the with-sparsity rates (twice the dense ones MFU is measured against), and
Lightning misses a plain `NVIDIA H100` name."""


def compute_dtype(precision: str | int) -> torch.dtype:
    """The dtype matmuls run in under a Lightning precision setting (`32-true`, `bf16-mixed`, `16-true`, ...)."""
    return PRECISION_DTYPES.get(str(precision).split("-")[0], torch.float32)


def gpu_peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """Dense peak FLOP/s of a CUDA device from Lightning's table (None for a GPU it does not list)."""
    from lightning_fabric.utilities import throughput

    words = torch.cuda.get_device_name(device).lower().split()
    same_as = next((entry for key, entry in _SAME_AS.items() if key in words), None)
    if same_as is None or "nvl" in words or "pcie" in words:
        peak = throughput.get_available_flops(device, dtype)
    else:
        if dtype is torch.float32 and torch.get_float32_matmul_precision() != "highest":
            dtype = "tfloat32"  # type: ignore[assignment]
        peak = getattr(throughput, "_CUDA_FLOPS", {}).get(same_as, {}).get(dtype)
    return float(peak) if peak else None


@functools.cache
def cpu_matmul_flops(
    sizes: tuple[int, ...] = (512, 1024, 2048),
    seconds: float = 0.6,
    threads: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> float:
    """Measured matmul FLOP/s of this CPU in `dtype` with the current torch threads: the fastest single square
    product of each of `sizes`, tried over about `seconds` in all (cached per process, thread count and dtype).

    The best of many short products, not one long or average one: other processes only slow a product down, and a
    512² product (about a millisecond) finds a quiet moment on a busy machine where a 2048² one (a third of a second
    on two cores) cannot; the large sizes serve CPUs with many cores, which small products do not fill. Larger sizes
    are skipped once one product overruns its share of `seconds` (bf16 on a CPU without bf16 instructions runs at
    ~1 % of fp32: one 2048² product would take seconds). A calibration is still only a measurement, so `Throughput`
    raises the peak to any rate a run achieves.
    """
    del threads  # part of the cache key only
    generator = torch.Generator().manual_seed(0)  # its own: training's random state must not move (exact resume)
    share = seconds / len(sizes)
    best = 0.0
    for size in sizes:
        a = torch.randn(size, size, generator=generator).to(dtype)
        b = torch.randn(size, size, generator=generator).to(dtype)
        start = time.perf_counter()
        torch.mm(a, b)  # warm up
        if time.perf_counter() - start > share and best > 0:
            break  # larger products would only overrun the budget
        deadline = time.perf_counter() + share
        while True:
            start = time.perf_counter()
            torch.mm(a, b)
            elapsed = time.perf_counter() - start
            best = max(best, 2.0 * size**3 / elapsed)
            if time.perf_counter() > deadline:
                break
        if elapsed > share:
            break
    return best


CPU_DTYPES = {torch.float32: torch.float32, torch.bfloat16: torch.bfloat16, torch.float16: torch.bfloat16}
"""The dtype a CPU's matmuls run in under each compute dtype: CPU autocast has no fp16, so `16-mixed` runs bf16."""


def device_peak_flops(
    device: torch.device, precision: str | int, configured: float | None = None, cache: str | Path | None = None
) -> float | None:
    """Peak FLOP/s of one device: `configured` when given, Lightning's table for a GPU, a matmul calibration in the
    run's compute dtype for a CPU (fp32, or bf16 under `bf16-mixed`/`16-mixed`: AMX CPUs run bf16 ~6x faster than
    fp32, CPUs without bf16 instructions ~100x slower, so neither peak stands in for the other); None otherwise.

    `cache`: a JSON file keeping CPU calibrations by CPU model, dtype, thread count and torch version, so only the
    first run on a machine spends the calibration's second of start-up (delete the file to measure again)."""
    if configured:
        return float(configured)
    dtype = compute_dtype(precision)
    if device.type == "cuda":
        return gpu_peak_flops(device, dtype)
    if device.type == "cpu" and dtype in CPU_DTYPES:
        matmul_dtype, threads = CPU_DTYPES[dtype], torch.get_num_threads()
        name = str(matmul_dtype).removeprefix("torch.")
        cache = Path(cache).expanduser() if cache is not None else None  # the default `~/.cache/lmlab/...`
        known = read_calibrations(cache)
        key = f"{cpu_model()}|{name}|{threads} threads|torch {torch.__version__}"
        peak = known.get(key) or cpu_matmul_flops(threads=threads, dtype=matmul_dtype)
        if cache is not None and key not in known:
            with contextlib.suppress(OSError):  # a read-only cache only costs the next run a calibration
                cache.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(cache, json.dumps(known | {key: peak}, indent=1))
        log.info("CPU %s matmul peak: %.1f GFLOP/s (%d threads%s)", name, peak / 1e9, threads,
                 ", calibrated earlier" if key in known else "")  # fmt: skip
        return peak
    return None


def read_calibrations(cache: str | Path | None) -> dict[str, float]:
    """CPU peaks measured earlier (`device_peak_flops`'s cache), or none."""
    try:
        known = json.loads(Path(cache).read_text(encoding="utf-8")) if cache is not None else {}
    except (OSError, ValueError):
        return {}
    return {k: float(v) for k, v in known.items() if isinstance(v, int | float)} if isinstance(known, dict) else {}


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else the platform's processor string."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this process: max allocated on a CUDA device, else the peak resident set size (RSS)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB, macOS bytes


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1024
    return f"{n:.1f} TiB"
