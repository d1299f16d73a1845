"""Make the IMDB language model write positive reviews, four ways, judged by lmlab's own sentiment classifier.

    python scripts/control_results.py                         # trains what is missing under outputs/control_results/
    python scripts/control_results.py --lm RUN --judge RUN    # reuse an imdb_pretrain run and its classifier
    python scripts/control_results.py --quick                 # tiny budgets: checks the pipeline in a few minutes

Stages (a finished stage is kept in `--out`):
1. the language model: `lmlab train experiment=imdb_pretrain` (a 1.3 M GPT, one pass over the IMDB reviews);
2. the judge: `lmlab train experiment=sentiment_pretrain_finetune` from it (Rotten Tomatoes sentiment, BPE shared);
3. continuations of neutral prompts (`PROMPTS`, `--samples` each, temperature 1, top-k 50, 40 tokens), written by
   - `baseline`: the language model as it is;
   - `sequence_bias`: the `sequence_bias` processor, +/-`BIAS` on positive/negative words (`POSITIVE_WORDS`, ...);
   - `steer_c<coeff>`: a steering vector (`lmlab.interp.steering`: mean residual stream before layer `--layer` of
     positive minus negative IMDB training reviews) added with each coefficient of `--coeffs`;
   - `dpo`: the model after `lmlab train experiment=control_sentiment` (DPO) on preference pairs the script builds
     without human data: for each opening of an IMDB training review it samples 4 continuations from the language
     model, and the judge's most positive one is `chosen`, its least positive `rejected`;
4. each continuation's text (prompt included) is judged: positive when the classifier's P(positive) > 0.5; fluency
   is the continuations' perplexity under the unsteered language model, diversity distinct-2 over all of them.

Prints a markdown table (the README's), writes `results.json`, the samples of every method as JSON Lines, and the
table to TensorBoard (`<out>/tensorboard`) and a W&B run (offline without credentials; WANDB_MODE=disabled skips it).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from finetune_results import run_stage  # scripts/ is the script's own folder, first on sys.path
from lmlab.checkpoints.load import LoadedCheckpoint, load_checkpoint
from lmlab.data.labeled_sources import MovieReviews, space_punctuation
from lmlab.generation import GenerationConfig, SamplingOptions, generate_text
from lmlab.inference.classifier import load_classifier, predict_probs
from lmlab.inference.text_quality import continuation_nll, distinct_n, perplexity
from lmlab.interp.steering import contrast_vector, steering
from lmlab.runs.dashboards import Findings, log_findings, markdown_table

PROMPTS = [
    "this movie", "the film", "i watched this movie", "the story", "the acting", "this is a film about",
    "the director", "i saw this", "the plot of this movie", "the ending", "the characters", "the music",
    "this film was released", "the main character", "i rented this", "the cast", "the script", "the first half",
    "as a movie", "the dialogue", "the camera work", "this sequel", "the special effects", "my wife and i watched",
    "the book",
]  # fmt: skip
"""Neutral openings in the corpus's style (lower case, punctuation set off by spaces)."""
POSITIVE_WORDS = ["great", "excellent", "wonderful", "best", "love", "loved", "beautiful", "amazing", "perfect",
                  "brilliant", "enjoyed", "fun", "favorite", "recommend"]  # fmt: skip
NEGATIVE_WORDS = ["bad", "worst", "boring", "awful", "terrible", "waste", "poor", "stupid", "horrible", "worse",
                  "dull", "nothing", "unfortunately", "mess"]  # fmt: skip
BIAS = 3.0
"""Added to each positive word's logit, subtracted from each negative word's (the word with its leading space)."""
TOKENS = 40
SAMPLING = SamplingOptions(temperature=1.0, top_k=50)

QUICK_LM = ["trainer.max_steps=40", "trainer.val_check_interval=20", "data.max_val_tokens=4096",
            "data.corpus.max_reviews=2000", "sample.max_new_tokens=8"]  # fmt: skip
QUICK_JUDGE = ["trainer.max_steps=20", "trainer.val_check_interval=10"]


@dataclass
class Method:
    """One way of writing: its name, the model that writes, and how."""

    name: str
    loaded: LoadedCheckpoint
    config: GenerationConfig
    vector: object | None = None
    coeff: float = 0.0


def generate(method: Method, prompts: list[str]) -> list[str]:
    """Every continuation of the method, prompt by prompt (samples of a prompt together)."""
    loaded = method.loaded
    if method.vector is None:
        done = generate_text(loaded.model, loaded.tokenizer, prompts, method.config, loaded.model_config.block_size)
    else:
        with steering(loaded.model, method.vector, method.coeff):
            done = generate_text(loaded.model, loaded.tokenizer, prompts, method.config,
                                 loaded.model_config.block_size)  # fmt: skip
    return [c.text for c in done]


def sampling(samples: int, seed: int = 0, processors: list | None = None) -> GenerationConfig:
    return GenerationConfig(max_new_tokens=TOKENS, sampling=SAMPLING, num_samples=samples, seed=seed,
                            processors=processors or [])  # fmt: skip


def review_openings(count: int, seed: int = 0) -> list[str]:
    """Openings (3 to 5 words) of IMDB training reviews, in the corpus's style: the DPO prompts."""
    rng = random.Random(seed)
    texts = MovieReviews("imdb").load().train.texts
    openings = []
    for text in rng.sample(list(texts), min(count * 2, len(texts))):
        words = space_punctuation(text.lower()).split()
        if len(words) >= 8:
            openings.append(" ".join(words[: rng.randint(3, 5)]))
    return [o for o in dict.fromkeys(openings) if o not in PROMPTS][:count]


def contrast_sets(count: int, words: int = 48) -> tuple[list[str], list[str]]:
    """The first `words` words of `count` positive and `count` negative IMDB training reviews, in the corpus's style."""
    train = MovieReviews("imdb").load().train
    sets: tuple[list[str], list[str]] = ([], [])
    for text, label in zip(train.texts, train.labels, strict=True):
        side = sets[0] if label == 1 else sets[1]
        if len(side) < count:
            side.append(" ".join(space_punctuation(text.lower()).split()[:words]))
    return sets


def build_pairs(lm: LoadedCheckpoint, judge, prompts: list[str], path: Path, min_gap: float) -> dict[str, float]:
    """Preference pairs for DPO: 4 samples per prompt, the judge's most and least positive when their P(positive)
    differ by at least `min_gap`; returns statistics."""
    texts = generate(Method("pairs", lm, sampling(4, seed=10_000)), prompts)
    probs = predict_probs(judge, [p + t for p, t in zip((p for p in prompts for _ in range(4)), texts, strict=True)])
    positive = probs[:, 1].view(len(prompts), 4)  # (prompts, 4)
    rows, gaps = [], []
    for i, prompt in enumerate(prompts):
        best, worst = int(positive[i].argmax()), int(positive[i].argmin())
        gap = float(positive[i, best] - positive[i, worst])
        if gap >= min_gap:
            rows.append({"prompt": prompt, "chosen": texts[4 * i + best], "rejected": texts[4 * i + worst]})
            gaps.append(gap)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return {"prompts": len(prompts), "pairs": len(rows), "mean_gap": sum(gaps) / max(len(gaps), 1)}


def score(name: str, texts: list[str], prompts: list[str], judge, lm: LoadedCheckpoint, out: Path) -> dict:
    """Positive rate, mean P(positive), perplexity under the language model, distinct-2; samples to a file."""
    full = [p + t for p, t in zip(prompts, texts, strict=True)]
    probs = predict_probs(judge, full)[:, 1]
    nats, tokens = continuation_nll(lm.model, lm.tokenizer, prompts, texts, lm.model_config.block_size)
    triples = zip(prompts, texts, probs.tolist(), strict=True)
    rows = [{"prompt": p, "text": t, "p_positive": round(q, 4)} for p, t, q in triples]
    (out / "samples").mkdir(exist_ok=True)
    (out / "samples" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return {
        "method": name,
        "samples": len(texts),
        "positive_rate": round(float((probs > 0.5).float().mean()), 4),
        "mean_p_positive": round(float(probs.mean()), 4),
        "perplexity": round(perplexity(nats, tokens), 2),
        "distinct_2": round(distinct_n(texts, 2), 4),
    }


def train_missing(args: argparse.Namespace, out: Path, seconds: dict[str, float]) -> None:
    """Train the language model and the judge unless given or already in `out`."""
    if args.lm is None:
        args.lm = out / "imdb_pretrain"
        if not (args.lm / "checkpoints" / "last.ckpt").is_file():
            quick = QUICK_LM if args.quick else []
            seconds["lm"] = run_stage("imdb_pretrain", ["experiment=imdb_pretrain"], out, quick)
    if args.judge is None:
        args.judge = out / "sentiment"
        if not (args.judge / "checkpoints" / "last.ckpt").is_file():
            judge_args = ["experiment=sentiment_pretrain_finetune", f"task.init_from={args.lm}"]
            seconds["judge"] = run_stage("sentiment", judge_args, out, QUICK_JUDGE if args.quick else [])


def train_dpo(args: argparse.Namespace, lm: LoadedCheckpoint, judge, out: Path, seconds: dict[str, float]) -> Path:
    """Build the preference pairs and run the DPO stage (kept when done); returns its run directory."""
    run_dir, pairs = out / "dpo", out / "pairs.jsonl"
    if (run_dir / "checkpoints" / "last.ckpt").is_file():
        return run_dir
    started = time.perf_counter()
    openings = review_openings(40 if args.quick else args.pair_prompts)
    (out / "pairs.json").write_text(
        json.dumps(build_pairs(lm, judge, openings, pairs, 0.0 if args.quick else args.min_gap))
    )
    seconds["pairs"] = time.perf_counter() - started
    quick = ["trainer.max_steps=6", "trainer.val_check_interval=3"] if args.quick else []
    overrides = ["experiment=control_sentiment", f"task.init_from={args.lm}", f"data.source.train={pairs}", *quick]
    seconds["dpo_train"] = run_stage("dpo", overrides + args.dpo, out, [])
    return run_dir


def report(rows: list[dict], results: dict, out: Path) -> None:
    """Points and perplexity change against the baseline; results.json, the table, TensorBoard and W&B."""
    base = rows[0]
    for row in rows:
        row["vs_baseline_points"] = round(100 * (row["positive_rate"] - base["positive_rate"]), 1)
        row["perplexity_rise"] = f"{100 * (row['perplexity'] / base['perplexity'] - 1):+.1f} %"
    (out / "results.json").write_text(json.dumps(results | {"rows": rows}, indent=2))
    print(markdown_table(rows))
    summary = {f"control/{r['method']}/positive_rate": r["positive_rate"] for r in rows}
    for where in log_findings(out, "control", Findings(tables={"control/results": rows}, summary=summary),
                              tensorboard=True, wandb=True):  # fmt: skip
        print(f"table: {where}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/control_results"))
    parser.add_argument("--lm", type=Path, help="an experiment=imdb_pretrain run (else trained into --out)")
    parser.add_argument("--judge", type=Path, help="a sentiment classifier run of that model (else trained)")
    parser.add_argument("--samples", type=int, default=10, help="continuations per prompt (25 prompts)")
    parser.add_argument("--layer", type=int, default=2, help="steering: the vector is added before this block")
    parser.add_argument("--coeffs", type=float, nargs="+", default=[2.0, 4.0, 8.0])
    parser.add_argument("--pair-prompts", type=int, default=1500, help="DPO: review openings to build pairs from")
    parser.add_argument("--min-gap", type=float, default=0.2, help="DPO: least P(positive) gap of a pair")
    parser.add_argument("--dpo", nargs="*", default=[], help="extra overrides of the DPO training run")
    parser.add_argument("--quick", action="store_true", help="tiny budgets, to check the pipeline")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    train_missing(args, out, seconds)
    torch.manual_seed(0)
    lm, judge = load_checkpoint(args.lm), load_classifier(args.judge)
    dpo_run = train_dpo(args, lm, judge, out, seconds)
    prompts, samples = (PROMPTS[:4], 3) if args.quick else (PROMPTS, args.samples)
    started = time.perf_counter()
    vector = contrast_vector(lm.model, lm.tokenizer, *contrast_sets(24 if args.quick else 500), layer=args.layer)
    seconds["steering_vector"] = time.perf_counter() - started
    vector.save(out / "steering_vector.safetensors")
    bias = {f" {w}": BIAS for w in POSITIVE_WORDS} | {f" {w}": -BIAS for w in NEGATIVE_WORDS}
    methods = [
        Method("baseline", lm, sampling(samples)),
        Method("sequence_bias", lm, sampling(samples, processors=[{"name": "sequence_bias", "bias": bias}])),
        *(Method(f"steer_c{c:g}", lm, sampling(samples), vector, c) for c in args.coeffs),
        Method("dpo", load_checkpoint(dpo_run), sampling(samples)),
    ]
    rows = []
    for method in methods:
        started = time.perf_counter()
        texts = generate(method, prompts)
        row = score(method.name, texts, [p for p in prompts for _ in range(samples)], judge, lm, out)
        rows.append(row | {"seconds": round(time.perf_counter() - started, 1)})
        print(json.dumps(rows[-1]), flush=True)
    pairs = json.loads((out / "pairs.json").read_text()) if (out / "pairs.json").is_file() else None
    report(rows, {"seconds": seconds, "layer": args.layer, "bias": BIAS, "pairs": pairs}, out)


if __name__ == "__main__":
    main()
