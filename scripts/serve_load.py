"""Load test of `lmlab serve`: concurrent streaming clients on loopback, time to first token and throughput.

    python scripts/serve_load.py [--ckpt RUN] [--clients 32] [--requests 20] [--max-tokens 38]

Starts `lmlab serve` on a free 127.0.0.1 port in a child process (the default Shakespeare model: without --ckpt it
trains `lmlab train experiment=shakespeare_char` into outputs/serve_load/shakespeare_char once, ~2 min), then:
1. one client sends --baseline requests one after another (one-client throughput);
2. --clients clients each send --requests streamed completions (each client waits for its answer before the next).
Prints errors, p50/p99 time to first token, tokens/s, and the speed-up over one client. Bounded: every request has a
timeout, the whole run a deadline, and the server is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_RUN = Path("outputs/serve_load/shakespeare_char")
PROMPTS = ["ROMEO:", "JULIET:\nO ", "First Citizen:\n", "KING RICHARD III:\nNow is ", "HAMLET:\nTo be"]


@dataclass
class Stats:
    """What the clients measured."""

    ttft: list[float] = field(default_factory=list)
    tokens: int = 0
    errors: list[str] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def checkpoint(ckpt: str | None) -> str:
    """The checkpoint to serve: --ckpt, or the Shakespeare run (trained here the first time)."""
    if ckpt is not None:
        return ckpt
    if not (DEFAULT_RUN / "checkpoints").is_dir():
        print(f"training the default Shakespeare model into {DEFAULT_RUN} (once, ~2 min) ...", flush=True)
        command = [
            sys.executable,
            "-m",
            "lmlab",
            "train",
            "experiment=shakespeare_char",
            f"hydra.run.dir={DEFAULT_RUN}",
        ]
        subprocess.run(command, check=True, timeout=1800, env={**os.environ, "WANDB_MODE": "offline"})
    return str(DEFAULT_RUN)


def start_server(ckpt: str, port: int, max_batch: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "lmlab", "serve", f"ckpt={ckpt}", "host=127.0.0.1", f"port={port}",
               f"max_batch={max_batch}", "max_queue=1024", "log_level=warning", "model_name=shakespeare"]  # fmt: skip
    return subprocess.Popen(command, env={k: v for k, v in os.environ.items() if k != "LMLAB_COMMAND"})


async def wait_ready(url: str, server: subprocess.Popen, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise SystemExit(f"lmlab serve exited with status {server.returncode}")
            try:
                if (await client.get(f"{url}/health", timeout=2)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit(f"lmlab serve did not answer within {timeout} s")


async def one_request(client, url: str, prompt: str, max_tokens: int, seed: int, stats: Stats) -> None:
    """One streamed completion: time to its first text, and its token count (from the final usage chunk)."""
    body = {"model": "shakespeare", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.8, "seed": seed,
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    start, first, tokens = time.perf_counter(), None, None
    try:
        async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
            if response.status_code != 200:
                stats.errors.append(f"HTTP {response.status_code}: {(await response.aread())[:200]!r}")
                return
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line.removeprefix("data: "))
                if "error" in chunk:
                    stats.errors.append(chunk["error"]["message"])
                    return
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                elif first is None and chunk["choices"] and chunk["choices"][0]["text"]:
                    first = time.perf_counter() - start
    except Exception as err:  # a timeout or a dropped connection is an error of the run, not of the script
        stats.errors.append(f"{type(err).__name__}: {err}")
        return
    if first is None or tokens is None:
        stats.errors.append("a stream ended without text or usage")
        return
    stats.ttft.append(first)
    stats.tokens += tokens


async def run_clients(url: str, clients: int, requests: int, max_tokens: int, timeout: float) -> tuple[Stats, float]:
    """`clients` concurrent clients, each sending `requests` in turn; returns the stats and the wall time."""
    import httpx

    stats = Stats()
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:

        async def worker(index: int) -> None:
            for r in range(requests):
                prompt = PROMPTS[(index + r) % len(PROMPTS)]
                await one_request(client, url, prompt, max_tokens, seed=index * 1000 + r, stats=stats)

        start = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(clients)))
    return stats, time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


def report(name: str, stats: Stats, wall: float) -> dict:
    row = {"run": name, "requests": len(stats.ttft) + len(stats.errors), "errors": len(stats.errors),
           "ttft_p50_ms": 1000 * percentile(stats.ttft, 50), "ttft_p99_ms": 1000 * percentile(stats.ttft, 99),
           "tokens": stats.tokens, "wall_s": wall, "tokens_per_s": stats.tokens / wall if wall else 0.0}  # fmt: skip
    print(f"{name:>12}: {row['requests']} requests, {row['errors']} errors, TTFT p50 {row['ttft_p50_ms']:.0f} ms "
          f"p99 {row['ttft_p99_ms']:.0f} ms, {row['tokens']} tokens in {wall:.1f} s = {row['tokens_per_s']:.0f} "
          "tokens/s", flush=True)  # fmt: skip
    for error in stats.errors[:5]:
        print(f"    error: {error}")
    return row


async def measure(args: argparse.Namespace, url: str) -> dict:
    single, single_wall = await run_clients(url, 1, args.baseline, args.max_tokens, args.request_timeout)
    one = report("1 client", single, single_wall)
    many, many_wall = await run_clients(url, args.clients, args.requests, args.max_tokens, args.request_timeout)
    loaded = report(f"{args.clients} clients", many, many_wall)
    speedup = loaded["tokens_per_s"] / one["tokens_per_s"] if one["tokens_per_s"] else float("nan")
    print(f"     speed-up: {speedup:.1f}x one client's throughput (target >= 3x), errors: {loaded['errors']}")
    return {"one_client": one, "concurrent": loaded, "speedup": speedup}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", help="checkpoint or run directory (default: the Shakespeare run, trained once)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=20, help="requests per client")
    parser.add_argument("--baseline", type=int, default=10, help="requests of the one-client run")
    parser.add_argument("--max-tokens", type=int, default=38, help="per request (38: the default model's prompts and "
                        "replies fit its 64-token context; past it each step re-reads the window)")  # fmt: skip
    parser.add_argument("--max-batch", type=int, default=32, help="the server's max_batch")
    parser.add_argument("--request-timeout", type=float, default=120.0, help="seconds per request")
    parser.add_argument("--deadline", type=float, default=1800.0, help="seconds for the whole measurement")
    parser.add_argument("--out", type=Path, help="also write the numbers to this JSON file")
    args = parser.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"  # loopback only
    server = start_server(checkpoint(args.ckpt), port, args.max_batch)
    try:
        asyncio.run(wait_ready(url, server, timeout=300))
        result = asyncio.run(asyncio.wait_for(measure(args, url), timeout=args.deadline))
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    sys.exit(1 if result["concurrent"]["errors"] else 0)


if __name__ == "__main__":
    main()
