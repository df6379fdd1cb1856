"""Preference pairs (the book's chapter-7 DPO bonus): an instruction entry with two responses.

An entry is chapter 7's ``instruction`` / ``input`` plus ``chosen`` and ``rejected`` (field names
mappable with ``data.chosen_key`` / ``data.rejected_key``), read from a JSON list or a JSONL file
and split as chapter 7 splits its entries (first 85 % train, next 10 % test, the rest validation).

Each pair becomes two token sequences, ``prompt + chosen + <|endoftext|>`` and
``prompt + rejected + <|endoftext|>``, where the prompt is the entry's prompt style up to and
including the response header (alpaca: ``...\\n\\n### Response:\\n``). A batch of ``b`` pairs is
one tensor of ``2b`` rows — the ``b`` chosen sequences, then the ``b`` rejected ones — so each
model runs one forward pass per step; inputs are ``[:-1]``, targets ``[1:]``, padded with
``<|endoftext|>`` and with every target that is not a response token (the prompt, the padding)
set to -100. The one appended end-of-text is a response target, as in chapter 7: the model learns
where the preferred answer stops.

A chat family's model (``init_from`` a Llama 3 / Qwen3 / Gemma 3 directory or a run trained from
one) reads its own tokenizer, and each response ends with its style's end-of-turn token
(``<|im_end|>``) instead, which also pads (``gpt_lab.data.instructions.end_of_item``).

Pairs whose two responses are equal are warned about, counted and left out (they add exactly
ln 2 to the loss and nothing to the gradient).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from gpt_lab.config import input_path
from gpt_lab.data.corpus import BoundedLoader
from gpt_lab.data.entries import read_entries, split_entries
from gpt_lab.data.instructions import end_of_item
from gpt_lab.data.text import DataError, ShuffledDataModule, run_tokenizer, save_data_identity
from gpt_lab.generation.prompt_styles import format_prompt, get_prompt_style
from gpt_lab.tokenizer import ENDOFTEXT_ID, IGNORE_INDEX, encode_text, get_tokenizer

log = logging.getLogger(__name__)

EOT_ID = ENDOFTEXT_ID  # appended to each response, and the padding
SPLITS = ("train", "val", "test")


class PreferenceDataError(DataError):
    """``data=preferences`` was given a file it cannot use (missing fields, not JSON, an empty split)."""


def carried_prompt_style(given: str | None, init_from: Path | None) -> str:
    """The prompt style to train with: ``data.prompt_style`` when given, else the one saved with the
    ``init_from`` run (its ``model.json``), else alpaca (the book's)."""
    from gpt_lab.model.model_file import META_FILE, MODEL_FILE, read_meta

    saved = None
    if init_from is not None and init_from.exists():
        meta = read_meta(init_from / MODEL_FILE if init_from.is_dir() else init_from)
        saved = (meta or {}).get("prompt_style")
    if given and saved and given != saved:
        log.warning(
            "data.prompt_style=%s, but init_from=%s was instruction-tuned with %s (its %s): the prompts will "
            "not read as the model learned them",
            given,
            init_from,
            saved,
            META_FILE,
        )
    style = given or saved or "alpaca"
    if not given:
        log.info("Prompt style %s (%s)", style, f"from init_from's {META_FILE}" if saved else "the default")
    return style


PREFERENCE_FIELDS = ("instruction", "input", "chosen", "rejected")


def _missing_preference_field(
    key: str, path: Path, index: int, name: str, names: Mapping[str, str], raw: Mapping[str, Any]
) -> str:
    chosen_key, rejected_key = names["chosen"], names["rejected"]
    if "output" in raw and chosen_key not in raw and rejected_key not in raw:
        hint = (
            " — it looks like instruction data (instruction / input / output): train on it with "
            "data=instructions, or add the two responses to compare"
        )
    elif chosen_key != "chosen" or rejected_key != "rejected":
        hint = f" (data.chosen_key={chosen_key}, data.rejected_key={rejected_key})"
    else:
        hint = " (name other fields with data.chosen_key= / data.rejected_key=)"
    return (
        f"{key}={path}: entry {index} has no {names[name]} field; data=preferences needs "
        f"{names['instruction']}, {chosen_key} and {rejected_key} ({names['input']} optional){hint}"
    )


def read_preference_entries(
    path: Path,
    chosen_key: str = "chosen",
    rejected_key: str = "rejected",
    fields: Mapping[str, str] | None = None,
) -> list[dict]:
    """The entries of a JSON list or JSONL file, each with ``instruction``, ``input``, ``chosen``, ``rejected``
    (chapter 7's reader, ``gpt_lab.data.entries.read_entries``, with the two responses for ``output``).

    ``chosen_key`` / ``rejected_key`` name the two response fields in the file, ``fields`` the
    instruction and input (``data.fields``, as chapter 7's data); the entries come back with the
    standard names. A missing field, a non-string field, or an instruction file given here
    (``output`` but no responses) is a ``PreferenceDataError``.
    """
    names = {**{k: v for k, v in (fields or {}).items() if v}, "chosen": chosen_key, "rejected": rejected_key}
    return read_entries(
        path,
        names,
        names=PREFERENCE_FIELDS,
        required=("instruction", "chosen", "rejected"),
        error=PreferenceDataError,
        missing=_missing_preference_field,
        expected="a JSON or JSONL file of preference entries (instruction, input, chosen, rejected)",
    )


@dataclass
class PreferencePair:
    """One entry's token ids: the prompt, and each response followed by ``<|endoftext|>``; with
    ``dpo.precompute_reference`` also the reference's log-probabilities (chosen, rejected)."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    reference: tuple[float, float] | None = None


@dataclass
class Skipped:
    """Pairs left out of a split, by reason (logged, and recorded in results.json)."""

    identical: list[int] = field(default_factory=list)  # entry indices with chosen == rejected
    truncated: int = 0  # pairs cut to the context (kept)
    no_room: list[int] = field(default_factory=list)  # prompt fills the context: no response token left


def prompt_text(entry: dict[str, str], style: str) -> str:
    """The prompt of a pair: the entry in ``style`` up to and including the response header (chapter 7's
    ``format_prompt`` plus the style's response prefix), which both responses continue."""
    return format_prompt(entry, style) + get_prompt_style(style).response_prefix


def encode_pair(
    entry: dict[str, str], style: str, max_tokens: int, tokenizer: Any = None, end_id: int | None = None
) -> tuple[PreferencePair, bool]:
    """``entry`` as token ids, each full sequence cut to ``max_tokens`` (context + 1); and whether it was cut.

    The prompt and each response are encoded separately (text that spells ``<|endoftext|>`` is
    ordinary text here, never the padding id), so the prompt's tokens are the same in both sequences.
    ``end_id`` ends each response (None: ``end_of_item``'s, GPT-2's 50256 or a chat family's end of turn).
    """
    tokenizer = tokenizer or get_tokenizer()
    end_id = end_of_item(tokenizer, style)[0] if end_id is None else end_id
    prompt = encode_text(tokenizer, prompt_text(entry, style))
    responses = []
    cut = False
    for key in ("chosen", "rejected"):
        ids = [*encode_text(tokenizer, entry[key], continuation=True), end_id]
        room = max(max_tokens - len(prompt), 0)
        cut |= len(ids) > room
        responses.append(ids[:room])
    return PreferencePair(prompt[:max_tokens], *responses), cut


def collate_preferences(
    pairs: Sequence[PreferencePair], pad_id: int = EOT_ID, prompt_tail: int = 0, count_eot: bool = True
) -> tuple[torch.Tensor, ...]:
    """``b`` pairs → ``inputs`` and ``targets``, each (2b, T): rows ``[:b]`` chosen, ``[b:]`` rejected.

    Each sequence ``prompt + response`` (T + 1 tokens for the longest) gives inputs ``[:-1]`` and
    targets ``[1:]``, padded with ``pad_id`` (the id that ends each response); a target is -100 unless
    it counts: the response's tokens, its end-of-text unless ``count_eot=False``, and the prompt's last
    ``prompt_tail`` tokens (the book's DPO mask, ``dpo.logprob=mean``: ``book_prompt_tail``). Pairs that carry the
    reference's log-probabilities add a third tensor (2b,) in the same row order.
    """
    seqs = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    width = max(len(prompt) + len(resp) for prompt, resp in seqs) - 1
    inputs = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    targets = torch.full((len(seqs), width), IGNORE_INDEX, dtype=torch.long)
    for row, (prompt, resp) in enumerate(seqs):
        ids = torch.tensor(prompt + resp, dtype=torch.long)
        inputs[row, : len(ids) - 1] = ids[:-1]
        # Target j is token j + 1: the response's tokens are targets len(prompt) - 1 onwards.
        start = len(prompt) - 1 - min(prompt_tail, len(prompt) - 1)
        end = len(ids) - 1 - (1 if not count_eot and resp and resp[-1] == pad_id else 0)
        targets[row, start:end] = ids[start + 1 : end + 1]
    if pairs and all(p.reference is not None for p in pairs):
        reference = [p.reference[0] for p in pairs] + [p.reference[1] for p in pairs]  # type: ignore[index]
        return inputs, targets, torch.tensor(reference, dtype=torch.float32)
    return inputs, targets


def book_prompt_tail(style: str, tokenizer: Any = None) -> int:
    """The prompt tokens the book's DPO notebook counts: its mask starts 2 tokens after the instruction
    (``prompt_len + 2``), so all of the style's response header but its first 2 tokens (alpaca:
    ``\\n\\n``, ``###`` masked; `` Response``, ``:``, ``\\n`` counted)."""
    tokenizer = tokenizer or get_tokenizer()
    return max(len(encode_text(tokenizer, get_prompt_style(style).response_prefix, continuation=True)) - 2, 0)


@dataclass(frozen=True)
class PreferenceCollate:
    """``collate_preferences`` with the targets ``dpo.logprob`` counts (picklable for loader workers)."""

    prompt_tail: int = 0
    count_eot: bool = True
    end_id: int = EOT_ID  # ends each response and pads (``end_of_item``)

    def __call__(self, pairs: Sequence[PreferencePair]) -> tuple[torch.Tensor, ...]:
        return collate_preferences(pairs, self.end_id, prompt_tail=self.prompt_tail, count_eot=self.count_eot)


class PreferenceDataset(Dataset):
    def __init__(self, pairs: list[PreferencePair]) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, idx: int) -> PreferencePair:
        return self.pairs[idx]


class PreferenceDataModule(ShuffledDataModule):
    """Training and validation batches of preference pairs; the test split kept for responses.

    Training batches are shuffled with the module's own generator (its state travels in
    checkpoints, and the loader's place in the epoch too, so a resumed run sees the same batches)
    and drop the last incomplete batch, as the book's DPO loader does.
    """

    def __init__(
        self,
        path: str | Path,
        max_length: int,
        batch_size: int = 8,
        prompt_style: str = "alpaca",
        chosen_key: str = "chosen",
        rejected_key: str = "rejected",
        num_workers: int = 0,
        seed: int = 123,
        eval_max_batches: int | None = None,
        fields: dict[str, str] | None = None,
        train_ratio: float = 0.85,
        test_ratio: float = 0.10,
        shuffle_seed: int | None = None,
        logprob: str = "mean",
        tokenizer: Any = None,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.tokenizer = tokenizer or get_tokenizer()  # the model's (``run_tokenizer``); GPT-2's by default
        self.logprob = logprob  # dpo.logprob: which targets count (PreferenceCollate)
        self.fields = fields
        self.train_ratio, self.test_ratio, self.shuffle_seed = train_ratio, test_ratio, shuffle_seed
        self.eval_max_batches = eval_max_batches
        self.max_length = max_length
        self.batch_size = batch_size
        self.prompt_style = prompt_style
        self.chosen_key, self.rejected_key = chosen_key, rejected_key
        self.num_workers = num_workers
        self.generator = torch.Generator().manual_seed(seed)
        self.entries: dict[str, list[dict]] = {}
        self.datasets: dict[str, PreferenceDataset] = {}
        self.skipped: dict[str, Skipped] = {}
        save_data_identity(self, "preferences", {"data.path": self.path}, batch_size)

    def setup(self, stage: str | None = None) -> None:
        """Read, split and tokenize once (later calls do nothing); refuse an empty split."""
        if self.datasets:
            return
        get_prompt_style(self.prompt_style)  # an unknown style fails here, before any model is built
        tokenizer = self.tokenizer
        entries = read_preference_entries(self.path, self.chosen_key, self.rejected_key, self.fields)
        # Chapter 7's split rule (and its optional seeded shuffle), over (index in the file, entry).
        parts = split_entries(list(enumerate(entries)), self.train_ratio, self.test_ratio, self.shuffle_seed)
        for split in SPLITS:
            kept_entries, pairs, skipped = [], [], Skipped()
            for index, entry in parts[split]:
                if entry["chosen"] == entry["rejected"]:
                    skipped.identical.append(index)
                    continue
                pair, cut = encode_pair(entry, self.prompt_style, self.max_length + 1, tokenizer, self.end_id)
                if len(pair.chosen) == 0 or len(pair.rejected) == 0:
                    skipped.no_room.append(index)
                    continue
                skipped.truncated += cut
                kept_entries.append(entry)
                pairs.append(pair)
            self.entries[split], self.skipped[split] = kept_entries, skipped
            self.datasets[split] = PreferenceDataset(pairs)
            self._warn(split, skipped)
        for split in ("train", "val"):
            if not self.datasets[split]:
                skipped = self.skipped[split]
                if parts[split] and len(skipped.no_room) >= len(skipped.identical):
                    raise PreferenceDataError(
                        f"data.path={self.path}: none of the {len(parts[split])} {split} pair(s) fits "
                        f"data.max_length={self.max_length} tokens with room for a response (the prompt alone "
                        f"fills it in {len(skipped.no_room)}): raise data.max_length (null: the model's context "
                        "length)"
                    )
                raise PreferenceDataError(
                    f"data.path={self.path}: the {split} split has no usable pairs ({len(entries)} entries, "
                    f"data.train_ratio={self.train_ratio}, data.test_ratio={self.test_ratio}, the rest validates; "
                    "identical or prompt-only pairs are left out): give more entries"
                )
        if len(self.datasets["train"]) < self.batch_size:
            raise PreferenceDataError(
                f"data.batch_size={self.batch_size} is larger than the {len(self.datasets['train'])} training pairs: "
                "every batch would be dropped; lower data.batch_size"
            )

    def _warn(self, split: str, skipped: Skipped) -> None:
        if skipped.identical:
            shown = ", ".join(map(str, skipped.identical[:10])) + (", ..." if len(skipped.identical) > 10 else "")
            log.warning(
                "data=preferences: %d %s pair(s) have chosen == rejected and are left out (entries %s)",
                len(skipped.identical),
                split,
                shown,
            )
        if skipped.no_room:
            log.warning(
                "data=preferences: %d %s pair(s) have prompts that fill the context (%d tokens) and are left out",
                len(skipped.no_room),
                split,
                self.max_length,
            )
        if skipped.truncated:
            every = skipped.truncated >= len(self.datasets[split])
            log.warning(
                "data=preferences: %s %s pair(s) are cut to the context of %d tokens (kept, their ends cut off)",
                f"all {skipped.truncated}" if every else str(skipped.truncated),
                split,
                self.max_length,
            )

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        assert self.datasets, "call setup() first"
        return self.split_loader(self.datasets[split], shuffle, shuffle, self.collate)

    @property
    def collate(self) -> PreferenceCollate:
        """The batches' collate: the targets ``dpo.logprob`` counts."""
        if self.logprob == "mean":  # the book's targets (book_prompt_tail)
            tail = book_prompt_tail(self.prompt_style, self.tokenizer)
            return PreferenceCollate(tail, count_eot=False, end_id=self.end_id)
        return PreferenceCollate(end_id=self.end_id)

    @functools.cached_property
    def end_id(self) -> int:
        """The id that ends each response and pads: GPT-2's 50256, a chat family's end of turn."""
        return end_of_item(self.tokenizer, self.prompt_style)[0]

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def eval_dataloader(self, split: str) -> DataLoader | BoundedLoader:
        """The pairs of ``split`` in order, the first ``eval_max_batches`` batches (None: all): the initial
        and final metrics."""
        loader = self._loader(split, shuffle=False)
        return loader if self.eval_max_batches is None else BoundedLoader(loader, self.eval_max_batches)

    def split_sizes(self) -> dict[str, Any]:
        """results.json fields: pairs per split and those left out."""
        return {
            "split_sizes": {s: len(self.datasets[s]) for s in SPLITS},
            # Left out of training: identical responses, prompts that fill the context.
            "skipped_pairs": {
                s: {"identical": len(k.identical), "no_room": len(k.no_room)} for s, k in self.skipped.items()
            },
            # Kept, but cut to the context.
            "truncated_pairs": {s: k.truncated for s, k in self.skipped.items()},
        }

    def describe(self) -> str:
        sizes = ", ".join(f"{len(self.datasets[s])} {s}" for s in SPLITS)
        return f"Data {self.path}: preference pairs {sizes} (prompt style {self.prompt_style})"

    def iter_test_entries(self) -> Iterator[dict]:
        yield from self.entries.get("test", [])

    @classmethod
    def from_config(cls, cfg: Any, context_length: int) -> PreferenceDataModule:
        d = cfg.data
        if not d.path:
            raise PreferenceDataError(
                "data=preferences needs a file of preference entries: add data.path=/path/to/pairs.json "
                "(JSON list or JSONL with instruction, input, chosen, rejected)"
            )
        max_length = min(context_length, d.max_length) if d.max_length else context_length
        return cls(
            path=input_path(cfg, d.path),
            max_length=max_length,
            batch_size=d.batch_size,
            prompt_style=carried_prompt_style(d.prompt_style, input_path(cfg, cfg.init_from)),
            chosen_key=d.chosen_key or "chosen",
            rejected_key=d.rejected_key or "rejected",
            num_workers=d.num_workers or 0,
            seed=cfg.seed,
            eval_max_batches=d.eval_max_batches,
            fields=dict(d.fields) if d.fields else None,
            train_ratio=d.train_ratio,
            test_ratio=d.test_ratio if d.test_ratio is not None else 0.10,
            shuffle_seed=cfg.seed if d.shuffle else None,
            logprob=cfg.dpo.logprob if cfg.get("dpo") else "mean",
            tokenizer=run_tokenizer(cfg),
        )
