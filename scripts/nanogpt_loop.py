"""A minimal training loop of nanoGPT's shape (its `train.py`, CPU, no DDP), the baseline of `nanogpt_compare.py`.

    python scripts/nanogpt_loop.py --data DIR --out DIR

`--data` holds what `nanogpt_compare.py` exports from lmlab's data pipeline: `train.bin` and `val.bin` (uint16 token
ids of lmlab's own train/validation split) and `recipe.json` (lmlab's model config and training numbers). The loop
then does what nanoGPT's train.py does with them: random-offset batches from the memmapped ids (`get_batch`), lmlab's
`GPT` module (the same model), fused AdamW on decay groups, linear warmup + cosine LR (`get_lr`), gradient clipping,
`estimate_loss` over `eval_iters` random batches of each split every `eval_interval` steps (at step 0 too) with a
checkpoint whenever the validation loss improves, and a loss print every 10 steps. It trains `max_steps` steps (nanoGPT
trains one more after its last evaluation; here both train the same number).

After the loop, what nanoGPT does not do: the final weights scored on the whole validation split with the windows
lmlab's final validation uses (consecutive, non-overlapping `block_size` windows, the first `max_val_tokens`), so the
two final losses are comparable. Its time is reported apart (`final_score_s`).

Prints one JSON line last: the final whole-split loss and the seconds of each part (start-up: process start to the
loop; training: the steps; eval: `estimate_loss` and checkpoints; final_score; total).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lmlab.models import build_model, model_config_from_dict
from lmlab.runs.timing import process_start_time

LOG_INTERVAL = 10


def get_batch(folder: Path, split: str, batch_size: int, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """nanoGPT's `get_batch`: `batch_size` windows at random offsets (the memmap re-opened each time, as there)."""
    data = np.memmap(folder / f"{split}.bin", dtype=np.uint16, mode="r")
    ix = torch.randint(len(data) - block_size, (batch_size,))
    x = torch.stack([torch.from_numpy(data[i : i + block_size].astype(np.int64)) for i in ix])  # (B, T)
    y = torch.stack([torch.from_numpy(data[i + 1 : i + 1 + block_size].astype(np.int64)) for i in ix])  # (B, T)
    return x, y


def get_lr(it: int, recipe: dict) -> float:
    """nanoGPT's `get_lr`: linear warmup, cosine decay to `min_lr` at the last step."""
    lr, min_lr, warmup, decay_iters = recipe["lr"], recipe["min_lr"], recipe["warmup_steps"], recipe["max_steps"]
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it > decay_iters:
        return min_lr
    ratio = (it - warmup) / max(1, decay_iters - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


@torch.no_grad()
def estimate_loss(model: torch.nn.Module, folder: Path, recipe: dict) -> dict[str, float]:
    """nanoGPT's `estimate_loss`: the mean loss of `eval_iters` random batches of each split."""
    model.eval()
    out = {}
    for split in ("train", "val"):
        losses = torch.zeros(recipe["eval_iters"])
        for k in range(recipe["eval_iters"]):
            x, y = get_batch(folder, split, recipe["batch_size"], recipe["block_size"])
            logits = model(x)  # (B, T, V)
            losses[k] = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1)).item()
        out[split] = losses.mean().item()
    model.train()
    return out


@torch.no_grad()
def whole_split_loss(model: torch.nn.Module, folder: Path, recipe: dict) -> float:
    """Mean loss per target over lmlab's validation windows: window i is ids[i*T : i*T + T + 1]."""
    model.eval()
    ids = np.memmap(folder / "val.bin", dtype=np.uint16, mode="r")
    block = recipe["block_size"]
    count = (len(ids) - 1 - block) // block + 1
    if recipe.get("max_val_tokens"):
        count = min(count, max(1, recipe["max_val_tokens"] // block))
    nats, tokens = 0.0, 0
    for first in range(0, count, recipe["eval_batch_size"]):
        starts = range(first * block, min(count, first + recipe["eval_batch_size"]) * block, block)
        chunk = torch.stack([torch.from_numpy(ids[s : s + block + 1].astype(np.int64)) for s in starts])  # (B, T+1)
        logits = model(chunk[:, :-1])  # (B, T, V)
        nats += F.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten(), reduction="sum").item()
        tokens += chunk[:, 1:].numel()
    return nats / tokens


def configure_optimizer(model: torch.nn.Module, recipe: dict) -> torch.optim.AdamW:
    """nanoGPT's `configure_optimizers`: decay on >=2-D weights, none on biases and norms; fused AdamW."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": recipe["weight_decay"]},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=recipe["lr"], betas=tuple(recipe["betas"]), fused=True)


def train(folder: Path, out: Path, recipe: dict) -> dict:
    """The loop; returns the final whole-split loss, the estimates and the seconds of each part."""
    torch.manual_seed(recipe["seed"])
    model = build_model(model_config_from_dict(recipe["model"]))
    optimizer = configure_optimizer(model, recipe)
    out.mkdir(parents=True, exist_ok=True)
    estimates, best_val, eval_s = [], 1e9, 0.0
    it, loop_start = 0, time.time()
    while True:
        for group in optimizer.param_groups:
            group["lr"] = get_lr(it, recipe)
        if it % recipe["eval_interval"] == 0:
            started = time.time()
            losses = estimate_loss(model, folder, recipe)
            estimates.append({"step": it, **losses})
            print(f"step {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}", flush=True)
            if losses["val"] < best_val:
                best_val = losses["val"]
                if it > 0:
                    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "iter_num": it,
                             "best_val_loss": best_val, "recipe": recipe}  # fmt: skip
                    torch.save(state, out / "ckpt.pt")
            eval_s += time.time() - started
        if it == recipe["max_steps"]:
            break
        x, y = get_batch(folder, "train", recipe["batch_size"], recipe["block_size"])
        logits = model(x)  # (B, T, V)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe["grad_clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if it % LOG_INTERVAL == 0:
            print(f"iter {it}: loss {loss.item():.4f}", flush=True)
        it += 1
    loop_end = time.time()
    final = whole_split_loss(model, folder, recipe)
    return {"final_val_loss": final, "estimates": estimates, "loop_start": loop_start, "training_s":
            loop_end - loop_start - eval_s, "eval_s": eval_s, "final_score_s": time.time() - loop_end}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="train.bin, val.bin and recipe.json")
    parser.add_argument("--out", type=Path, required=True, help="where the checkpoint goes")
    args = parser.parse_args()
    start = process_start_time()
    recipe = json.loads((args.data / "recipe.json").read_text())
    result = train(args.data, args.out, recipe)
    result |= {"startup_s": result.pop("loop_start") - start, "total_s": time.time() - start}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
