"""`lmlab serve [ckpt=RUN] [port=8000]`: an OpenAI-compatible HTTP server and chat page for a causal model.

The work is `lmlab.serve`; this module checks the settings, loads the model (as `lmlab chat` does: SmolLM2 from its
offline package without `ckpt`) and runs uvicorn until Ctrl+C.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from lmlab.cli.runner import hydra_entry
from lmlab.errors import LmlabError

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger("lmlab")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def check_settings(cfg: DictConfig) -> None:
    """Refuse impossible numbers before the (slow) model load."""
    if not 0 < int(cfg.port) < 65536:
        raise LmlabError(f"port={cfg.port} is not a TCP port; give one in 1..65535, e.g. port=8000")
    for key in ("max_tokens", "max_tokens_limit", "max_batch", "max_queue", "max_body_bytes"):
        if int(cfg[key]) < 1:
            raise LmlabError(f"{key}={cfg[key]} must be at least 1, e.g. {key}={DEFAULTS[key]}")
    if int(cfg.max_tokens) > int(cfg.max_tokens_limit):
        raise LmlabError(f"max_tokens={cfg.max_tokens} is over max_tokens_limit={cfg.max_tokens_limit}; lower it")
    if cfg.context is not None and int(cfg.context) < 2:
        raise LmlabError(f"context={cfg.context} is too small to serve; give a few hundred tokens, or null")
    if str(cfg.log_level) not in LOG_LEVELS:
        raise LmlabError(f"log_level={cfg.log_level} is not one of {', '.join(LOG_LEVELS)}")


DEFAULTS = {"max_tokens": 256, "max_tokens_limit": 4096, "max_batch": 32, "max_queue": 256, "max_body_bytes": 1_000_000}
"""Examples named in the errors (conf/serve.yaml holds the real defaults)."""


def build_app(cfg: DictConfig) -> FastAPI:
    """The model of `ckpt` (else `pretrained`) behind the OpenAI endpoints, with the settings of `cfg`."""
    from lmlab.cli.chat import load_model
    from lmlab.serve import Engine, ServeSettings, create_app

    check_settings(cfg)
    model, tokenizer, block_size = load_model(cfg)
    context = min(int(cfg.context), block_size) if cfg.context is not None else block_size
    if not hasattr(model, "new_cache") and cfg.context is not None:
        context = int(cfg.context)  # windowed and recurrent models take prompts of any length
    source = Path(str(cfg.ckpt if cfg.ckpt is not None else cfg.pretrained))
    name = str(cfg.model_name) if cfg.model_name else source.name.removesuffix(".gguf")
    settings = ServeSettings(
        model_name=name,
        context=context,
        max_tokens=int(cfg.max_tokens),
        max_tokens_limit=int(cfg.max_tokens_limit),
        max_body_bytes=int(cfg.max_body_bytes),
        api_key=cfg.api_key or os.environ.get("LMLAB_API_KEY") or None,
        system=cfg.system,
    )
    engine = Engine(model, tokenizer, block_size, int(cfg.max_batch), int(cfg.max_queue))
    return create_app(engine, settings)


def serve(cfg: DictConfig) -> None:
    """Load the model and answer HTTP requests until interrupted."""
    import uvicorn

    app = build_app(cfg)
    if str(cfg.host) not in ("127.0.0.1", "localhost", "::1") and not (cfg.api_key or os.environ.get("LMLAB_API_KEY")):
        log.warning("serving on %s without an api_key: anyone who can reach this port can use the model", cfg.host)
    print(f"lmlab serve: http://{cfg.host}:{cfg.port}/ (chat page), OpenAI base URL http://{cfg.host}:{cfg.port}/v1")
    uvicorn.run(app, host=str(cfg.host), port=int(cfg.port), log_level=str(cfg.log_level))


main = hydra_entry("serve", serve)
