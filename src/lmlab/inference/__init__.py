"""Using trained checkpoints as a library: evaluate language models and classifiers, predict classes."""

from __future__ import annotations

from lmlab.inference.classifier import Classifier, evaluate_texts, load_classifier, predict_probs

__all__ = ["Classifier", "evaluate_texts", "load_classifier", "predict_probs"]
