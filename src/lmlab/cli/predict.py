"""`lmlab predict ckpt=RUN input=texts.txt output=predictions.csv`: classify texts with a classifier checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from lmlab.cli.runner import hydra_entry
from lmlab.errors import LmlabError

log = logging.getLogger("lmlab")


def predict(cfg: DictConfig) -> Path:
    """Load the classifier, predict every input in batches, write the predictions; return the output path."""
    from rich.console import Console

    from lmlab.compute.hardware import pick_device
    from lmlab.inference.classifier import check_output, load_classifier, predict_probs, read_texts, write_predictions

    if int(cfg.batch_size) < 1:
        raise LmlabError(f"batch_size={cfg.batch_size} must be a positive integer; e.g. batch_size=64")
    check_output(cfg.output)  # before the work, not after
    texts = read_texts(cfg.input, cfg.text_column)
    classifier = load_classifier(cfg.ckpt, pick_device(str(cfg.device)))
    probs = predict_probs(classifier, texts, int(cfg.batch_size))
    out = write_predictions(cfg.output, texts, probs, classifier.label_names)
    counts = probs.argmax(dim=1).bincount(minlength=len(classifier.label_names)).tolist()
    spread = ", ".join(f"{name} {n}" for name, n in zip(classifier.label_names, counts, strict=True))
    Console().print(f"{len(texts)} predictions ({spread}) written: {out}")
    return out


main = hydra_entry("predict", predict)
