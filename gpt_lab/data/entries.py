"""Instruction entries as chapter 7 reads them: a JSON list or JSON Lines file of objects with
``instruction``, ``input`` (may be empty or absent) and ``output`` (field names mappable), and the
book's split of them (the first 85 % train, the next 10 % test, the rest validation). Shared by
data=instructions and data=preferences.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from gpt_lab.data.text import DataError, read_text

FIELDS = ("instruction", "input", "output")
REQUIRED_FIELDS = ("instruction", "output")
SPLITS = ("train", "val", "test")


class InstructionDataError(DataError):
    """An instruction file that cannot be read, an entry without its fields, an empty split."""


def _parse(path: Path, text: str, key: str, error: type[DataError]) -> list[Any]:
    """A JSON list, or JSON Lines (one object per line); the error names the line that is neither."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise error(
                f"{key}={path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); give a JSON "
                "list of entries or JSON Lines (one entry per line)"
            ) from None
        return data
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise error(
                f"{key}={path} is neither a JSON list nor JSON Lines: line {number} is not JSON ({err.msg}); "
                "give a JSON list of entries or one JSON object per line"
            ) from None
    return entries


def _missing_instruction_field(
    key: str, path: Path, index: int, name: str, names: Mapping[str, str], raw: Mapping[str, Any]
) -> str:
    """Chapter 7's message for an entry without one of its fields."""
    mapped = f" (data.fields.{name}={names[name]})" if names[name] != name else ""
    if name == "output" and "chosen" in raw and "rejected" in raw:  # issue 20
        return (
            f"{key}={path}: entry {index} (counting from 0) has no {names[name]!r} but 'chosen' and "
            "'rejected': it looks like preference data; preference-tune an instruction-tuned model on "
            "it with experiment=dpo (data=preferences), or map one response as the output with "
            "data.fields.output=chosen"
        )
    return (
        f"{key}={path}: entry {index} (counting from 0) has no {names[name]!r}{mapped}; every entry "
        f"needs {' and '.join(repr(names[f]) for f in REQUIRED_FIELDS)} (map other names with "
        f"data.fields.instruction=..., data.fields.input=..., data.fields.output=...)"
    )


MissingField = Callable[[str, Path, int, str, Mapping[str, str], Mapping[str, Any]], str]


def read_entries(
    path: str | Path,
    fields: Mapping[str, str] | None = None,
    key: str = "data.path",
    *,
    names: Sequence[str] = FIELDS,
    required: Sequence[str] = REQUIRED_FIELDS,
    error: type[DataError] = InstructionDataError,
    missing: MissingField = _missing_instruction_field,
    expected: str = "a JSON list or JSON Lines file of instruction / input / output entries",
) -> list[dict[str, Any]]:
    """The entries of a JSON list or JSONL file, each with the fields ``names`` (chapter 7's
    ``instruction``, ``input`` and ``output`` by default; preference pairs add ``chosen`` and ``rejected``).

    ``fields`` maps those names to the file's own (``{"instruction": "question", "output":
    "answer"}``); a missing or null field not in ``required`` becomes ``""``; other keys of an entry
    are kept. Any problem is an ``error`` naming ``key``, the file and the entry's index (counted
    from 0); ``missing`` words the one for a required field an entry lacks.
    """
    path = Path(path)
    text = read_text(path, key, expected, error)
    data = _parse(path, text, key, error)
    if not isinstance(data, list):
        raise error(f"{key}={path} holds a JSON {type(data).__name__}, not a list of entries")
    mapped = {name: (fields or {}).get(name) or name for name in names}
    entries = []
    for index, raw in enumerate(data):
        if not isinstance(raw, Mapping):
            raise error(
                f"{key}={path}: entry {index} (counting from 0) is a {type(raw).__name__}, not an object with "
                f"{', '.join(repr(mapped[f]) for f in names)}"
            )
        entry = {k: v for k, v in raw.items() if k not in mapped.values()}
        for name in names:
            value = raw.get(mapped[name])
            if value is None and name not in required:
                value = ""
            if value is None:
                raise error(missing(key, path, index, name, mapped, raw))
            if not isinstance(value, str):
                raise error(
                    f"{key}={path}: entry {index} (counting from 0) has {mapped[name]!r} of type "
                    f"{type(value).__name__}; it must be a string"
                )
            entry[name] = value
        entries.append(entry)
    if not entries:
        raise error(f"{key}={path} holds no entries")
    return entries


def split_sizes(n: int, train_ratio: float = 0.85, test_ratio: float = 0.10) -> dict[str, int]:
    """The book's split of ``n`` entries: ``int(0.85 n)`` train, ``int(0.1 n)`` test, the rest validation."""
    train = int(n * train_ratio)
    test = int(n * test_ratio)
    return {"train": train, "val": n - train - test, "test": test}


def split_entries(
    entries: Sequence[Any], train_ratio: float = 0.85, test_ratio: float = 0.10, seed: int | None = None
) -> dict[str, list[Any]]:
    """The book's split: the first ``train_ratio`` trains, the next ``test_ratio`` tests, the rest validates.

    With ``seed`` the entries are shuffled first (Python's ``random.Random(seed)``); without, the
    file's order is kept, as the book does.
    """
    order = list(entries)
    if seed is not None:
        random.Random(seed).shuffle(order)
    sizes = split_sizes(len(order), train_ratio, test_ratio)
    train_end = sizes["train"]
    test_end = train_end + sizes["test"]
    return {"train": order[:train_end], "val": order[test_end:], "test": order[train_end:test_end]}
