"""Using a trained classifier: load it from a checkpoint, predict class probabilities, score labeled text."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from lmlab.checkpoints.load import LoadedCheckpoint, load_checkpoint, read_checkpoint
from lmlab.data.classification import encode_text, pad_batch, pad_id_of
from lmlab.data.labeled import column, label_order, read_records, read_text_file
from lmlab.errors import LmlabError
from lmlab.tasks.classification import ClassificationTask
from lmlab.tokenizers import Tokenizer


@dataclass
class Classifier:
    """A classifier ready for inference: the task (eval mode, adapters merged) and the checkpoint's tokenizer."""

    task: ClassificationTask
    tokenizer: Tokenizer
    path: Path

    @property
    def label_names(self) -> list[str]:
        return list(self.task.label_names)

    @property
    def block_size(self) -> int:
        return self.task.model_config.block_size


def classifier_from_checkpoint(loaded: LoadedCheckpoint) -> Classifier:
    """The classifier of a loaded checkpoint: its backbone (LoRA merged by `load_checkpoint`) plus the saved head."""
    hp = loaded.hyper_parameters
    if "label_names" not in hp:
        raise LmlabError(
            f"{loaded.path} is not a classifier (task {loaded.task_target or '?'}); train one with task=classification"
        )
    task = ClassificationTask(
        model=loaded.model_config,
        num_classes=hp["num_classes"],
        label_names=hp["label_names"],
        pooling=hp["pooling"],
        head_dropout=hp.get("head_dropout", 0.0),
        class_weights=hp.get("class_weights"),
    )
    task.model = loaded.model
    state = read_checkpoint(loaded.path)["state_dict"]
    task.head.load_state_dict({k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")})
    device = next(loaded.model.parameters()).device
    return Classifier(task.to(device).eval(), loaded.tokenizer, loaded.path)


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> Classifier:
    """Load a checkpoint written by `lmlab train task=classification` (a .ckpt file or a run directory)."""
    return classifier_from_checkpoint(load_checkpoint(path, device))


def encode_texts(classifier: Classifier, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text as the classifier was trained on them (truncated, [CLS]/[SEP] where the tokenizer has
    them; an empty text becomes one pad token)."""
    pad_id = pad_id_of(classifier.tokenizer)
    return [encode_text(classifier.tokenizer, text, classifier.block_size) or [pad_id] for text in texts]


@torch.no_grad()
def predict_ids(classifier: Classifier, ids: Sequence[list[int]], batch_size: int = 64) -> torch.Tensor:
    """Class probabilities (N, num_classes) of encoded texts, in input order; batches group similar lengths."""
    pad_id = pad_id_of(classifier.tokenizer)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    probs = torch.zeros(len(ids), len(classifier.label_names))
    device = next(classifier.task.parameters()).device
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        x, mask, _ = pad_batch([(ids[i], 0) for i in rows], pad_id)
        logits = classifier.task(x.to(device), mask.to(device))  # (B, K)
        probs[rows] = torch.softmax(logits.float(), dim=-1).cpu()
    return probs


def predict_probs(classifier: Classifier, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """Class probabilities (N, num_classes) of each text, in input order."""
    return predict_ids(classifier, encode_texts(classifier, texts), batch_size)


def evaluate_texts(
    classifier: Classifier, texts: Sequence[str], labels: Sequence[int], batch_size: int = 64
) -> tuple[dict[str, float], int]:
    """Accuracy, macro F1 and loss of the classifier on labeled texts, and the number of tokens it read."""
    if not texts:
        raise LmlabError("there are no labeled examples to evaluate; give a file or split that holds some")
    ids = encode_texts(classifier, texts)
    return score(predict_ids(classifier, ids, batch_size), labels), sum(len(i) for i in ids)


def score(probs: torch.Tensor, labels: Sequence[int]) -> dict[str, float]:
    """Accuracy, macro F1 and mean cross-entropy of predicted probabilities (N, K) against label ids."""
    from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score

    target = torch.tensor(list(labels), dtype=torch.long)
    k = probs.size(1)
    preds = probs.argmax(dim=1)
    return {
        "acc": float(multiclass_accuracy(preds, target, num_classes=k, average="micro")),
        "f1": float(multiclass_f1_score(preds, target, num_classes=k, average="macro")),
        "loss": float(F.nll_loss(probs.clamp_min(1e-12).log(), target)),
    }


def read_texts(path: str | Path, text_column: str = "text") -> list[str]:
    """Texts to classify: a .txt file gives one per non-empty line; CSV/TSV/JSON Lines give their `text_column`."""
    path = Path(path).expanduser()
    if path.suffix.lower() == ".txt":
        texts = [line for line in read_text_file(path, "input").splitlines() if line.strip()]
    else:
        texts = column(read_records(path, "input"), text_column, path, "text_column")
    if not texts:
        raise LmlabError(f"{path} holds no texts; give at least one")
    return texts


def read_labeled(
    path: str | Path, label_names: Sequence[str], text_column: str = "text", label_column: str = "label"
) -> tuple[list[str], list[int]]:
    """Texts and label ids of a labeled CSV/TSV/JSON Lines file; labels may be names or ids of the classifier's."""
    records = read_records(path, "text_file")
    texts = column(records, text_column, path, "text_column")
    values = column(records, label_column, path, "label_column")
    index = {name: i for i, name in enumerate(label_names)} | {str(i): i for i in range(len(label_names))}
    unknown = [v for v in label_order(values) if v not in index]
    if unknown:
        raise LmlabError(
            f"{path} has labels the classifier does not know ({', '.join(map(repr, unknown[:5]))}); "
            f"use its label names ({', '.join(label_names)}) or ids 0..{len(label_names) - 1}"
        )
    return texts, [index[v] for v in values]


OUTPUT_KINDS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}


def check_output(path: str | Path) -> Path:
    """The predictions file: a known extension, in a folder that can be written (checked before any work)."""
    from lmlab.io import check_writable

    path = Path(path).expanduser()
    if path.suffix.lower() not in OUTPUT_KINDS:
        raise LmlabError(f"output {path} has an unknown extension; give a .csv or .jsonl file")
    check_writable(path, "output")
    if path.is_dir():
        raise LmlabError(f"output={path} is a folder; give a .csv or .jsonl file path")
    return path


def write_predictions(path: str | Path, texts: Sequence[str], probs: torch.Tensor, label_names: Sequence[str]) -> Path:
    """One row per text: the text, predicted label id and name, and each class probability (CSV or JSON Lines)."""
    from lmlab.io import atomic_write_text

    path = check_output(path)
    kind = OUTPUT_KINDS[path.suffix.lower()]
    rows = []
    for text, p in zip(texts, probs.tolist(), strict=True):
        label = max(range(len(p)), key=p.__getitem__)
        rows.append({"text": text, "label": label, "label_name": label_names[label], "probs": p})
    if kind == "jsonl":
        lines = [
            json.dumps({**r, "probs": dict(zip(label_names, r["probs"], strict=True))}, ensure_ascii=False)
            for r in rows
        ]
        atomic_write_text(path, "".join(line + "\n" for line in lines))
        return path
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["text", "label", "label_name", *(f"prob_{name}" for name in label_names)])
    for r in rows:
        writer.writerow([r["text"], r["label"], r["label_name"], *(f"{q:.6f}" for q in r["probs"])])
    atomic_write_text(path, out.getvalue())
    return path
