"""Checks that a hardware profile fits the machine, before any compute is spent."""

from __future__ import annotations

import torch

from lmlab.errors import LmlabError


def check_accelerator(accelerator: str) -> None:
    """Refuse a CUDA profile on a machine without a visible CUDA device."""
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise LmlabError(
            f"trainer.accelerator={accelerator} needs a CUDA GPU and none is visible; use hardware=cpu "
            "(or check CUDA_VISIBLE_DEVICES and the driver)"
        )
