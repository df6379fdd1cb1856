"""Labelled text as chapter 6 reads it: CSV / TSV files (a header naming the columns, or the SMS
Spam Collection's header-less ``label<TAB>text``), balanced by undersampling, shuffled with ``seed``
and split 0.7 / 0.1 / rest with ``int()`` truncation — the book's pandas procedure
(``sample(n, random_state=123)``, ``sample(frac=1, random_state=123)``) reproduced with numpy's
``RandomState``, which is what pandas draws with — and the splits written back as CSV.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpt_lab.data.text import DataError, read_text

log = logging.getLogger(__name__)

SPLIT_FILES = {"train": "train.csv", "val": "validation.csv", "test": "test.csv"}  # the book's names


@dataclass
class Example:
    text: str
    label: str


# ---------------------------------------------------------------------------------------------
# Reading


def _delimiter(path: Path, sample: str) -> str:
    if path.suffix.lower() in (".tsv", ".tab") or (path.suffix.lower() != ".csv" and "\t" in sample):
        return "\t"
    return ","


def read_labelled(
    path: Path,
    key: str,
    label_column: str = "label",
    text_column: str = "text",
    header: bool | None = None,
) -> list[Example]:
    """The labelled texts of a CSV / TSV file (``key``: the config key naming it, for messages).

    ``header``: None looks at the first row (a header when it holds both column names), True
    requires one, False reads ``label<TAB>text`` rows (the SMS Spam Collection; fields past the
    second are joined back with tabs). Tab-separated for .tsv files (and files with a tab in their
    first 4 KiB that are not .csv), comma-separated otherwise; quotes follow CSV rules in both,
    as pandas' ``read_csv`` (the book's reader) applies them.
    """
    content = read_text(path, key, "a CSV or TSV file of labelled texts", encoding="utf-8-sig")
    if not content.strip():
        raise DataError(f"{key}={path} is empty; it needs one labelled text per line")
    delimiter = _delimiter(path, content[:4096])
    # CSV quoting rules for both delimiters, as pandas' reader (which the book uses) applies them.
    rows = [r for r in csv.reader(io.StringIO(content), delimiter=delimiter) if any(cell.strip() for cell in r)]
    first = [cell.strip() for cell in rows[0]]
    has_header = header if header is not None else (label_column in first and text_column in first)
    if has_header:
        missing = [c for c in (label_column, text_column) if c not in first]
        if missing:
            which = " and ".join(f"data.{'label' if c == label_column else 'text'}_column={c}" for c in missing)
            raise DataError(
                f"{key}={path} has no column {which}; its header names {', '.join(first)} (set "
                "data.label_column / data.text_column to the right names, or data.header=false for "
                "label<TAB>text lines)"
            )
        li, ti = first.index(label_column), first.index(text_column)
        body, start = rows[1:], 2
    else:
        li, ti = 0, 1
        body, start = rows, 1
    examples = []
    for n, row in enumerate(body, start=start):
        if len(row) <= max(li, ti):
            raise DataError(
                f"{key}={path} line {n} has {len(row)} field(s), no {'text' if len(row) > li else 'label'}; "
                f"every line needs a label and a text ({'header' if has_header else 'label<TAB>text'} layout)"
            )
        label = row[li].strip()
        text = "\t".join(row[ti:]) if not has_header and delimiter == "\t" else row[ti]
        if not label:
            raise DataError(f"{key}={path} line {n} has an empty label; every text needs one")
        if not text.strip():
            raise DataError(f"{key}={path} line {n} has an empty text (label {label!r}); remove the line or fill it")
        examples.append(Example(text, label))
    if not examples:
        raise DataError(f"{key}={path} holds a header but no labelled texts")
    return examples


# ---------------------------------------------------------------------------------------------
# The book's procedure


def pandas_sample_positions(n_rows: int, n: int, seed: int) -> np.ndarray:
    """The row positions pandas' ``df.sample(n, random_state=seed)`` picks, in its order.

    pandas draws ``RandomState(seed).choice(n_rows, n, replace=False)``, which is the first ``n``
    entries of ``RandomState(seed).permutation(n_rows)`` (``sample(frac=1)``: all of them).
    """
    return np.random.RandomState(seed).permutation(n_rows)[:n]


def balance_examples(examples: Sequence[Example], class_names: Sequence[str], seed: int) -> list[Example]:
    """The book's undersampling: every class cut to the smallest one's size, class by class.

    For two classes this is ``create_balanced_dataset``: the larger class sampled
    (``sample(n, random_state=seed)``) followed by every row of the smaller one, in file order.
    """
    by_class = {name: [e for e in examples if e.label == name] for name in class_names}
    smallest = min(len(rows) for rows in by_class.values())
    out: list[Example] = []
    for name in class_names:
        rows = by_class[name]
        if len(rows) > smallest:
            rows = [rows[i] for i in pandas_sample_positions(len(rows), smallest, seed)]
        out.extend(rows)
    return out


def split_examples(
    examples: Sequence[Example], train_ratio: float, val_ratio: float, seed: int
) -> dict[str, list[Example]]:
    """Shuffle (``sample(frac=1, random_state=seed)``) and cut at ``int(n * 0.7)`` and ``+ int(n * 0.1)``."""
    shuffled = [examples[i] for i in pandas_sample_positions(len(examples), len(examples), seed)]
    train_end = int(len(shuffled) * train_ratio)
    val_end = train_end + int(len(shuffled) * val_ratio)
    return {"train": shuffled[:train_end], "val": shuffled[train_end:val_end], "test": shuffled[val_end:]}


def split_csv_text(examples: Sequence[Example]) -> str:
    """A split as CSV with a ``label,text`` header (the file reads back as data.train_path=...)."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["label", "text"])
    writer.writerows([e.label, e.text] for e in examples)
    return out.getvalue()
