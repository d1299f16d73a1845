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


def pick_device(name: str) -> torch.device:
    """`auto` (CUDA when visible, else CPU), `cpu`, `cuda` or `cuda:N`, checked against the machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise LmlabError(f"device={name!r} is unknown; choose auto, cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LmlabError(f"device={name} needs a CUDA GPU and none is visible; use device=cpu (or device=auto)")
    return torch.device(name)
