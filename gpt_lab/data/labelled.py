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


DEFAULT_COLUMNS = ("label", "text")  # data.label_column / data.text_column's defaults


def _rows(content: str, delimiter: str, path: Path, key: str) -> list[tuple[int, list[str]]]:
    """The non-blank rows of a CSV / TSV text with the line each starts on, read as pandas' ``read_csv``
    reads them: CSV quoting rules for both delimiters; a quote left open up to the end of the file is
    an error naming its line (pandas: "EOF inside string"), not one text holding the rest of the file."""
    reader = csv.reader(io.StringIO(content), delimiter=delimiter)
    rows, line = [], 1
    for row in reader:
        if any(cell.strip() for cell in row):
            rows.append((line, row))
        line = reader.line_num + 1
    if rows:
        last_line = rows[-1][0]
        rest = "".join(content.splitlines(keepends=True)[last_line - 1 :])
        try:
            list(csv.reader(io.StringIO(rest), delimiter=delimiter, strict=True))
        except csv.Error as err:
            if "end of data" in str(err):
                lines = len(content.splitlines()) - last_line + 1
                raise DataError(
                    f'{key}={path} line {last_line} opens a quote (") that is never closed, so the rest of the file '
                    f'({lines} line(s)) would be one text; close it, or write a quote inside a text as "" within a '
                    "quoted text (CSV rules, as pandas reads the file)"
                ) from None
    return rows


def read_labelled(
    path: Path,
    key: str,
    label_column: str = "label",
    text_column: str = "text",
    header: bool | None = None,
) -> list[Example]:
    """The labelled texts of a CSV / TSV file (``key``: the config key naming it, for messages).

    ``header``: None looks at the first row: a header when it names either column, when the columns
    are not the defaults (a name was given, so the file must have a header) or when it holds more than
    two fields; otherwise ``label<TAB>text`` rows (the SMS Spam Collection). True requires a header,
    False reads ``label<TAB>text`` rows. Tab-separated for .tsv files (and files with a tab in their
    first 4 KiB that are not .csv), comma-separated otherwise; quotes follow CSV rules in both, as
    pandas' ``read_csv`` (the book's reader) applies them, and as pandas a row with more fields than
    the header (or than label and text) is an error naming its line, never a text cut at a comma.
    """
    content = read_text(path, key, "a CSV or TSV file of labelled texts", encoding="utf-8-sig")
    if not content.strip():
        raise DataError(f"{key}={path} is empty; it needs one labelled text per line")
    delimiter = _delimiter(path, content[:4096])
    rows = _rows(content, delimiter, path, key)
    first = [cell.strip() for cell in rows[0][1]]
    if header is None:
        named = label_column in first or text_column in first or (label_column, text_column) != DEFAULT_COLUMNS
        header = named or len(first) > 2
    if header:
        missing = [c for c in (label_column, text_column) if c not in first]
        if missing:
            which = " and ".join(f"data.{'label' if c == label_column else 'text'}_column={c}" for c in missing)
            raise DataError(
                f"{key}={path} has no column {which}; its header names {', '.join(first)} (set "
                "data.label_column / data.text_column to the right names, or data.header=false for "
                "label<TAB>text lines)"
            )
        li, ti = first.index(label_column), first.index(text_column)
        body, width = rows[1:], len(first)
    else:
        li, ti = 0, 1
        body, width = rows, 2
    layout = f"its header's {width} columns" if header else "label and text (no header)"
    examples = []
    for n, row in body:
        if len(row) > width:
            sep = "tab" if delimiter == "\t" else "comma"
            raise DataError(
                f"{key}={path} line {n} has {len(row)} fields, more than {layout}: a {sep} inside a text cuts it "
                f'(pandas refuses the line too); put that text in double quotes ("...")'
            )
        if len(row) <= max(li, ti):
            raise DataError(
                f"{key}={path} line {n} has {len(row)} field(s), no {'text' if len(row) > li else 'label'}; "
                f"every line needs a label and a text ({'header' if header else 'label<TAB>text'} layout)"
            )
        label, text = row[li].strip(), row[ti]
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
