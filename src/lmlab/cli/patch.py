"""`lmlab patch ckpt=RUN clean=TEXT corrupted=TEXT answers=[a,b] [metric=logit_diff]`: activation patching over
layer × position (residual stream) and layer × head, as heat maps, CSV and JSON in the run folder.

The patching is `lmlab.interp.patching`; this command turns the prompts and answers into ids and indices (next
tokens of a language model, classes of a classifier) and writes the grids.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from lmlab.cli.runner import hydra_entry
from lmlab.errors import LmlabError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from lmlab.checkpoints.load import LoadedCheckpoint
    from lmlab.interp.patching import PatchResult, Scores

log = logging.getLogger("lmlab")


def prompt_ids(loaded: LoadedCheckpoint, clean: str, corrupted: str, classifier: bool) -> tuple[Any, Any]:
    """The two prompts as ids (1, T) each; an error unless both are non-empty, equally long and fit the context."""
    import torch

    from lmlab.data.classification import encode_text

    block_size = loaded.model_config.block_size
    # A classifier reads its texts as it was trained on them ([CLS] ... [SEP] where it has them); cut one token past
    # the context, so a text too long shows as too long instead of being truncated silently.
    encode = (lambda t: encode_text(loaded.tokenizer, t, block_size + 1)) if classifier else loaded.tokenizer.encode
    ids = {name: encode(text) for name, text in (("clean", clean), ("corrupted", corrupted))}
    for name, row in ids.items():
        if not row:
            raise LmlabError(f"{name} is empty; give a prompt of at least one token")
        if len(row) > block_size:
            raise LmlabError(f"{name} is {len(row)} tokens, longer than the model's context of {block_size}; "
                             "shorten it")  # fmt: skip
    if len(ids["clean"]) != len(ids["corrupted"]):
        raise LmlabError(
            f"clean is {len(ids['clean'])} tokens and corrupted {len(ids['corrupted'])}; patching pairs positions, so "
            "give prompts of the same length in tokens (swap a word for one of the same token count)"
        )
    return torch.tensor([ids["clean"]]), torch.tensor([ids["corrupted"]])


def answer_indices(loaded: LoadedCheckpoint, answers: list[str], labels: list[str] | None) -> list[int]:
    """Column of each answer in the scores: its class (classifier) or its single token (language model)."""
    if not answers:
        raise LmlabError("answers is empty; give answers=[a,b] (logit_diff) or answers=[a] (logprob)")
    if labels is not None:
        missing = [a for a in answers if a not in labels]
        if missing:
            raise LmlabError(f"answer {missing[0]!r} is not a class of this classifier; choose from {labels}")
        return [labels.index(a) for a in answers]
    indices = []
    for answer in answers:
        ids = loaded.tokenizer.encode(answer)
        if len(ids) != 1:
            raise LmlabError(
                f"answer {answer!r} is {len(ids)} tokens under this checkpoint's tokenizer, not one; the metric reads "
                "one next-token logit per answer: give single-token answers (mind a leading space, e.g. ' good')"
            )
        indices.append(ids[0])
    return indices


def scorer(loaded: LoadedCheckpoint) -> tuple[nn.Module, Scores, list[str] | None]:
    """(hooked model, ids -> scores (B, N) at the last position, class names or None): a classifier's class logits,
    else the model's next-token logits."""
    from lmlab.inference.evaluate import is_classifier

    if is_classifier(loaded):
        from lmlab.inference.classifier import classifier_from_checkpoint

        task = classifier_from_checkpoint(loaded).task
        return task.model, lambda ids: task(ids), list(task.label_names)
    model = loaded.model
    return model, lambda ids: model(ids)[:, -1], None


def token_names(loaded: LoadedCheckpoint, ids: torch.Tensor) -> list[str]:
    """`position:token` labels of the prompt's tokens (repr, so newlines and spaces show)."""
    return [f"{t}:{loaded.tokenizer.decode([int(i)])!r}"[:16] for t, i in enumerate(ids[0])]


def write_grid(path: Path, values: Any, rows: list[str], columns: list[str]) -> Path:
    """A CSV with one row per layer and one column per position (or head)."""
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["layer", *columns])
        for name, row in zip(rows, values.tolist(), strict=True):
            writer.writerow([name, *(f"{v:.4f}" for v in row)])
    return path


def write_results(run_dir: Path, result: PatchResult, tokens: list[str], meta: dict[str, Any]) -> list[Path]:
    """patch_resid.csv/.png, patch_heads.csv/.png (with per-head hooks) and patch.json, as normalised recovery."""
    from lmlab.interp.plots import plot_patch_heatmap
    from lmlab.io import atomic_write_text

    run_dir.mkdir(parents=True, exist_ok=True)
    resid = result.recovered(result.resid)
    layers = [str(i) for i in range(resid.size(0))]
    title = f"recovery of {meta['metric']}: {meta['clean']!r} into {meta['corrupted']!r}"[:90]
    written = [write_grid(run_dir / "patch_resid.csv", resid, layers, tokens)]
    written.append(plot_patch_heatmap(resid.numpy(), layers, tokens, run_dir / "patch_resid.png", "position", title))
    summary = {**meta, "clean_metric": result.clean, "corrupted_metric": result.corrupted, "tokens": tokens,
               "resid_pre": resid.tolist(), "resid_pre_raw": result.resid.tolist()}  # fmt: skip
    if result.heads is not None:
        heads = result.recovered(result.heads)
        names = [f"head {h}" for h in range(heads.size(1))]
        written.append(write_grid(run_dir / "patch_heads.csv", heads, layers, names))
        written.append(plot_patch_heatmap(heads.numpy(), layers, names, run_dir / "patch_heads.png", "head", title))
        summary |= {"heads": heads.tolist(), "heads_raw": result.heads.tolist()}
    atomic_write_text(run_dir / "patch.json", json.dumps(summary, indent=2) + "\n")
    return [*written, run_dir / "patch.json"]


def print_result(result: PatchResult, tokens: list[str], written: list[Path]) -> None:
    """The two metrics, the positions that recover most per layer, and where the files went."""
    resid = result.recovered(result.resid)
    print(f"clean metric {result.clean:.4f}, corrupted {result.corrupted:.4f}")
    for layer, row in enumerate(resid):
        best = int(row.abs().argmax())
        print(f"layer {layer}: most recovery at {tokens[best]} ({float(row[best]):+.2f})")
    if result.heads is not None:
        heads = result.recovered(result.heads)
        layer, head = divmod(int(heads.abs().argmax()), heads.size(1))
        print(f"head with most recovery: layer {layer} head {head} ({float(heads[layer, head]):+.2f})")
    print(f"written: {', '.join(map(str, written))}")


def patch(cfg: DictConfig) -> PatchResult:
    """Load the checkpoint, encode prompts and answers, patch every layer × position (and head), write."""
    from lmlab.checkpoints.load import load_checkpoint
    from lmlab.compute.hardware import pick_device
    from lmlab.interp.patching import METRICS, patch_grid

    if cfg.metric not in METRICS:
        raise LmlabError(f"metric={cfg.metric!r} is unknown; choose one of: {', '.join(METRICS)}")
    device = pick_device(str(cfg.device))
    loaded = load_checkpoint(cfg.ckpt, device)
    model, scores, labels = scorer(loaded)
    answers = [str(a) for a in OmegaConf.to_container(cfg.answers)]
    if len(answers) != (2 if cfg.metric == "logit_diff" else 1):
        raise LmlabError(f"metric={cfg.metric} needs {2 if cfg.metric == 'logit_diff' else 1} answers, got "
                         f"{len(answers)}; e.g. answers='[\" good\",\" bad\"]'")  # fmt: skip
    indices = answer_indices(loaded, answers, labels)
    from lmlab.cli.generate import unescape

    clean, corrupted = prompt_ids(loaded, unescape(cfg.clean), unescape(cfg.corrupted), labels is not None)
    result = patch_grid(model, scores, clean.to(device), corrupted.to(device), indices, cfg.metric, cfg.heads)
    tokens = token_names(loaded, clean)
    meta = {"ckpt": str(loaded.path), "clean": cfg.clean, "corrupted": cfg.corrupted, "answers": answers,
            "metric": cfg.metric, "recovery": "(patched - corrupted) / (clean - corrupted)"}  # fmt: skip
    print_result(result, tokens, write_results(Path(cfg.paths.output_dir), result, tokens, meta))
    return result


main = hydra_entry("patch", patch)
