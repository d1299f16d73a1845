"""Weights & Biases that never blocks a run: online with credentials and a reachable server, else offline."""

from __future__ import annotations

import logging
import netrc
import os
import socket
import threading
from typing import Any
from urllib.parse import urlparse

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.wandb.ai"


def has_wandb_credentials(base_url: str | None = None) -> bool:
    """True when an API key is in the environment or in ~/.netrc for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(base_url or os.environ.get("WANDB_BASE_URL", DEFAULT_BASE_URL)).hostname
    try:
        return bool(host and netrc.netrc().authenticators(host))
    except (OSError, netrc.NetrcParseError):
        return False


def server_reachable(base_url: str | None = None, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the W&B server opens within `timeout` seconds (DNS included)."""
    url = urlparse(base_url or os.environ.get("WANDB_BASE_URL", DEFAULT_BASE_URL))
    port = url.port or (443 if url.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((url.hostname, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def choose_wandb_mode(mode: str | None = None) -> str:
    """Resolve the W&B mode: explicit argument, then WANDB_MODE, then online only if it can work."""
    mode = mode or os.environ.get("WANDB_MODE")
    if mode:
        return "offline" if mode == "dryrun" else mode
    if not has_wandb_credentials():
        log.warning("W&B: no API key configured, logging offline; upload later with `wandb sync <run>/wandb`")
        return "offline"
    if not server_reachable():
        log.warning("W&B: server unreachable, logging offline; upload later with `wandb sync <run>/wandb`")
        return "offline"
    return "online"


def wandb_logger(
    project: str,
    save_dir: str,
    name: str | None = None,
    mode: str | None = None,
    group: str | None = None,
    tags: list[str] | None = None,
    job_type: str | None = None,
    **kwargs: Any,
) -> Any:
    """A Lightning `WandbLogger` in the mode `choose_wandb_mode` picks."""
    from pytorch_lightning.loggers import WandbLogger

    os.makedirs(save_dir, exist_ok=True)
    return WandbLogger(
        project=project,
        save_dir=save_dir,
        name=name or None,
        mode=choose_wandb_mode(mode),
        group=group or None,
        tags=list(tags or []),
        job_type=job_type,
        **kwargs,
    )


def finish_wandb() -> None:
    """End the current W&B run, so the next job of a sweep starts its own."""
    import sys

    if "wandb" in sys.modules:
        wandb = sys.modules["wandb"]
        if getattr(wandb, "run", None) is not None:
            wandb.finish()
