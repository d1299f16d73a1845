"""`lmlab steer ckpt=RUN positive=[...] negative=[...] [layer=L] [out=F]`: a steering vector (ActAdd / contrastive
activation addition) from two sets of texts, written as safetensors; `lmlab generate steer.vector=F` adds it.

The vector is `lmlab.interp.steering.contrast_vector`; this command gathers the two sets of texts (lists, files of
one text per line, or two labels of labeled data), picks the layer, writes the file and prints a summary.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from lmlab.cli.generate import load_language_model, read_lines, unescape
from lmlab.cli.runner import hydra_entry
from lmlab.errors import LmlabError

if TYPE_CHECKING:
    from lmlab.interp.steering import SteeringVector

SIDES = ("positive", "negative")
WAYS = "positive=[...] negative=[...], positive_file=FILE negative_file=FILE, labeled_file=FILE or data=rotten_tomatoes"
"""The ways to give the two sets of texts, for the errors."""


def listed_texts(cfg: DictConfig, side: str) -> tuple[list[str], str]:
    """One side's texts from `<side>=[...]` or `<side>_file=FILE`, and how they were given."""
    texts, file = cfg[side], cfg[f"{side}_file"]
    if texts is not None and file is not None:
        raise LmlabError(f"give {side} or {side}_file, not both")
    if file is not None:
        return read_lines(file, f"{side}_file", f"{side} text"), f"{side}_file={file}"
    if texts is None:
        raise LmlabError(f"no {side} texts; give them as {WAYS}")
    return [unescape(str(text)) for text in OmegaConf.to_container(texts)], f"{side}=[...]"


def labeled_texts(cfg: DictConfig) -> tuple[list[str], list[str], list[str], str]:
    """(texts, label of each, label names, where from) of `labeled_file` (every row) or `data=` (its training split)."""
    if cfg.labeled_file is not None:
        from lmlab.data.labeled import column, label_order, read_records

        path = cfg.labeled_file
        records = read_records(path, "labeled_file")
        other = "data=text_classification data.source.train=FILE data.source.{}_column=NAME"
        texts = column(records, "text", path, other.format("text"))
        labels = column(records, "label", path, other.format("label"))
        return texts, labels, label_order(labels), f"labeled_file={path}"
    from hydra.utils import instantiate

    if "source" not in cfg.data:
        raise LmlabError("the data config is plain text, without labels; give labeled data (data=rotten_tomatoes, "
                         "imdb or text_classification) or the two sets of texts as lists or files")  # fmt: skip
    source = instantiate(cfg.data.source)
    splits = source.load()
    names = list(splits.label_names)
    return splits.train.texts, [names[i] for i in splits.train.labels], names, f"{source.name} training split"


def chosen_labels(cfg: DictConfig, names: list[str]) -> tuple[str, str]:
    """The labels of the positive and negative side: as given, or the second and first of exactly two."""
    given = [cfg.positive_label, cfg.negative_label]
    if given == [None, None]:
        if len(names) != 2:
            raise LmlabError(f"the data has {len(names)} labels ({', '.join(names)}); choose the two sides: "
                             "positive_label=... negative_label=...")  # fmt: skip
        return names[1], names[0]
    if None in given:
        raise LmlabError("give both positive_label and negative_label (or neither, for data with two labels)")
    for side, label in zip(SIDES, given, strict=True):
        if str(label) not in names:
            raise LmlabError(f"{side}_label={label} is not a label of the data; its labels: {', '.join(names)}")
    if given[0] == given[1]:
        raise LmlabError(f"positive_label and negative_label are both {given[0]}; give two different labels")
    return str(given[0]), str(given[1])


def contrast_texts(cfg: DictConfig) -> tuple[list[str], list[str], str]:
    """The positive texts, the negative texts (at most `max_examples` each) and where they came from."""
    if cfg.max_examples is not None and cfg.max_examples < 1:
        raise LmlabError(f"max_examples={cfg.max_examples} must be a positive integer (or null for all)")
    listed = any(cfg[key] is not None for side in SIDES for key in (side, f"{side}_file"))
    labeled = [key for key, value in (("labeled_file", cfg.labeled_file), ("data", cfg.get("data"))) if value]
    if len(labeled) + listed > 1:
        raise LmlabError(f"give the two sets of texts one way, not {' and '.join(labeled + ['texts'] * listed)}: "
                         f"{WAYS}")  # fmt: skip
    if labeled:
        texts, labels, names, where = labeled_texts(cfg)
        sides = chosen_labels(cfg, names)
        positive, negative = ([t for t, label in zip(texts, labels, strict=True) if label == side] for side in sides)
        where = f"{where}, label {sides[0]} minus {sides[1]}"
    else:
        if cfg.positive_label is not None or cfg.negative_label is not None:
            raise LmlabError("positive_label and negative_label pick the sides of labeled data; give labeled_file= "
                             "or data=, or drop them")  # fmt: skip
        (positive, from_positive), (negative, from_negative) = (listed_texts(cfg, side) for side in SIDES)
        where = f"{from_positive} minus {from_negative}"
    if cfg.max_examples is not None:
        positive, negative = positive[: cfg.max_examples], negative[: cfg.max_examples]
    return positive, negative, where


def default_out(checkpoint: Path, layer: int) -> Path:
    """`<run folder>/steering/layer<L>.safetensors`, beside the checkpoint the vector belongs to."""
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    return run_dir / "steering" / f"layer{layer}.safetensors"


def print_summary(vector: SteeringVector, out: Path, ckpt: str) -> None:
    """What was built, the scale to steer with, and the command that uses it."""
    how = "the mean over each text's tokens" if vector.position == "mean" else "each text's last token"
    print(f"steering vector at layer {vector.layer} ({vector.hook}), {how}")
    print(f"texts: {vector.n_positive} positive, {vector.n_negative} negative ({vector.texts})")
    scale = f"steer.coeff={vector.resid_norm / vector.norm:.3g} adds" if vector.norm > 0 else "no coeff gives"
    print(f"vector norm {vector.norm:.4g}; residual stream there: mean token norm {vector.resid_norm:.4g} "
          f"({scale} a vector as long as the stream)")  # fmt: skip
    print(f"written: {out}")
    print(f"use it: lmlab generate ckpt={ckpt} steer.vector={out} steer.coeff=4")


def steer(cfg: DictConfig) -> SteeringVector:
    """Gather the texts, load the checkpoint, build the vector at the layer, write it and print the summary."""
    from lmlab.interp.steering import contrast_vector, middle_layer
    from lmlab.io import check_writable

    positive, negative, where = contrast_texts(cfg)  # before loading the model: bad input fails fast
    loaded = load_language_model(str(cfg.ckpt), str(cfg.device))
    layer = middle_layer(loaded.model) if cfg.layer is None else int(cfg.layer)
    out = Path(cfg.out).expanduser() if cfg.out is not None else default_out(loaded.path, layer)
    check_writable(out, "out")
    vector = contrast_vector(loaded.model, loaded.tokenizer, positive, negative, layer, str(cfg.position),
                             int(cfg.batch_size))  # fmt: skip
    vector = dataclasses.replace(vector, source=str(loaded.path), texts=where)
    vector.save(out)
    print_summary(vector, out, str(cfg.ckpt))
    return vector


main = hydra_entry("steer", steer)
