"""Checks that a hardware profile fits the machine, before any compute is spent."""

from __future__ import annotations

import functools
import importlib.util
import logging
from pathlib import Path

import torch

from lmlab.errors import LmlabError

log = logging.getLogger("lmlab")

CUDA_ONLY_STRATEGIES = ("deepspeed",)
"""Strategies that cannot run on a CPU at all (whatever `trainer.accelerator` says)."""
LOW_PRECISIONS = ("bf16-mixed", "bf16-true", "16-mixed", "16-true", "bf16", "16")


def check_accelerator(accelerator: str) -> None:
    """Refuse a CUDA profile on a machine without a visible CUDA device."""
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise LmlabError(
            f"trainer.accelerator={accelerator} needs a CUDA GPU and none is visible; use hardware=cpu "
            "(or check CUDA_VISIBLE_DEVICES and the driver)"
        )


def strategy_name(strategy: object) -> str:
    """A strategy given as a name (`ddp`), a `_target_` config or an object, as one lower-case word."""
    if isinstance(strategy, dict):
        strategy = strategy.get("_target_", "")
    elif not isinstance(strategy, str):
        strategy = type(strategy).__name__
    return str(strategy).rsplit(".", 1)[-1].lower()


def check_hardware(accelerator: str, strategy: object = "auto", precision: object = "32-true") -> None:
    """Refuse a profile the machine cannot run (one line naming the fix); warn once about a slow CPU precision."""
    check_accelerator(accelerator)
    name = strategy_name(strategy)
    if any(word in name for word in CUDA_ONLY_STRATEGIES):
        if importlib.util.find_spec("deepspeed") is None:
            raise LmlabError(
                "hardware=deepspeed needs the `deepspeed` package, which is not installed; pip install deepspeed "
                "(on a CUDA machine), or use hardware=fsdp for sharded training"
            )
        if not torch.cuda.is_available():
            raise LmlabError("hardware=deepspeed needs a CUDA GPU and none is visible; use hardware=cpu or ddp_cpu")
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if on_cpu and str(precision) in LOW_PRECISIONS:
        warn_slow_cpu_precision(str(precision))


@functools.cache  # once per process
def warn_slow_cpu_precision(precision: str) -> None:
    """Half precision on a CPU: fp16 autocast becomes bf16, and bf16 without hardware support is very slow."""
    if precision.startswith("16"):
        log.warning("trainer.precision=%s on a CPU runs as bf16 (CPU autocast has no fp16)", precision)
    if not cpu_has_bf16():
        log.warning(
            "trainer.precision=%s on a CPU without bf16 instructions is very slow (~17x slower than fp32 on "
            "AVX2 machines); use trainer.precision=32-true on this machine",
            precision,
        )


def cpu_has_bf16() -> bool:
    """Whether the CPU has bf16 arithmetic (AVX512-BF16 or AMX), read from /proc/cpuinfo (False where unknown)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_device(name: str) -> torch.device:
    """`auto` (CUDA when visible, else CPU), `cpu`, `cuda` or `cuda:N`, checked against the machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise LmlabError(f"device={name!r} is unknown; choose auto, cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LmlabError(f"device={name} needs a CUDA GPU and none is visible; use device=cpu (or device=auto)")
    return torch.device(name)
