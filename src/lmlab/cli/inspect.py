"""`lmlab inspect ckpt=RUN text='...' [attention=true] [cache=true]`: one text through a checkpoint, looked at
token by token (loss page), head by head (attention grids) and, when asked, hook point by hook point (safetensors).

The analysis is `lmlab.interp.inspect`; this command reads the text, writes the files and reports where they are.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from lmlab.cli.runner import hydra_entry, log
from lmlab.errors import LmlabError

if TYPE_CHECKING:
    from lmlab.checkpoints.load import LoadedCheckpoint
    from lmlab.interp.inspect import Inspection


def read_text(text: str | None, input_file: str | None) -> str:
    """The text to look at: `text` (escapes read) or the contents of `input`, exactly one of them."""
    from lmlab.cli.generate import unescape

    if (text is None) == (input_file is None):
        raise LmlabError("give the text to look at as text='...' or input=FILE (one of the two)")
    if text is not None:
        return unescape(text)
    path = Path(input_file).expanduser()
    if not path.is_file():
        raise LmlabError(f"input {path} does not exist; give a UTF-8 text file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise LmlabError(f"input {path} is not UTF-8 text (invalid byte at offset {err.start}); convert it") from err


def require_causal(loaded: LoadedCheckpoint, what: str) -> None:
    """Per-token next-token loss needs a causal LM (not a classifier or a masked LM)."""
    from lmlab.inference.evaluate import is_classifier

    if is_classifier(loaded) or not getattr(type(loaded.model_config), "causal", True):
        family = getattr(loaded.model_config, "family", "this")
        raise LmlabError(f"{what} reads next-token predictions, and {loaded.path} is a {family} model that makes "
                         "none (a classifier or masked LM); give a causal LM checkpoint")  # fmt: skip


def inspect(cfg: DictConfig) -> Inspection:
    """Load, look, write the files, log them; return the inspection."""
    from lmlab.checkpoints.load import load_checkpoint
    from lmlab.compute.hardware import pick_device
    from lmlab.interp.inspect import encode_text, inspect_text

    if cfg.top_k < 1:
        raise LmlabError(f"top_k={cfg.top_k} must be a positive integer")
    text = read_text(cfg.text, cfg.input)
    device = pick_device(str(cfg.device))
    loaded = load_checkpoint(cfg.ckpt, device)
    require_causal(loaded, "inspect")
    tokenizer = loaded.tokenizer
    ids = encode_text(text, tokenizer.encode, loaded.model_config.block_size).to(device)
    names = OmegaConf.to_container(cfg.cache_names) if cfg.cache_names is not None else True
    layers = None if cfg.layers is None else [int(layer) for layer in cfg.layers]
    found = inspect_text(loaded.model, ids, tokenizer.decode, int(cfg.top_k), layers, bool(cfg.attention),
                         names if cfg.cache else False)  # fmt: skip
    write_inspection(Path(cfg.output_dir), loaded, found, cfg)
    return found


def write_inspection(run_dir: Path, loaded: LoadedCheckpoint, found: Inspection, cfg: DictConfig) -> None:
    """tokens.html/.csv, attention PNGs, cache.safetensors and summary.json into `run_dir`; then the dashboards."""
    from lmlab.interp.page import render_token_page
    from lmlab.interp.plots import plot_attention
    from lmlab.runs.dashboards import Findings, log_findings

    run_dir.mkdir(parents=True, exist_ok=True)
    summary = {
        "checkpoint": str(loaded.path),
        "tokens": str(len(found.tokens)),
        "mean loss": f"{found.mean_loss:.4f} nats",
    }
    page = render_token_page(found.tokens, f"lmlab inspect: {loaded.path.name}", summary)
    (run_dir / "tokens.html").write_text(page, encoding="utf-8")
    with (run_dir / "tokens.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["position", "token", "loss", "top_predictions"])
        for i, token in enumerate(found.tokens):
            top = " | ".join(f"{t!r}:{p:.3f}" for t, p in token.top)
            writer.writerow([i, token.text, "" if token.loss is None else f"{token.loss:.5f}", top])
    inputs = [t.text for t in found.tokens]
    images = {}
    for layer, pattern in found.patterns.items():
        path = run_dir / "attention" / f"layer{layer}.png"
        title = f"layer {layer} attention (row: query)"
        images[f"inspect/attention_layer{layer}"] = plot_attention(pattern.float().numpy(), inputs, path, title)
    if found.cache is not None:
        found.cache.save(run_dir / "cache.safetensors")
    result = {"checkpoint": str(loaded.path), "tokens": len(found.tokens), "mean_loss": found.mean_loss,
              "attention_layers": sorted(found.patterns), "cached": sorted(found.cache or {})}  # fmt: skip
    (run_dir / "summary.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    losses = [t.loss for t in found.tokens if t.loss is not None]
    rows = [{"position": i, "token": t.text, "loss": t.loss} for i, t in enumerate(found.tokens)]
    findings = Findings(curves={"inspect/token_loss": losses}, images=images, tables={"inspect/tokens": rows},
                        summary={"inspect/mean_loss": found.mean_loss})  # fmt: skip
    where = log_findings(run_dir, "inspect", findings, bool(cfg.tensorboard), bool(cfg.wandb))
    log.info("mean loss %.4f nats over %d predicted tokens", found.mean_loss, len(losses))
    cache = ", cache.safetensors" if found.cache is not None else ""
    print(f"written: {run_dir / 'tokens.html'}, {len(images)} attention grid(s){cache}; "
          f"logged to {', '.join(where) or 'nothing'}")  # fmt: skip


main = hydra_entry("inspect", inspect)
