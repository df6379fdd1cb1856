"""Chapter 5's data: the book's sliding-window dataset over one UTF-8 text file.

The text is split by characters (the first ``train_ratio`` of it trains, the rest validates),
each split is tokenized once, and cut into windows of ``max_length`` tokens ``stride`` apart;
a window's targets are its inputs shifted by one token, as in the book's ``GPTDatasetV1``.
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import lightning as L
import tiktoken
import torch
from torch.utils.data import DataLoader, Dataset

from gpt_lab.config import input_path
from gpt_lab.errors import UserError
from gpt_lab.hf_tokenizer import tokenizer_for
from gpt_lab.tokenizer import get_tokenizer, text_to_token_ids

# ``data.path=gpt_lab:the-verdict.txt`` names a text shipped inside the package (gpt_lab/texts/).
PACKAGED_PREFIX = "gpt_lab:"


class DataError(UserError):
    """``data.*`` does not give a usable training text (missing file, too short, batch too big)."""


def run_tokenizer(cfg: Any) -> Any:
    """The tokenizer of a run's model, which its data is tokenized with: the ``tokenizer.json`` of
    ``init_from`` when that is a Llama 3 / Qwen3 / Gemma 3 directory or a run trained from one
    (gpt_lab.hf_tokenizer), GPT-2's tiktoken encoding otherwise (the book's)."""
    return tokenizer_for(input_path(cfg, cfg.get("init_from")))


def packaged_text(path: str | Path | None) -> Path | None:
    """The file of ``data.path=gpt_lab:<name>``, a text shipped with gpt_lab (chapter 5's
    ``the-verdict.txt``); None for any other path (those resolve where the user ran from)."""
    text = str(path or "")
    if not text.startswith(PACKAGED_PREFIX):
        return None
    name = text.removeprefix(PACKAGED_PREFIX)
    shipped = resources.files("gpt_lab") / "texts"
    available = sorted(p.name for p in shipped.iterdir() if p.name.endswith(".txt"))
    if name not in available:
        raise DataError(f"data.path={text}: gpt_lab ships no text {name!r}; it has {', '.join(available)}")
    return Path(str(shipped / name))


class GPTDatasetV1(Dataset):
    """The book's dataset: windows ``ids[i : i + max_length]`` → ``ids[i + 1 : i + max_length + 1]``.

    ``i`` runs over ``range(0, len(ids) - max_length, stride)``, so a text of ``n`` tokens gives
    ``ceil((n - max_length) / stride)`` windows and needs at least ``max_length + 1`` tokens.
    """

    def __init__(self, token_ids: list[int] | torch.Tensor, max_length: int, stride: int) -> None:
        ids = torch.as_tensor(token_ids, dtype=torch.long)
        starts = torch.arange(0, len(ids) - max_length, stride)
        offsets = torch.arange(max_length)
        self.input_ids = ids[starts[:, None] + offsets]  # (windows, max_length)
        self.target_ids = ids[starts[:, None] + offsets + 1]

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.input_ids[idx], self.target_ids[idx]


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose place in the epoch travels in Lightning checkpoints.

    Lightning saves ``state_dict()`` of a training loader that has one and hands it back to
    ``load_state_dict`` on resume. The state is the shuffling generator as it was when this
    epoch's iterator was made, plus the batches handed out since; the next iterator replays the
    same draws (the sampler's permutation and the loader's base seed) and skips the batches
    already trained on. A checkpoint taken after the epoch's last batch resumes at the next epoch.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._epoch_start_state: torch.Tensor | None = None
        self._batches_done = 0
        self._resume: dict[str, Any] | None = None
        self._next_epoch_state: torch.Tensor | None = None  # a resumed finished epoch: where the next one starts

    def __iter__(self) -> Iterator[Any]:
        skip = 0
        if self._resume is not None and self.generator is not None:
            if self._resume["batches_done"] < len(self):  # mid-epoch: replay this epoch's draws
                self.generator.set_state(self._resume["epoch_start_state"])
                skip = self._resume["batches_done"]
            else:  # the epoch was complete: go on from where its draws left the generator
                self._next_epoch_state = self._resume["generator_state"]
        if self._next_epoch_state is not None and self.generator is not None:
            # Until a batch is drawn: Lightning may make an iterator for the finished epoch first (a checkpoint
            # taken after its last batch's evaluation) and draw nothing from it; the next epoch starts here too.
            self.generator.set_state(self._next_epoch_state)
        self._resume = None
        self._epoch_start_state = self.generator.get_state() if self.generator is not None else None
        self._batches_done = 0
        return self._count(super().__iter__(), skip)

    def _count(self, batches: Iterator[Any], skip: int) -> Iterator[Any]:
        for _ in range(skip):  # loads and drops the batches (cheap for in-memory windows)
            next(batches)
        self._batches_done = skip
        for batch in batches:
            self._batches_done += 1
            self._next_epoch_state = None
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch_start_state": self._epoch_start_state,
            "generator_state": self.generator.get_state() if self.generator is not None else None,
            "batches_done": self._batches_done,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume = dict(state_dict)


def _own_generator() -> torch.Generator:
    """For loaders that do not shuffle: each iterator still draws a base seed, from the global
    generator unless the loader has its own, which would shift the dropout masks of training
    steps after each evaluation by whether an evaluation ran (a resumed run skips one)."""
    return torch.Generator().manual_seed(0)


def read_text(
    path: str | Path,
    key: str = "data.path",
    expected: str = "a UTF-8 text file, e.g. data.path=the-verdict.txt",
    error: type[DataError] | None = None,
    encoding: str = "utf-8",
) -> str:
    """The UTF-8 text at ``path``; an ``error`` (``DataError`` by default) naming ``key`` and the file
    when it cannot be read, and what to give instead (``expected``)."""
    error = error or DataError
    path = Path(path)
    if not path.is_file():
        problem = "is not a file" if path.exists() else "does not exist"
        raise error(f"{key}={path} {problem}; give {expected}")
    try:
        return path.read_text(encoding=encoding)
    except UnicodeDecodeError as err:
        raise error(f"{key}={path} is not UTF-8 text (byte {err.start}: {err.reason})") from None
    except OSError as err:
        raise error(f"{key}={path} cannot be read: {err.strerror or err}") from None


def write_run_splits(output_dir: Path, files: dict[str, str], inputs: dict[str, Path | None]) -> None:
    """Write a run's split files (name -> text) into ``output_dir``, never over a file the run did not write.

    A file already there with other content is the user's (their data kept in the run directory, or
    another file of that name): refused, naming it, before any split is written. One with the same
    content is this run's own (a resume) and is left untouched. ``inputs``: the data keys and their paths.
    """
    from gpt_lab.storage import other_files, write_texts_atomic

    paths = {output_dir / name: text for name, text in files.items()}
    taken = other_files(paths)
    if taken:
        named = []
        for path in taken:
            keys = [k for k, v in inputs.items() if v is not None and Path(v).resolve() == path.resolve()]
            named.append(f"{path.name} ({keys[0]}={path})" if keys else path.name)
        raise DataError(
            f"the run directory {output_dir} already holds {', '.join(named)}, which this run did not write and "
            f"would write its splits over ({', '.join(files)}); a run never writes over a file it did not create: "
            "keep your data files outside the run directory (move them, or aim hydra.run.dir at another directory)"
        )
    write_texts_atomic(paths)


def save_data_identity(
    module: L.LightningDataModule, kind: str, files: dict[str, Path | None], batch_size: int
) -> None:
    """Record in ``module``'s hyper-parameters (saved in every checkpoint) which files it reads and in
    batches of how many: ``gpt_lab.training.resume.check_resume_data`` refuses a resume on other ones."""
    given = {key: str(Path(path).resolve()) for key, path in files.items() if path is not None}
    module.save_hyperparameters({"data_kind": kind, "data_files": given, "data_batch_size": int(batch_size)})


def split_text(text: str, train_ratio: float) -> tuple[str, str]:
    """The book's split by characters: ``text[:int(train_ratio * len(text))]`` and the rest."""
    split_idx = int(train_ratio * len(text))
    return text[:split_idx], text[split_idx:]


class EvaluationWindows:
    """What ``task=evaluate`` reads, once the model's context length is known (one per data module):
    ``batches`` (``(inputs, targets)`` in order), how many ``windows`` and target ``tokens`` they
    hold, the results.json ``fields`` and TensorBoard ``hparams`` describing the data, a log line."""

    def __init__(
        self,
        batches: Any,
        windows: int,
        tokens: int,
        fields: dict[str, Any],
        hparams: dict[str, Any],
        description: str,
    ) -> None:
        self.batches, self.windows, self.tokens = batches, windows, tokens
        self.fields, self.hparams, self.description = fields, hparams, description


class TextEvaluation:
    """``task=evaluate data=text``: the book's windows over the whole of ``data.path`` (no split)."""

    def __init__(self, cfg: Any) -> None:
        if not cfg.data.path:
            raise DataError("task=evaluate needs a text file: add data.path=/path/to/text.txt")
        path = packaged_text(cfg.data.path) or input_path(cfg, cfg.data.path)
        assert path is not None
        self.path, self.cfg = path, cfg
        self.tokenizer = run_tokenizer(cfg)
        self.ids = torch.tensor(text_to_token_ids(read_text(path), self.tokenizer), dtype=torch.long)
        if len(self.ids) < 2:
            raise DataError(f"data.path={cfg.data.path} holds {len(self.ids)} token(s); evaluation needs at least 2")

    def windows(self, context_length: int) -> EvaluationWindows:
        # A text shorter than one context still gets one (shorter) window.
        max_length = min(context_length, len(self.ids) - 1)
        stride = self.cfg.data.stride or max_length
        windows = GPTDatasetV1(self.ids, max_length, stride)
        batches = DataLoader(windows, batch_size=self.cfg.data.batch_size, shuffle=False, drop_last=False)
        return EvaluationWindows(
            batches,
            windows=len(windows),
            tokens=windows.target_ids.numel(),
            fields={"data_path": str(self.path)},
            hparams={
                "path": self.cfg.data.path,
                "batch_size": self.cfg.data.batch_size,
                "stride": self.cfg.data.stride,
            },
            description=(
                f"{self.path}: {len(self.ids):,} tokens, {len(windows):,} windows of {max_length} (stride {stride})"
            ),
        )


class ShuffledDataModule(L.LightningDataModule):
    """A data module whose training order is drawn from ``self.generator``: its state travels in
    Lightning checkpoints, so a resumed run shuffles its next epochs as the uninterrupted run would
    (a mid-epoch checkpoint's loader state, restored later by Lightning, rewinds it further)."""

    generator: torch.Generator

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator_state": self.generator.get_state()}

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state_dict["generator_state"])

    def split_loader(self, dataset: Dataset, shuffle: bool, drop_last: bool, collate_fn: Any) -> DataLoader:
        """``dataset`` in batches of ``self.batch_size``: shuffled by ``self.generator`` and resumable
        mid-epoch (training), or in order with a generator of its own (drawing nothing from torch's)."""
        kind = ResumableDataLoader if shuffle else DataLoader
        return kind(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=self.num_workers,
            collate_fn=collate_fn,
            generator=self.generator if shuffle else _own_generator(),
        )


class TextDataModule(ShuffledDataModule):
    """Training and validation windows over the UTF-8 text at ``path``.

    ``max_length`` is the model's context length; ``stride`` defaults to it (non-overlapping
    windows, as chapter 5). Training batches are shuffled with the module's own generator (seeded
    with ``seed``; its state travels in Lightning checkpoints so a resumed run sees the same order)
    and drop the last incomplete batch; the training loader's position in the epoch travels in
    checkpoints too (``ResumableDataLoader``), so a run resumed mid-epoch sees the same batches.
    Validation batches keep their order and every window.
    """

    def __init__(
        self,
        path: str | Path,
        max_length: int,
        batch_size: int = 2,
        stride: int | None = None,
        train_ratio: float = 0.9,
        num_workers: int = 0,
        seed: int = 123,
        tokenizer: Any = None,
    ) -> None:
        super().__init__()
        self.tokenizer = tokenizer or get_tokenizer()  # the model's (``run_tokenizer``); GPT-2's by default
        if max_length < 1:
            raise DataError(f"context length {max_length} must be >= 1")
        if batch_size < 1:
            raise DataError(f"data.batch_size={batch_size} must be >= 1")
        if stride is not None and stride < 1:
            raise DataError(f"data.stride={stride} must be >= 1 (or null for the context length)")
        if not 0.0 < train_ratio < 1.0:
            raise DataError(f"data.train_ratio={train_ratio} must be in (0, 1)")
        self.path = Path(path)
        self.max_length = max_length
        self.batch_size = batch_size
        self.stride = stride or max_length
        self.train_ratio = train_ratio
        self.num_workers = num_workers
        self.seed = seed
        self.save_hyperparameters(
            {"path": str(path), "batch_size": batch_size, "stride": self.stride, "train_ratio": train_ratio}
        )
        self.generator = torch.Generator().manual_seed(seed)
        self.train_dataset: GPTDatasetV1 | None = None
        self.val_dataset: GPTDatasetV1 | None = None
        self.n_train_tokens = 0
        self.n_val_tokens = 0

    def setup(self, stage: str | None = None) -> None:
        """Read, split and tokenize the text once (later calls do nothing); check it is long enough."""
        if self.train_dataset is not None:
            return
        tokenizer: tiktoken.Encoding = self.tokenizer
        train_text, val_text = split_text(read_text(self.path), self.train_ratio)
        train_ids = text_to_token_ids(train_text, tokenizer)
        val_ids = text_to_token_ids(val_text, tokenizer)
        for name, ids, text in (("training", train_ids, train_text), ("validation", val_ids, val_text)):
            if len(ids) <= self.max_length:
                raise DataError(
                    f"{name} split of data.path={self.path} has {len(ids)} tokens ({len(text)} characters, "
                    f"data.train_ratio={self.train_ratio}); context_length={self.max_length} needs at least "
                    f"{self.max_length + 1}: use a longer text, give this split a larger share with "
                    "data.train_ratio, or use a smaller model.context_length"
                )
        train = GPTDatasetV1(train_ids, self.max_length, self.stride)
        if len(train) < self.batch_size:
            raise DataError(
                f"data.batch_size={self.batch_size} is larger than the {len(train)} training windows "
                f"({len(train_ids)} tokens, context_length={self.max_length}, stride={self.stride}): "
                "every batch would be dropped; lower data.batch_size or data.stride"
            )
        self.train_dataset = train
        self.val_dataset = GPTDatasetV1(val_ids, self.max_length, self.stride)
        self.n_train_tokens, self.n_val_tokens = len(train_ids), len(val_ids)

    def train_dataloader(self) -> DataLoader:
        assert self.train_dataset is not None, "call setup() first"
        # Resumable: a checkpoint taken mid-epoch continues with the same batches (exact resume).
        return self.split_loader(self.train_dataset, True, True, None)

    def val_dataloader(self) -> DataLoader:
        assert self.val_dataset is not None, "call setup() first"
        return self.split_loader(self.val_dataset, False, False, None)

    def eval_dataloader(self, split: str) -> DataLoader:
        """All windows of ``split`` ("train" or "val") in order, for loss evaluation (no shuffling)."""
        dataset = self.train_dataset if split == "train" else self.val_dataset
        assert dataset is not None, "call setup() first"
        return self.split_loader(dataset, False, False, None)

    @classmethod
    def from_config(cls, cfg: Any, context_length: int) -> TextDataModule:
        """The run's text module over ``data.path`` (relative to ``paths.root_dir``, where the user ran from)."""
        if not cfg.data.path:
            raise DataError(f"task={cfg.task.name} needs a text to train on: add data.path=/path/to/text.txt (UTF-8)")
        return cls(
            path=packaged_text(cfg.data.path) or input_path(cfg, cfg.data.path),
            max_length=context_length,
            batch_size=cfg.data.batch_size,
            stride=cfg.data.stride,
            train_ratio=cfg.data.train_ratio,
            num_workers=cfg.data.num_workers,
            seed=cfg.seed,
            tokenizer=run_tokenizer(cfg),
        )

    @classmethod
    def evaluation_data(cls, cfg: Any) -> TextEvaluation:
        """``task=evaluate``'s data: read and checked before the model is built."""
        return TextEvaluation(cfg)

    def describe(self) -> str:
        """One log line on what was read."""
        return (
            f"Data {self.path}: {self.n_train_tokens} training tokens in {len(self.train_dataset)} windows, "
            f"{self.n_val_tokens} validation tokens in {len(self.val_dataset)} windows"
        )
