"""`lmlab lens ckpt=RUN [input=FILE] [tuned=true]`: what every layer of a checkpoint predicts, read through the logit
lens (and a tuned lens), over its validation text or a file.

The lens is `lmlab.interp.lens`; this command rebuilds the text as `lmlab eval` does, writes the table and pictures
and reports where they are.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from lmlab.cli.runner import hydra_entry, log
from lmlab.errors import LmlabError

if TYPE_CHECKING:
    import torch
    from torch.utils.data import DataLoader

    from lmlab.checkpoints.load import LoadedCheckpoint
    from lmlab.interp.lens import LensStats


def windows(cfg: DictConfig, loaded: LoadedCheckpoint, split: str) -> DataLoader:
    """The (x, y) windows to read: `input` (a file), else `split` of the checkpoint's data (as `lmlab eval`)."""
    from hydra.utils import instantiate

    from lmlab.cli.eval import data_config
    from lmlab.inference.evaluate import split_loader, text_file_windows
    from lmlab.tokenizers import FixedTokenizerConfig

    if cfg.input is not None and split == "val":
        return text_file_windows(cfg.input, loaded, cfg.batch_size or 32, cfg.max_tokens)
    node = data_config(cfg, loaded)
    datamodule = instantiate(node, _partial_=True)(tokenizer=FixedTokenizerConfig(loaded.tokenizer))
    datamodule.setup()
    if not hasattr(datamodule, "train_ids"):
        raise LmlabError("the lens reads plain text windows; give input=FILE for a checkpoint trained on other data")
    if split == "train":
        return datamodule.train_dataloader()
    return split_loader(datamodule, split)


def lens(cfg: DictConfig) -> dict[str, LensStats]:
    """Load, read every layer (logit lens, and tuned lens when asked), write, log; return the statistics by lens."""
    from lmlab.checkpoints.load import load_checkpoint
    from lmlab.cli.inspect import require_causal
    from lmlab.compute.hardware import pick_device
    from lmlab.interp.lens import lens_stats, readout

    for key in ("max_tokens", "batch_size"):
        if cfg[key] is not None and int(cfg[key]) < 1:
            raise LmlabError(f"{key}={cfg[key]} must be a positive integer (or null)")
    if cfg.positions < 2 or cfg.tuned_steps < 1:
        raise LmlabError("positions must be at least 2 and tuned_steps at least 1")
    device = pick_device(str(cfg.device))
    loaded = load_checkpoint(cfg.ckpt, device)
    require_causal(loaded, "the lens")
    readout(loaded.model)  # a model without a next-token head fails here, before any data is built
    loader = windows(cfg, loaded, "val")
    stats = {"logit lens": lens_stats(loaded.model, loader, device)}
    translators = None
    if cfg.tuned:
        from lmlab.interp.tuned_lens import fit_tuned_lens

        train = windows(cfg, loaded, "train") if cfg.input is None else loader
        translators = fit_tuned_lens(loaded.model, train, int(cfg.tuned_steps), float(cfg.tuned_lr), device.type)
        stats["tuned lens"] = lens_stats(loaded.model.to(device), loader, device, translators.to(device))
    write_lens(Path(cfg.output_dir), loaded, stats, first_text(cfg, loaded, loader, device), translators, cfg)
    return stats


def first_text(cfg: DictConfig, loaded: LoadedCheckpoint, loader: DataLoader, device: torch.device) -> torch.Tensor:
    """Ids (1, positions) of the picture's text: `text`, else the start of the first window read."""
    import torch

    from lmlab.cli.generate import unescape

    if cfg.text is not None:
        from lmlab.interp.inspect import encode_text

        ids = encode_text(unescape(cfg.text), loaded.tokenizer.encode, loaded.model_config.block_size)
        return ids[:, : cfg.positions].to(device)
    x, _ = next(iter(loader))
    return torch.as_tensor(x[:1, : cfg.positions]).to(device)


def write_lens(run_dir: Path, loaded: LoadedCheckpoint, stats: dict[str, LensStats], ids: Any, translators: Any,
               cfg: DictConfig) -> None:  # fmt: skip
    """lens.csv, lens.json, lens_loss.png, lens_tokens.png/.csv (per lens), then the dashboards."""
    from lmlab.interp.lens import top_tokens
    from lmlab.interp.plots import plot_lens_curves, plot_lens_tokens
    from lmlab.runs.dashboards import Findings, log_findings

    run_dir.mkdir(parents=True, exist_ok=True)
    labels = next(iter(stats.values())).labels
    rows = [{"lens": name, **row} for name, s in stats.items() for row in s.rows()]
    with (run_dir / "lens.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    tokens = {name: s.tokens for name, s in stats.items()}
    (run_dir / "lens.json").write_text(json.dumps({"checkpoint": str(loaded.path), "tokens": tokens, "rows": rows},
                                                  indent=2) + "\n", encoding="utf-8")  # fmt: skip
    images = {"lens/loss": plot_lens_curves({n: s.loss for n, s in stats.items()}, labels, run_dir / "lens_loss.png",
                                            "next-token loss (nats)", f"lens: {loaded.path.name}")}  # fmt: skip
    decode = loaded.tokenizer.decode
    for name in stats:
        suffix = "" if name == "logit lens" else "_tuned"
        top = top_tokens(loaded.model, ids, decode, translators if suffix else None)
        path = plot_lens_tokens(top.inputs, top.labels, top.tokens, top.probs, run_dir / f"lens_tokens{suffix}.png",
                                f"{name}: top next-token prediction per layer")  # fmt: skip
        images[f"lens/tokens{suffix}"] = path
        with (run_dir / f"lens_tokens{suffix}.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["layer", *top.inputs])
            writer.writerows([label, *row] for label, row in zip(top.labels, top.tokens, strict=True))
    curves = {f"lens/{name.split()[0]}_{key}": getattr(s, key) for name, s in stats.items()
              for key in ("loss", "kl_to_final", "agreement")}  # fmt: skip
    findings = Findings(curves=curves, images=images, tables={"lens/layers": rows})
    where = log_findings(run_dir, "lens", findings, bool(cfg.tensorboard), bool(cfg.wandb))
    for name, s in stats.items():
        losses = ", ".join(f"{label} {loss:.3f}" for label, loss in zip(s.labels, s.loss, strict=True))
        log.info("%s loss per layer over %d tokens: %s", name, s.tokens, losses)
    print(f"written: {run_dir / 'lens.csv'}, {len(images)} picture(s); logged to {', '.join(where) or 'nothing'}")


main = hydra_entry("lens", lens)
