"""`lmlab export ckpt=RUN out=DIR [format=hf] [overwrite=true]`: a checkpoint as a Hugging Face folder."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from lmlab.cli.runner import reports_errors
from lmlab.config.groups import config_dir


@reports_errors
def run(cfg: DictConfig) -> None:
    """Hydra task function: convert, check by reloading with Transformers, report where it went."""
    from lmlab.hf import export_checkpoint

    result = export_checkpoint(cfg.ckpt, cfg.out, format=cfg.format, overwrite=cfg.overwrite)
    print(f"exported {result.description} to {result.out}")
    print(f"checked: Transformers loads it with logits within {result.max_logit_diff:.1e} of lmlab's (float32)")


def main() -> None:
    hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="export")(run)()
