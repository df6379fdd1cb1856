"""Chapter 7's data: instruction / input / output entries, the book's split and its batches.

Plain functions the other fine-tuning objectives reuse (the entries and their split:
gpt_lab/data/entries.py): ``encode_entry`` (prompt and response as the book tokenizes them) and
``collate_instructions`` (the book's padding and target masking, with exercise 7.2's prompt mask).

Text that contains ``<|endoftext|>`` is tokenized as ordinary text (``gpt_lab.tokenizer.encode_text``:
``<``, ``|``, ``endoftext``, ``|``, ``>``), so the only id 50256 of an item is the one appended to
end it; padding is told apart from it by position, never by value.

A chat family's model (``init_from`` a Llama 3 / Qwen3 / Gemma 3 directory, or a run trained from
one) reads its own tokenizer (``gpt_lab.data.text.run_tokenizer``): the markers of its prompt style
are its special tokens, and the item ends with the style's end-of-turn token (``<|im_end|>``), which
is the end target and the padding; nothing more is appended (``end_of_item``). A style whose
end-of-turn is not one token of the vocabulary (alpaca, phi3) ends with the tokenizer's
end-of-sequence id appended, as the book appends 50256.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tiktoken
import torch
from torch.utils.data import DataLoader, Dataset

from gpt_lab.config import input_path
from gpt_lab.data.corpus import BoundedLoader
from gpt_lab.data.entries import SPLITS, InstructionDataError, read_entries, split_entries, split_sizes
from gpt_lab.data.text import ShuffledDataModule, run_tokenizer, save_data_identity, write_run_splits
from gpt_lab.generation.prompt_styles import format_prompt, format_response, get_prompt_style
from gpt_lab.tokenizer import ENDOFTEXT_ID, IGNORE_INDEX, encode_text, get_tokenizer

log = logging.getLogger(__name__)

SPLIT_FILES = {split: f"{split}.json" for split in SPLITS}  # what a run writes into its directory


# ---------------------------------------------------------------------------------------------
# Tokens and batches


def encode_entry(entry: Mapping[str, Any], style: str, tokenizer: tiktoken.Encoding) -> tuple[list[int], int]:
    """The ids of ``entry``'s training text (prompt + response, as one text) and how many of them are the prompt.

    The whole text is tokenized at once, as the book does; the prompt's length is that of its own
    encoding where it is a prefix of the whole (the tokens at the seam can merge: then less).
    """
    prompt = encode_text(tokenizer, format_prompt(entry, style))
    ids = encode_text(tokenizer, format_prompt(entry, style) + format_response(entry, style))
    n = 0
    for a, b in zip(prompt, ids, strict=False):
        if a != b:
            break
        n += 1
    return ids, n


def end_of_item(tokenizer: Any, style: str) -> tuple[int, bool]:
    """``(end id, appended)``: the id that ends an item of ``style`` and pads its batch, and whether
    the collate appends it. A chat style whose end-of-turn is one token of ``tokenizer`` already ends
    its text with it (``format_response``): nothing is appended; otherwise the tokenizer's
    end-of-sequence id is (GPT-2: the book's 50256). A chat style whose markers a family's tokenizer
    does not have (llama3's on Qwen3) is warned about: its markers are then plain text."""
    end_of_turn = get_prompt_style(style).end_of_turn
    token_id = getattr(tokenizer, "token_id", None)  # a family's tokenizer (gpt_lab.hf_tokenizer)
    found = token_id(end_of_turn) if end_of_turn and token_id is not None else None
    if found is not None:
        return found, False
    if end_of_turn and token_id is not None:
        log.warning(
            "data.prompt_style=%s does not fit this model: its tokenizer (%s) has no %s token, so the style's "
            "markers are plain text to it; use the family's own style (docs/families.md)",
            style,
            getattr(tokenizer, "name", "?"),
            end_of_turn,
        )
    return int(tokenizer.eot_token), True


def collate_instructions(
    items: Sequence[Sequence[int]],
    pad_token_id: int = ENDOFTEXT_ID,
    ignore_index: int = IGNORE_INDEX,
    allowed_max_length: int | None = None,
    prompt_lengths: Sequence[int] | None = None,
    append_end: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The book's ``custom_collate_fn``: token-id lists → inputs and targets (b, t).

    Each item gets one ``pad_token_id`` (end-of-text) appended and is padded with it to the
    longest item + 1 of the batch; inputs are ``[:-1]``, targets ``[1:]``; every target after an
    item's end-of-text is ``ignore_index``. ``allowed_max_length`` then truncates both. With
    ``prompt_lengths`` (exercise 7.2), the targets that predict prompt tokens are ignored too.
    Padding is found by position (past the item's length), so an item may hold ``pad_token_id``.
    ``append_end=False``: the items already end with their end token (a chat family's end-of-turn,
    ``end_of_item``), which is then the last target; nothing is appended.
    """
    if not items:
        raise ValueError("collate_instructions: empty batch")
    width = max(len(item) for item in items)  # + 1 end-of-text - 1 shift
    inputs = torch.full((len(items), width), pad_token_id, dtype=torch.long)
    targets = torch.full((len(items), width), ignore_index, dtype=torch.long)
    for row, item in enumerate(items):
        n = len(item)
        ids = torch.as_tensor(item, dtype=torch.long)
        inputs[row, :n] = ids
        targets[row, : n - 1] = ids[1:]
        if append_end:
            targets[row, n - 1] = pad_token_id  # the one end-of-text target: where the model learns to stop
        if prompt_lengths is not None:
            targets[row, : max(prompt_lengths[row] - 1, 0)] = ignore_index
    if allowed_max_length is not None:
        inputs, targets = inputs[:, :allowed_max_length], targets[:, :allowed_max_length]
    return inputs, targets


@dataclass
class InstructionCollator:
    """``collate_fn`` for ``InstructionDataset`` items ``(ids, prompt_length)`` (a class: picklable for workers)."""

    allowed_max_length: int | None = None
    mask_prompt: bool = False
    end_id: int = ENDOFTEXT_ID  # the end target and padding (``end_of_item``)
    append_end: bool = True

    def __call__(self, batch: Sequence[tuple[list[int], int]]) -> tuple[torch.Tensor, torch.Tensor]:
        items = [ids for ids, _ in batch]
        lengths = [n for _, n in batch] if self.mask_prompt else None
        return collate_instructions(
            items,
            self.end_id,
            allowed_max_length=self.allowed_max_length,
            prompt_lengths=lengths,
            append_end=self.append_end,
        )


class InstructionDataset(Dataset):
    """Entries tokenized once (the book's ``InstructionDataset``): items are ``(ids, prompt_length)``."""

    def __init__(self, entries: Sequence[Mapping[str, Any]], style: str, tokenizer: tiktoken.Encoding) -> None:
        self.entries = list(entries)
        self.encoded = [encode_entry(entry, style, tokenizer) for entry in self.entries]

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, idx: int) -> tuple[list[int], int]:
        return self.encoded[idx]


# ---------------------------------------------------------------------------------------------
# The data module


class InstructionDataModule(ShuffledDataModule):
    """``data=instructions``: the splits of one entries file (``path``) or one file per split.

    Training batches are shuffled with the module's own generator (seeded; its state and the
    loader's place in the epoch travel in checkpoints: ``ckpt_path=last`` resumes exactly) and
    drop the last incomplete batch, as the book; validation and test keep their order. Items
    longer than ``max_length`` tokens are truncated (the book's ``allowed_max_length``) and counted
    in the log: refusing them would stop a long run for one entry, and the cut only costs that
    entry its end-of-text target.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        split_paths: Mapping[str, str | Path | None] | None = None,
        max_length: int = 1024,
        batch_size: int = 8,
        prompt_style: str = "alpaca",
        mask_prompt: bool = False,
        fields: Mapping[str, str] | None = None,
        train_ratio: float = 0.85,
        test_ratio: float = 0.10,
        shuffle_seed: int | None = None,
        num_workers: int = 0,
        seed: int = 123,
        eval_max_batches: int | None = None,
        output_dir: str | Path | None = None,
        tokenizer: Any = None,
    ) -> None:
        super().__init__()
        self.style = get_prompt_style(prompt_style).name
        self.tokenizer = tokenizer or get_tokenizer()  # the model's (``run_tokenizer``); GPT-2's by default
        self.end_id, self.append_end = end_of_item(self.tokenizer, self.style)
        self.path = Path(path) if path else None
        self.split_paths = {k: Path(v) for k, v in (split_paths or {}).items() if v}
        self.max_length = max_length
        self.batch_size = batch_size
        self.mask_prompt = mask_prompt
        self.fields = dict(fields or {})
        self.train_ratio, self.test_ratio, self.shuffle_seed = train_ratio, test_ratio, shuffle_seed
        self.num_workers = num_workers
        self.eval_max_batches = eval_max_batches
        self.output_dir = Path(output_dir) if output_dir else None
        self.generator = torch.Generator().manual_seed(seed)
        self.splits: dict[str, list[dict[str, Any]]] = {}
        self.datasets: dict[str, InstructionDataset] = {}
        self.truncated: dict[str, int] = {}
        save_data_identity(self, "instructions", self.input_files(), batch_size)

    def input_files(self) -> dict[str, Path | None]:
        """The data keys this module reads and their paths."""
        return {"data.path": self.path, **{f"data.{k}_path": v for k, v in self.split_paths.items()}}

    def _read_splits(self) -> dict[str, list[dict[str, Any]]]:
        if self.path is not None:
            entries = read_entries(self.path, self.fields)
            splits = split_entries(entries, self.train_ratio, self.test_ratio, self.shuffle_seed)
            for split, items in splits.items():
                if not items:
                    ratio = {"train": self.train_ratio, "test": self.test_ratio}.get(split)
                    share = f"{ratio:.0%}" if ratio is not None else "the rest"
                    raise InstructionDataError(
                        f"data.path={self.path} has {len(entries)} entries: its {split} split ({share}: sizes "
                        f"{split_sizes(len(entries), self.train_ratio, self.test_ratio)}) is empty; use more entries, "
                        "other data.train_ratio / data.test_ratio, or one file per split (data.train_path, "
                        "data.val_path, data.test_path)"
                    )
            return splits
        splits = {}
        for split in SPLITS:
            if split in self.split_paths:
                splits[split] = read_entries(self.split_paths[split], self.fields, key=f"data.{split}_path")
        return splits

    def setup(self, stage: str | None = None) -> None:
        """Read, split and tokenize the entries once; write the splits into the run directory."""
        if self.splits:
            return
        splits = self._read_splits()
        tokenizer = self.tokenizer
        for split, entries in splits.items():
            dataset = InstructionDataset(entries, self.style, tokenizer)
            self.truncated[split] = sum(len(ids) > self.max_length for ids, _ in dataset.encoded)
            if self.truncated[split]:
                longest = max(len(ids) for ids, _ in dataset.encoded)
                log.warning(
                    "%d of %d %s entries are longer than data.max_length=%d tokens (the longest: %d) and are cut to "
                    "it: they lose their end-of-text target",
                    self.truncated[split],
                    len(entries),
                    split,
                    self.max_length,
                    longest,
                )
            self.datasets[split] = dataset
        if len(self.datasets["train"]) < self.batch_size:
            raise InstructionDataError(
                f"data.batch_size={self.batch_size} is larger than the {len(self.datasets['train'])} training "
                "entries: every batch would be dropped; lower data.batch_size or give more entries"
            )
        self.splits = splits
        if self.output_dir is not None and _is_rank_zero():
            files = {SPLIT_FILES[k]: json.dumps(v, indent=4, ensure_ascii=False) + "\n" for k, v in splits.items()}
            write_run_splits(self.output_dir, files, self.input_files())

    def _loader(self, split: str, shuffle: bool, drop_last: bool) -> DataLoader:
        assert self.datasets, "call setup() first"
        return self.split_loader(
            self.datasets[split],
            shuffle,
            drop_last,
            InstructionCollator(self.max_length, self.mask_prompt, self.end_id, self.append_end),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False, drop_last=False)

    def eval_dataloader(self, split: str) -> BoundedLoader:
        """The first ``eval_max_batches`` batches of ``split`` in order (None: all), for the reported losses."""
        return BoundedLoader(self._loader(split, shuffle=False, drop_last=False), self.eval_max_batches)

    def split_sizes(self) -> dict[str, Any]:
        """What results.json records about the data: the entries per split and the truncated ones."""
        return {
            "split_sizes": {split: len(entries) for split, entries in self.splits.items()},
            "truncated_entries": dict(self.truncated),
        }

    def describe(self) -> str:
        where = self.path or ", ".join(f"{k}={v}" for k, v in self.split_paths.items())
        sizes = ", ".join(f"{len(v)} {k}" for k, v in self.splits.items())
        return f"Instructions {where}: {sizes} entries, prompt style {self.style}, max length {self.max_length}"

    @classmethod
    def from_config(cls, cfg: Any, context_length: int) -> InstructionDataModule:
        """The ``data=instructions`` module of a run (paths resolved where the user ran from)."""
        d = cfg.data
        split_paths = {split: d.get(f"{split}_path") for split in SPLITS}
        if d.path and any(split_paths.values()):
            raise InstructionDataError(
                "give either data.path (one file, split as the book does) or data.train_path / data.val_path "
                "(/ data.test_path), not both"
            )
        if not d.path and not (split_paths["train"] and split_paths["val"]):
            raise InstructionDataError(
                f"task={cfg.task.name} data=instructions needs entries: data.path=instruction-data.json (a JSON list "
                "or JSON Lines of instruction / input / output), or data.train_path and data.val_path "
                "(and data.test_path for test responses)"
            )
        max_length = d.max_length if d.max_length is not None else context_length
        if max_length > context_length:
            raise InstructionDataError(
                f"data.max_length={max_length} exceeds the model's context length {context_length}: the model "
                "cannot read longer items; lower data.max_length or leave it null (the context length)"
            )
        return cls(
            path=input_path(cfg, d.path),
            split_paths={k: input_path(cfg, v) for k, v in split_paths.items()},
            max_length=max_length,
            batch_size=d.batch_size,
            prompt_style=d.prompt_style,
            mask_prompt=d.mask_prompt,
            fields=dict(d.fields) if d.fields else None,
            train_ratio=d.train_ratio,
            test_ratio=d.test_ratio,
            shuffle_seed=cfg.seed if d.shuffle else None,
            num_workers=d.num_workers,
            seed=cfg.seed,
            eval_max_batches=d.eval_max_batches,
            output_dir=cfg.paths.output_dir,
            tokenizer=run_tokenizer(cfg),
        )


def _is_rank_zero() -> bool:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0
