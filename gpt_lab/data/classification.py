"""Chapter 6's data: labelled texts from CSV / TSV files, balanced, shuffled and split as the book does.

One file (``data.path``) is read, optionally balanced by undersampling (``data.balance``), shuffled
with ``seed`` and split 0.7 / 0.1 / rest with ``int()`` truncation — the book's pandas procedure
(``sample(n, random_state=123)``, ``sample(frac=1, random_state=123)``) reproduced with numpy's
``RandomState``, which is what pandas draws with — or three files already split
(``data.train_path``, ``data.val_path``, ``data.test_path``). Files with a header name their
columns (``data.label_column``, ``data.text_column``); header-less files are the SMS Spam
Collection's layout, ``label<TAB>text``. The three splits are written as CSV into the run
directory (``train.csv``, ``validation.csv``, ``test.csv``).

Texts are the model's tokens (GPT-2's; a family's tokenizer.json with ``init_from`` one: then its
end-of-sequence id pads) right-padded with ``<|endoftext|>`` (50256) to the longest training text
(or ``data.max_length``; ``context`` for the model's context length); longer validation / test
texts are truncated to it, and texts longer than the model's context are truncated with a warning
that says how many.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from gpt_lab.config import input_path
from gpt_lab.data.labelled import (
    SPLIT_FILES,
    Example,
    balance_examples,
    read_labelled,
    split_csv_text,
    split_examples,
)
from gpt_lab.data.text import DataError, ShuffledDataModule, run_tokenizer, save_data_identity, write_run_splits
from gpt_lab.model.classifier import PAD_TOKEN_ID
from gpt_lab.tokenizer import encode_text, get_tokenizer

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Tokens


class LabelledTextDataset(Dataset):
    """Token ids padded / truncated to ``length`` (``pad``) or kept as they are, with class indices."""

    def __init__(self, ids: list[list[int]], labels: list[int], length: int | None) -> None:
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.ids = [seq[:length] if length else seq for seq in ids]
        self.length = length

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[list[int], torch.Tensor]:
        return self.ids[i], self.labels[i]


def pad_collate(
    batch: list[tuple[list[int], torch.Tensor]], length: int | None = None, pad_id: int = PAD_TOKEN_ID
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad with ``pad_id`` (GPT-2's 50256; a family's end-of-sequence id) to ``length`` (None: the
    batch's longest text) → (ids (b, t), labels (b,))."""
    width = length or max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    for row, (seq, _) in enumerate(batch):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return ids, torch.stack([label for _, label in batch])


class _Collate:
    """A picklable ``pad_collate`` bound to a length (DataLoader workers)."""

    def __init__(self, length: int | None, pad_id: int = PAD_TOKEN_ID) -> None:
        self.length = length
        self.pad_id = pad_id

    def __call__(self, batch: list[tuple[list[int], torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        return pad_collate(batch, self.length, self.pad_id)


class ClassificationDataModule(ShuffledDataModule):
    """Train / validation / test loaders of labelled texts (chapter 6). See the module docstring.

    ``class_names`` (from ``data.class_names`` or the training labels, sorted) fix the class
    indices; ``max_length``: the padded length (None: the longest training text; "context":
    ``context_length``); ``pad=False`` pads each batch to its own longest text instead (with
    batch size 1: no padding at all, the bonus table's row).
    """

    def __init__(
        self,
        context_length: int,
        path: Path | None = None,
        split_paths: dict[str, Path] | None = None,
        batch_size: int = 8,
        train_ratio: float = 0.7,
        val_ratio: float = 0.1,
        balance: bool = False,
        label_column: str = "label",
        text_column: str = "text",
        header: bool | None = None,
        class_names: Sequence[str] | None = None,
        max_length: int | str | None = None,
        pad: bool = True,
        num_workers: int = 0,
        seed: int = 123,
        output_dir: Path | None = None,
        tokenizer: Any = None,
    ) -> None:
        super().__init__()
        self.tokenizer = tokenizer or get_tokenizer()  # the model's (``run_tokenizer``); GPT-2's by default
        self.pad_id = int(self.tokenizer.eot_token)  # GPT-2: the book's 50256
        if (path is None) == (not split_paths):
            raise DataError(
                "data=classification needs either data.path (one file, split 0.7 / 0.1 / rest) or all three "
                "of data.train_path, data.val_path, data.test_path (files already split)"
            )
        self.context_length = context_length
        self.path = path
        self.split_paths = dict(split_paths or {})
        self.batch_size = batch_size
        self.train_ratio, self.val_ratio = train_ratio, val_ratio
        self.balance = balance
        self.label_column, self.text_column, self.header = label_column, text_column, header
        self.class_names = list(class_names) if class_names else None
        self.max_length_setting = max_length
        self.pad = pad
        self.num_workers = num_workers
        self.seed = seed
        self.output_dir = output_dir
        self.generator = torch.Generator().manual_seed(seed)
        self.splits: dict[str, list[Example]] = {}
        self.datasets: dict[str, LabelledTextDataset] = {}
        save_data_identity(self, "classification", self.input_files(), batch_size)
        # Set by a resume (check_resume_data): the classes, in index order, that the checkpoint learned.
        self.expected_class_names: tuple[list[str], str] | None = None
        self.max_length: int | None = None
        self.truncated: dict[str, int] = {}

    def input_files(self) -> dict[str, Path | None]:
        """The data keys this module reads and their paths."""
        return {"data.path": self.path, **{f"data.{k}_path": v for k, v in self.split_paths.items()}}

    def expect_class_names(self, names: Sequence[str], source: str) -> None:
        """Refuse in ``setup`` (before any file is written) data whose classes are not ``names``, in order."""
        self.expected_class_names = (list(names), source)

    # -- reading and splitting -----------------------------------------------------------------
    def _read(self, path: Path, key: str) -> list[Example]:
        return read_labelled(path, key, self.label_column, self.text_column, self.header)

    def setup(self, stage: str | None = None) -> None:
        """Read, balance, split, write the splits, tokenize (once; later calls do nothing)."""
        if self.datasets:
            return
        if self.path is not None:
            examples = self._read(self.path, "data.path")
            names = self._class_names(examples, f"data.path={self.path}")
            if self.balance:
                before = Counter(e.label for e in examples)
                examples = balance_examples(examples, names, self.seed)
                log.info("Balanced %s to %d texts per class", dict(before), len(examples) // len(names))
            self.splits = split_examples(examples, self.train_ratio, self.val_ratio, self.seed)
            for split, rows in self.splits.items():
                if not rows:
                    raise DataError(self._empty_split(split, examples, before if self.balance else None))
        else:
            keys = {"train": "data.train_path", "val": "data.val_path", "test": "data.test_path"}
            self.splits = {split: self._read(self.split_paths[split], keys[split]) for split in SPLIT_FILES}
            names = self._class_names(self.splits["train"], f"data.train_path={self.split_paths['train']}")
            if self.balance:
                log.warning("data.balance=true is ignored with files already split (data.train_path, ...)")
        self.class_names = names
        trained = {e.label for e in self.splits["train"]}
        for split in ("val", "test"):
            unseen = sorted({e.label for e in self.splits[split]} - trained)
            if unseen:
                raise DataError(
                    f"the {split} split has label(s) {', '.join(map(repr, unseen))} that the training split never "
                    f"has (its classes: {', '.join(sorted(trained))}); a classifier cannot predict a class it never saw"
                )
        untrained = [name for name in names if name not in trained]
        if untrained:
            raise DataError(
                f"the class(es) {', '.join(map(repr, untrained))} of data.class_names have no text in the training "
                "split, so the classifier would never learn them; give them training texts, or leave them out"
            )
        if self.expected_class_names is not None and self.expected_class_names[0] != names:
            expected, source = self.expected_class_names
            raise DataError(
                f"{source} was trained on the classes {expected} (in index order), and this run's data gives "
                f"{names}: class indices would change meaning. Resume with the data it trained on (or "
                f"data.class_names={expected}), or start a new run from its weights with init_from={source}"
            )
        if self.output_dir is not None:
            files = {SPLIT_FILES[split]: split_csv_text(rows) for split, rows in self.splits.items()}
            write_run_splits(Path(self.output_dir), files, self.input_files())
        self._tokenize()

    def _empty_split(self, split: str, examples: Sequence[Example], before: Counter[str] | None) -> str:
        """Why ``split`` came out empty: too few texts, or balancing to a class of very few."""
        sizes = f"data.train_ratio={self.train_ratio}, data.val_ratio={self.val_ratio}"
        if before is not None:
            name, count = min(before.items(), key=lambda item: item[1])
            return (
                f"the {split} split of data.path={self.path} is empty: data.balance=true cuts every class to the "
                f"smallest one's size, and class {name!r} has {count} text(s), leaving {len(examples)} texts "
                f"({sizes}); give {name!r} more texts, or set data.balance=false"
            )
        return f"the {split} split of data.path={self.path} is empty ({len(examples)} texts, {sizes}); use more texts"

    def _class_names(self, examples: Sequence[Example], where: str) -> list[str]:
        found = sorted({e.label for e in examples})
        if self.class_names:
            twice = sorted({name for name in self.class_names if self.class_names.count(name) > 1})
            if twice:
                raise DataError(
                    f"data.class_names={self.class_names} names {', '.join(map(repr, twice))} more than once; "
                    "list each class once, in index order"
                )
            absent = [name for name in self.class_names if name not in found]
            if absent:
                raise DataError(
                    f"data.class_names={self.class_names} names {', '.join(map(repr, absent))}, which no text of "
                    f"{where} has (its labels: {', '.join(found)}); list only the labels the data has"
                )
            unknown = [name for name in found if name not in self.class_names]
            if unknown:
                raise DataError(
                    f"{where} has label(s) {', '.join(map(repr, unknown))} missing from "
                    f"data.class_names={self.class_names}"
                )
            found = list(self.class_names)
        if len(found) < 2:
            raise DataError(
                f"{where} has one class only ({found[0]!r}); a classifier needs texts of at least two labels"
            )
        return found

    def _tokenize(self) -> None:
        tokenizer = self.tokenizer
        index = {name: i for i, name in enumerate(self.class_names)}
        encoded = {
            split: [encode_text(tokenizer, e.text) for e in rows]  # "<|endoftext|>" is text, not padding
            for split, rows in self.splits.items()
        }
        setting = self.max_length_setting
        if setting == "context":
            length = self.context_length
        elif setting is None:
            length = max(len(ids) for ids in encoded["train"])  # the book: the longest training text
        else:
            length = int(setting)
        if length > self.context_length:
            if setting is not None:
                raise DataError(
                    f"data.max_length={setting} is longer than model.context_length={self.context_length}; "
                    "use at most the context length (data.max_length=context)"
                )
            length = self.context_length
        too_long = {s: sum(len(ids) > self.context_length for ids in seqs) for s, seqs in encoded.items()}
        if any(too_long.values()):  # the model cannot read past its context: say what is cut, in every split
            log.warning(
                "Truncating %d training, %d validation and %d test text(s) longer than the model's context of %d "
                "tokens (the longest has %d)",
                too_long["train"],
                too_long["val"],
                too_long["test"],
                self.context_length,
                max(len(ids) for seqs in encoded.values() for ids in seqs),
            )
        self.max_length = length
        self.truncated = {s: sum(len(ids) > length for ids in seqs) for s, seqs in encoded.items()}
        for split, seqs in encoded.items():
            labels = [index[e.label] for e in self.splits[split]]
            self.datasets[split] = LabelledTextDataset(seqs, labels, length)
        if len(self.datasets["train"]) < self.batch_size:
            raise DataError(
                f"data.batch_size={self.batch_size} is larger than the {len(self.datasets['train'])} training "
                "texts: every batch would be dropped (drop_last); lower data.batch_size"
            )

    # -- loaders --------------------------------------------------------------------------------
    def _collate(self) -> _Collate:
        return _Collate(self.max_length if self.pad else None, self.pad_id)

    def train_dataloader(self) -> DataLoader:
        return self.split_loader(self.datasets["train"], True, True, self._collate())  # drop_last: the book's

    def book_shuffled_dataloader(self) -> DataLoader:
        """The book's ``train_loader`` as chapter 6 reads it for the accuracy before training: shuffled
        by torch's global generator (the book seeds it with ``torch.manual_seed(123)`` first), the last
        incomplete batch dropped. The run's own training order comes from ``train_dataloader``."""
        return DataLoader(
            self.datasets["train"],
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=True,
            collate_fn=self._collate(),
        )

    def eval_dataloader(self, split: str) -> DataLoader:
        """Every text of ``split`` ("train", "val" or "test") in order."""
        return self.split_loader(self.datasets[split], False, False, self._collate())

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test")

    # -- reporting ------------------------------------------------------------------------------
    def split_sizes(self) -> dict[str, Any]:
        return {"split_sizes": {split: len(rows) for split, rows in self.splits.items()}}

    def describe(self) -> str:
        sizes = ", ".join(f"{split} {len(rows)}" for split, rows in self.splits.items())
        counts = Counter(e.label for e in self.splits["train"])
        padded = f"padded to {self.max_length} tokens" if self.pad else "padded per batch"
        return (
            f"Labelled texts: {sizes}; classes {', '.join(f'{n} ({counts[n]})' for n in self.class_names)} "
            f"in training; {padded}"
        )

    @classmethod
    def from_config(cls, cfg: Any, context_length: int) -> ClassificationDataModule:
        d = cfg.data
        split_keys = {"train": d.train_path, "val": d.val_path, "test": d.test_path}
        given = {k: v for k, v in split_keys.items() if v}
        if given and len(given) < 3:
            missing = [f"data.{k}_path" for k in split_keys if k not in given]
            raise DataError(f"files already split need all three paths: {', '.join(missing)} not given")
        if given and d.path:
            raise DataError(
                f"give either data.path={d.path} (split here) or data.train_path / val_path / test_path, not both"
            )
        if not given and not d.path:
            raise DataError(
                f"task={cfg.task.name} data=classification needs labelled texts: data.path=sms.tsv (one file, "
                "split 0.7 / 0.1 / rest) or data.train_path=, data.val_path=, data.test_path= (already split)"
            )
        return cls(
            context_length=context_length,
            path=input_path(cfg, d.path) if d.path else None,
            split_paths={k: input_path(cfg, v) for k, v in given.items()} or None,
            batch_size=d.batch_size,
            train_ratio=d.train_ratio,
            val_ratio=d.val_ratio,
            balance=bool(d.balance),
            label_column=d.label_column,
            text_column=d.text_column,
            header=d.header,
            class_names=list(d.class_names) if d.class_names else None,
            max_length=d.max_length,
            pad=bool(d.pad),
            num_workers=d.num_workers or 0,
            seed=cfg.seed,
            output_dir=Path(cfg.paths.output_dir),
            tokenizer=run_tokenizer(cfg),
        )
