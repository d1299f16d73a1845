"""Using trained checkpoints as a library: evaluate language models and classifiers, score generated replies
(BLEU, chrF), predict classes."""

from __future__ import annotations

from lmlab.inference.classifier import Classifier, evaluate_texts, load_classifier, predict_probs
from lmlab.inference.generation_metrics import GenerationScores, corpus_scores, evaluate_generation

__all__ = [
    "Classifier",
    "GenerationScores",
    "corpus_scores",
    "evaluate_generation",
    "evaluate_texts",
    "load_classifier",
    "predict_probs",
]
