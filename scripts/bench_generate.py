"""Greedy generation speed: lmlab's GPT with and without its KV cache, and Transformers' `generate` on its export.

    python scripts/bench_generate.py                     # 6/6/384 block 1024 +512 tokens, and 4/4/128 block 64
    python scripts/bench_generate.py --rounds 5 --new 100 --shapes 6/6/384/1024

For each shape (n_layer/n_head/n_embd/block_size, vocabulary 82 as the character tokenizer on Shakespeare, random
weights) it times three paths on the same prompt of `--prompt` random tokens, `--new` new tokens each (fewer where
the block is shorter, so nothing is cropped), greedy, fp32, batch 1:
(a) `lmlab.generation.decode_steps` with the KV cache, (b) the same without it (the model reads the whole sequence
every step), (c) `generate(use_cache=True)` of the same weights exported to Transformers
(`lmlab.hf.gpt_to_transformers`, `GPT2LMHeadModel`). It checks that the three paths produce the same tokens, then
runs interleaved rounds (the order of the paths rotates) and prints tokens/s per round, the medians and their ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from lmlab.generation import SamplingOptions, decode_steps
from lmlab.hf import gpt_to_transformers
from lmlab.models import GPT, GPTConfig

VOCAB = 82
GREEDY = SamplingOptions(temperature=0)
PATHS = ("lmlab cache", "lmlab no cache", "HF generate")


def lmlab_runner(model: GPT, prompt: list[int], new: int, use_cache: bool) -> Callable[[], list[int]]:
    def run() -> list[int]:
        steps = decode_steps(model, [prompt], new, model.config.block_size, GREEDY, use_cache=use_cache)
        return torch.stack(list(steps), dim=1)[0].tolist()

    return run


def hf_runner(model: GPT, prompt: list[int], new: int) -> Callable[[], list[int]]:
    hf_model, _ = gpt_to_transformers(model)  # same weights, GPT2LMHeadModel
    hf_model.generation_config.eos_token_id = None  # never stop early
    hf_model.generation_config.pad_token_id = 0
    idx = torch.tensor([prompt])

    def run() -> list[int]:
        with torch.no_grad():
            out = hf_model.generate(
                idx, attention_mask=torch.ones_like(idx), max_new_tokens=new, do_sample=False, use_cache=True
            )
        assert out.size(1) == len(prompt) + new, "Transformers stopped early"
        return out[0, len(prompt) :].tolist()

    return run


def make_model(shape: str) -> GPT:
    """A GPT of `n_layer/n_head/n_embd/block` with GPT-2 init, then larger random weights so greedy decoding varies."""
    n_layer, n_head, n_embd, block = (int(x) for x in shape.split("/"))
    config = GPTConfig(vocab_size=VOCAB, block_size=block, n_layer=n_layer, n_head=n_head, n_embd=n_embd)
    torch.manual_seed(0)
    model = GPT(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.1)
    return model


def bench_shape(shape: str, prompt_len: int, new: int, rounds: int) -> tuple[str, list[float]]:
    """Median tokens/s of the three paths for one shape; prints every round."""
    model = make_model(shape)
    new = min(new, model.config.block_size - prompt_len)  # fits the block: no path crops
    prompt = torch.randint(0, VOCAB, (prompt_len,), generator=torch.Generator().manual_seed(0)).tolist()
    runners = {
        "lmlab cache": lmlab_runner(model, prompt, new, use_cache=True),
        "lmlab no cache": lmlab_runner(model, prompt, new, use_cache=False),
        "HF generate": hf_runner(model, prompt, new),
    }
    outputs = {name: run() for name, run in runners.items()}  # also warms every path up
    same = outputs["lmlab cache"] == outputs["lmlab no cache"] == outputs["HF generate"]
    print(f"\n{shape}: {model.num_parameters() / 1e6:.2f} M parameters, prompt {prompt_len}, {new} new tokens "
          f"({len(set(outputs['lmlab cache']))} distinct); the three paths give the same tokens: {same}")  # fmt: skip
    speeds: dict[str, list[float]] = {name: [] for name in PATHS}
    for round_ in range(rounds):
        for name in PATHS[round_ % 3 :] + PATHS[: round_ % 3]:
            started = time.perf_counter()
            runners[name]()
            speeds[name].append(new / (time.perf_counter() - started))
        print(f"  round {round_ + 1}: " + "  ".join(f"{n} {speeds[n][-1]:8.1f}" for n in PATHS), flush=True)
    return f"{shape} +{new}", [statistics.median(speeds[n]) for n in PATHS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--shapes", nargs="+", default=["6/6/384/1024", "4/4/128/64"], help="n_layer/n_head/n_embd/block"
    )
    parser.add_argument("--prompt", type=int, default=16, help="prompt tokens")
    parser.add_argument("--new", type=int, default=512, help="new tokens per generation (at most block - prompt)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (the medians are over these)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {args.threads} threads, fp32, greedy")
    rows = [bench_shape(shape, args.prompt, args.new, args.rounds) for shape in args.shapes]
    print("\nmedian tokens/s")
    print(f"{'shape +new':<18} {'cache':>9} {'no cache':>9} {'HF':>9} {'cache/no cache':>15} {'cache/HF':>9}")
    for name, (cached, plain, hf) in rows:
        print(f"{name:<18} {cached:9.1f} {plain:9.1f} {hf:9.1f} {cached / plain:15.2f} {cached / hf:9.2f}")


if __name__ == "__main__":
    main()
