"""Peak memory and time of building the token cache for a large text file (the cache streams its corpus).

    python scripts/bench_cache.py --mb 200 [--tokenizer char|bpe]

Writes a file of Shakespeare's plays repeated to the requested size into a temporary folder, builds the token cache
for it in a fresh process, and prints the file size, the wall time and the child's peak RSS against the 1 GB target.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUILD = """
import resource, sys
from lmlab.data import TextFilesCorpus, build_token_cache
from lmlab.tokenizers import BPETokenizerConfig, CharTokenizerConfig
tokenizer = CharTokenizerConfig() if sys.argv[3] == "char" else BPETokenizerConfig(vocab_size=4096)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB after imports (torch comes with lmlab.data)
build_token_cache(TextFilesCorpus([sys.argv[1]]), tokenizer, 0.1, sys.argv[2])
"""


def write_corpus(path: Path, megabytes: int) -> int:
    """Shakespeare's plays, repeated until the file holds `megabytes` MiB; returns its size in bytes."""
    from lmlab.data import ShakespeareCorpus

    plays = "".join(ShakespeareCorpus().documents()).encode("utf-8")
    with path.open("wb") as file:
        while file.tell() < megabytes * 2**20:
            file.write(plays)
    return path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200, help="size of the text file in MiB")
    parser.add_argument("--tokenizer", choices=["char", "bpe"], default="char")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        size = write_corpus(corpus, args.mb)
        started = time.perf_counter()
        command = [sys.executable, "-c", BUILD, str(corpus), str(Path(tmp) / "cache"), args.tokenizer]
        imports_mb = int(subprocess.run(command, check=True, capture_output=True, text=True).stdout) / 1024
        seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    verdict = "OK" if peak_mb < 1024 else "OVER"
    print(f"text file {size / 2**20:.0f} MiB, tokenizer {args.tokenizer}: built in {seconds:.1f} s")
    print(f"peak RSS of the build {peak_mb:.0f} MiB (target < 1024 MiB: {verdict}); {imports_mb:.0f} MiB of it imports")


if __name__ == "__main__":
    main()
