"""Text from a Hugging Face `datasets` dataset: a folder saved with `save_to_disk`, a folder of data files
(.txt/.jsonl/.csv/.parquet), or a hub id — read row by row, so the corpus never has to fit in memory."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmlab.errors import LmlabError

_SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
"""Files `Dataset.save_to_disk` / `DatasetDict.save_to_disk` leave in a folder."""


@dataclass
class HFDatasetCorpus:
    """One column of one split of a Hugging Face dataset; each row is a document followed by `separator`.

    A local folder is read offline. A hub id is the user asking for a remote resource: with `streaming` it is read
    over the network on every pass (the token cache makes a few passes once), without it `datasets` downloads it to
    its cache first and reads it from disk.
    """

    path: str
    subset: str | None = None
    """The dataset's configuration name (`name` in `datasets.load_dataset`), e.g. `wikitext-2-raw-v1`."""
    split: str = "train"
    text_column: str = "text"
    separator: str = "\n"
    streaming: bool = True
    revision: str | None = None
    name: str = "hf_dataset"

    def documents(self) -> Iterator[str]:
        for text in self._texts(self._open()):
            yield text + self.separator

    def fingerprint(self) -> str:
        digest = hashlib.sha256(f"hf-dataset-v1 {self.path} {self.subset} {self.split} {self.text_column}".encode())
        for doc in self.documents():
            digest.update(doc.encode("utf-8"))
        return digest.hexdigest()

    def _open(self) -> Any:
        """The split as a `datasets.Dataset` (saved folder) or an iterable of rows."""
        import datasets

        folder = Path(self.path).expanduser()
        if folder.is_dir() and any((folder / marker).is_file() for marker in _SAVED_MARKERS):
            loaded = datasets.load_from_disk(str(folder))
            return self._pick_split(loaded) if isinstance(loaded, datasets.DatasetDict) else loaded
        if not folder.exists() and (self.path.startswith((".", "/", "~")) or self.path.count("/") > 1):
            raise LmlabError(f"data.corpus.path={self.path} does not exist; give a dataset folder or a hub id")
        try:
            return datasets.load_dataset(
                str(folder) if folder.exists() else self.path,
                self.subset,
                split=self.split,
                streaming=self.streaming,
                revision=self.revision,
            )
        except ValueError as err:  # e.g. an unknown split
            raise LmlabError(f"cannot read split {self.split!r} of {self.path}: {_one_line(err)}") from err
        except (FileNotFoundError, ConnectionError) as err:
            raise LmlabError(
                f"cannot load dataset {self.path}: {_one_line(err)}; give a local folder, or check the hub id "
                "and the network"
            ) from err

    def _pick_split(self, splits: Any) -> Any:
        if self.split not in splits:
            raise LmlabError(
                f"{self.path} has no split {self.split!r}; set data.corpus.split to one of {', '.join(splits)}"
            )
        return splits[self.split]

    def _texts(self, rows: Iterable[dict[str, Any]]) -> Iterator[str]:
        for row in rows:
            if self.text_column not in row:
                raise LmlabError(
                    f"{self.path} has no column {self.text_column!r}; set data.corpus.text_column to one of "
                    f"{', '.join(row)}"
                )
            value = row[self.text_column]
            if value is not None:
                yield str(value)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300]
