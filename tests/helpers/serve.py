"""Tiny servers for the `lmlab serve` tests: a word-level chat GPT and a char GPT, and a real uvicorn on a free
loopback port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from lmlab.models import GPT, GPTConfig
from lmlab.serve import Engine, ServeSettings, create_app
from lmlab.tokenizers import CharTokenizerConfig
from tests.helpers.chat import SYSTEM_TEMPLATE, chat_tokenizer, tiny_chat_gpt
from tests.helpers.compose import TINY_TEXT

CHAT_MODEL = "tiny-chat"
TEXT_MODEL = "tiny-text"


def chat_app(context: int = 32, **settings):
    """A random one-layer GPT with a word-level tokenizer and a chat template that takes system turns."""
    tokenizer = chat_tokenizer(SYSTEM_TEMPLATE)
    model, config = tiny_chat_gpt(tokenizer, block_size=32, ends_turn=False)
    engine = Engine(model.eval(), tokenizer, config.block_size, **_engine_args(settings))
    return create_app(engine, ServeSettings(CHAT_MODEL, context, **settings))


def text_app(block_size: int = 64, **settings):
    """A random char-level GPT without a chat template (the Shakespeare model's shape, tiny)."""
    tokenizer = CharTokenizerConfig().train([TINY_TEXT])
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=block_size, n_layer=1, n_head=2, n_embd=16)
    engine = Engine(GPT(config).eval(), tokenizer, block_size, **_engine_args(settings))
    return create_app(engine, ServeSettings(TEXT_MODEL, block_size, **settings))


def _engine_args(settings: dict) -> dict:
    return {k: settings.pop(k) for k in ("max_batch", "max_queue") if k in settings}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(app, timeout: float = 30.0) -> Iterator[str]:
    """Serve `app` with uvicorn on a free loopback port in a thread; yield its base URL."""
    import httpx
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the server on {url} did not start in {timeout} s")
        time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=timeout)
