"""Build time, size and peak memory of the n-gram model's counting, per order.

    python scripts/bench_ngram.py                        # character-level Shakespeare (built into ~/.cache/lmlab)
    python scripts/bench_ngram.py --synthetic 5000000 --vocab 82 --orders 2 3 4 5
    python scripts/bench_ngram.py --ids ~/.cache/lmlab/tokens/<key>/train.bin --vocab 82   # a raw uint16 id file

Each order is fitted in a fresh subprocess so its peak RSS (resource.getrusage, ru_maxrss) is its own; the baseline
line is the RSS of a process that loads the ids and the model code but counts nothing. Also times one warm validation-
sized forward (64 windows of 64 tokens).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch


def load_ids(synthetic: int, vocab: int, ids: str) -> tuple[np.ndarray, int]:
    """The Shakespeare character train split, a raw uint16 id file, or `synthetic` random ids when it is positive."""
    if ids:
        return np.memmap(Path(ids).expanduser(), dtype=np.uint16, mode="r"), vocab
    if synthetic > 0:
        return np.random.default_rng(0).integers(0, vocab, synthetic, dtype=np.uint16), vocab
    from lmlab.data import ShakespeareCorpus, build_token_cache, load_token_cache
    from lmlab.tokenizers import CharTokenizerConfig

    splits = load_token_cache(build_token_cache(ShakespeareCorpus(), CharTokenizerConfig(), 0.1, "~/.cache/lmlab"))
    return splits.train, splits.tokenizer.vocab_size


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure(order: int, synthetic: int, vocab: int, path: str) -> dict:
    """Fit one order (0: load only) and report seconds, distinct n-grams per order and peak RSS."""
    from lmlab.models.ngram import NGram, NGramConfig

    ids, vocab = load_ids(synthetic, vocab, path)
    ids = np.asarray(ids)
    if order == 0:
        return {"order": 0, "tokens": len(ids), "vocab": vocab, "peak_rss_mib": peak_rss_mib()}
    model = NGram(NGramConfig(vocab_size=vocab, block_size=64, order=order))
    start = time.perf_counter()
    model.fit(ids)
    seconds = time.perf_counter() - start
    batch = torch.from_numpy(ids[: 64 * 64].astype(np.int64)).view(64, 64)
    with torch.no_grad():
        model(batch)  # warm-up
        start = time.perf_counter()
        model(batch)
        forward = time.perf_counter() - start
    distinct = [model.get_buffer(f"keys_{n}").numel() for n in range(1, order + 1)]
    return {
        "order": order,
        "seconds": seconds,
        "distinct": distinct,
        "forward_s": forward,
        "peak_rss_mib": peak_rss_mib(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, nargs="+", default=[2, 3, 4, 5])
    parser.add_argument("--synthetic", type=int, default=0, help="random ids instead of Shakespeare (how many)")
    parser.add_argument("--vocab", type=int, default=82, help="vocabulary of the synthetic ids or the --ids file")
    parser.add_argument("--ids", default="", help="a raw uint16 id file (e.g. a token cache's train.bin)")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.child, args.synthetic, args.vocab, args.ids)))
        return
    for order in [0, *args.orders]:
        command = [sys.executable, __file__, "--child", str(order), "--synthetic", str(args.synthetic)]
        command += ["--vocab", str(args.vocab), "--ids", args.ids]
        out = json.loads(subprocess.run(command, capture_output=True, check=True).stdout)
        if order == 0:
            print(f"{out['tokens']:,} train ids, vocab {out['vocab']}; baseline peak RSS {out['peak_rss_mib']:.0f} MiB")
            continue
        print(
            f"order {order}: build {out['seconds']:.2f} s, {out['distinct'][-1]:,} distinct {order}-grams "
            f"({sum(out['distinct']):,} entries over orders 1..{order}), peak RSS {out['peak_rss_mib']:.0f} MiB, "
            f"forward (64 x 64) {out['forward_s'] * 1000:.0f} ms"
        )


if __name__ == "__main__":
    main()
