"""`lmlab export ckpt=RUN out=DIR [format=hf] [overwrite=true]`: a checkpoint as a Hugging Face folder."""

from __future__ import annotations

from omegaconf import DictConfig

from lmlab.cli.runner import hydra_entry


def export(cfg: DictConfig) -> None:
    """Hydra task function: convert, check by reloading with Transformers, report where it went."""
    from lmlab.hf import export_checkpoint

    result = export_checkpoint(cfg.ckpt, cfg.out, format=cfg.format, overwrite=cfg.overwrite)
    print(f"exported {result.description} to {result.out}")
    print(f"checked: Transformers loads it with logits within {result.max_logit_diff:.1e} of lmlab's (float32)")


main = hydra_entry("export", export)
