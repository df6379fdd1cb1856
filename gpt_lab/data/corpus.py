"""``data=corpus``: windows streamed from a corpus that ``task=prepare`` wrote (gpt_lab/data/corpus_prepare.py).

A window is ``context_length + 1`` consecutive tokens of one litdata chunk (litdata's
``TokensLoader`` cuts each chunk into such blocks; the last partial block of a chunk is not used);
its inputs are the first ``context_length`` tokens and its targets the same shifted by one, as the
book's dataset. Training windows are shuffled with ``seed`` and served by litdata's
``StreamingDataLoader``, whose position Lightning keeps in its checkpoints (a run resumed mid-epoch
continues with the same batches). Under DDP each rank reads different windows.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from gpt_lab.config import input_path
from gpt_lab.data.corpus_prepare import read_meta
from gpt_lab.data.corpus_sources import META_FILE, SPLITS, TOKENIZER_NAME, CorpusError, corpus_tokenizer, is_url
from gpt_lab.data.text import EvaluationWindows
from gpt_lab.tokenizer import ENDOFTEXT_ID, N_VOCAB

log = logging.getLogger(__name__)

INDEX_FILE = "index.json"  # litdata's list of a split's chunks (file name, bytes, tokens)


def shift_windows(blocks: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate blocks of ``context_length + 1`` tokens into (inputs, targets), each (batch, context_length)."""
    windows = torch.from_numpy(np.stack(blocks).astype(np.int64))  # litdata gives the stored uint16/32 arrays
    return windows[:, :-1], windows[:, 1:]


def split_chunks(data_dir: str, split: str) -> list[dict[str, Any]]:
    """The chunks of ``split`` as litdata's index.json lists them; each local chunk is checked to be whole."""
    split_dir = f"{str(data_dir).rstrip('/')}/{split}"
    if is_url(split_dir):
        import fsspec

        with fsspec.open(f"{split_dir}/{INDEX_FILE}", "r") as f:
            return json.load(f)["chunks"]
    index = Path(split_dir, INDEX_FILE)
    if not index.is_file():
        raise CorpusError(f"data.dir={data_dir}: {index} is missing: the corpus is damaged; run task=prepare again")
    chunks = json.loads(index.read_text(encoding="utf-8"))["chunks"]
    for chunk in chunks:
        path = Path(split_dir, chunk["filename"])
        size = path.stat().st_size if path.is_file() else None
        if size != chunk["chunk_bytes"]:
            found = "missing" if size is None else f"{size} bytes, index.json says {chunk['chunk_bytes']}"
            raise CorpusError(
                f"data.dir={data_dir}: chunk {path} is damaged ({found}); run task=prepare again with "
                "data.overwrite=true"
            )
    return chunks


# What a GPT-2 model's corpus must say in meta.json (corpus_sources.corpus_tokenizer gives a family's).
GPT2_IDENTITY = {"tokenizer": TOKENIZER_NAME, "eot_id": ENDOFTEXT_ID, "vocab_size": N_VOCAB}
IDENTITY_KEYS = ("tokenizer", "tokenizer_sha256", "eot_id", "bos_id")  # equal: the same ids for the same text


def _describe_tokenizer(identity: dict[str, Any], source: str | None = None) -> str:
    name = identity.get("tokenizer")
    text = f"tokenizer {name!r}" + (f" of {source}" if source else "")
    if identity.get("tokenizer_sha256"):
        text += f" (tokenizer.json sha256 {str(identity['tokenizer_sha256'])[:12]}…)"
    bos = identity.get("bos_id")
    return (
        f"{text}, "
        + (f"documents starting with {bos}, " if bos is not None else "")
        + (f"end of sequence {identity.get('eot_id')}")
    )


def check_corpus_tokenizer(
    data_dir: str, meta: dict[str, Any], expected: dict[str, Any], model: str = "gpt_lab's GPT-2 models"
) -> None:
    """A ``CorpusError`` naming both tokenizers when the corpus in ``data_dir`` (its ``meta``) was not
    prepared with the model's (``expected``: ``GPT2_IDENTITY`` or ``corpus_tokenizer(init_from).identity``)."""
    if all(meta.get(key) == expected.get(key) for key in IDENTITY_KEYS):
        return
    again = "task=prepare data=corpus data.source=<its sources> data.dir=<a new directory>"
    if expected.get("tokenizer") != TOKENIZER_NAME:
        again += " init_from=<the model's directory>"
    raise CorpusError(
        f"data.dir={data_dir} was prepared with {_describe_tokenizer(meta, meta.get('tokenizer_source'))}, but "
        f"{model} read{'s' if model.startswith('init_from') else ''} {_describe_tokenizer(expected)}: its token ids "
        f"mean other text to this model; prepare the corpus again with the model's tokenizer ({again})"
    )


def count_windows(chunks: list[dict[str, Any]], block_size: int) -> int:
    """Windows of ``block_size`` tokens litdata's TokensLoader cuts from these chunks (none spans two)."""
    return sum(chunk["dim"] // block_size for chunk in chunks)


def _missing_part(data_dir: str) -> str | None:
    """What of a local prepared ``data_dir`` is gone (None: all there, or not a local directory)."""
    if is_url(data_dir):
        return None
    for split in SPLITS:
        index = Path(data_dir, split, INDEX_FILE)
        if not index.is_file():
            return str(index)
        try:
            chunks = json.loads(index.read_text(encoding="utf-8"))["chunks"]
        except (OSError, ValueError, KeyError):
            return str(index)
        for chunk in chunks:
            if not Path(data_dir, split, chunk["filename"]).is_file():
                return str(Path(data_dir, split, chunk["filename"]))
    return None


@functools.cache
def _checked_loader_class() -> type:
    """litdata's ``StreamingDataLoader`` that says so when the corpus it reads is removed under it.

    litdata waits for a missing local chunk as for a download and then blames a download thread;
    this loader turns that into a ``CorpusError`` naming the missing file. It stays litdata's
    loader otherwise (Lightning saves and restores its position).
    """
    from litdata import StreamingDataLoader

    class CheckedStreamingDataLoader(StreamingDataLoader):
        def __init__(self, data_dir: str, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.gpt_lab_data_dir = data_dir

        def __iter__(self) -> Iterator[Any]:
            try:
                yield from super().__iter__()
            except Exception:
                missing = _missing_part(self.gpt_lab_data_dir)
                if missing is None:
                    raise
                raise CorpusError(
                    f"data.dir={self.gpt_lab_data_dir} changed while this run read it ({missing} is gone): a "
                    "prepared corpus must stay in place while it trains; put it back (or prepare it again with "
                    "task=prepare, the same sources and settings give the same chunks) and resume with ckpt_path=last"
                ) from None

    return CheckedStreamingDataLoader


class BoundedLoader:
    """At most ``max_batches`` batches of ``loader`` (all of them when None): evaluation over a sample."""

    def __init__(self, loader: Any, max_batches: int | None) -> None:
        self.loader = loader
        self.max_batches = max_batches

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self.loader), self.max_batches)

    def __len__(self) -> int:
        n = len(self.loader)
        return n if self.max_batches is None else min(n, self.max_batches)


class CorpusDataModule(L.LightningDataModule):
    """Training and validation windows of ``context_length + 1`` tokens from a prepared ``data_dir``.

    ``setup`` reads ``meta.json`` and the splits' chunk lists and fails with a ``CorpusError``
    naming the key (before any model is built) when the directory holds no complete corpus, was
    prepared with another tokenizer, or a split is shorter than one window (or one batch).
    ``eval_dataloader(split)`` gives the first ``eval_max_batches`` batches in order, for the initial
    and final losses and ``task=evaluate``.
    """

    def __init__(
        self,
        data_dir: str,
        context_length: int,
        batch_size: int,
        seed: int = 123,
        num_workers: int = 0,
        eval_max_batches: int | None = None,
        tokenizer_identity: dict[str, Any] | None = None,
        model_name: str = "gpt_lab's GPT-2 models",
        tokenizer: Any = None,
    ) -> None:
        super().__init__()
        # What meta.json must say of the tokenizer: the model's (GPT-2's unless init_from is a family's).
        self.tokenizer_identity = tokenizer_identity or GPT2_IDENTITY
        self.model_name = model_name
        self.tokenizer = tokenizer  # the model's, for its sample texts (None: GPT-2's, the module's default)
        self.data_dir = str(data_dir)
        self.context_length = context_length
        self.block_size = context_length + 1
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.eval_max_batches = eval_max_batches
        self.meta: dict[str, Any] | None = None
        self.windows: dict[str, int] = {}

    @property
    def path(self) -> str:
        return self.data_dir

    @property
    def n_train_tokens(self) -> int:
        return self.meta["tokens"]["train"] if self.meta else 0

    @property
    def n_val_tokens(self) -> int:
        return self.meta["tokens"]["val"] if self.meta else 0

    def setup(self, stage: str | None = None) -> None:
        """Check the prepared directory (cheap: meta.json, index.json, file sizes); later calls do nothing."""
        if self.meta is not None:
            return
        meta = read_meta(self.data_dir)
        if meta is None:
            raise CorpusError(
                f"data.dir={self.data_dir} holds no prepared corpus (no {META_FILE}): run task=prepare first, "
                f"e.g. python scripts/run.py task=prepare data=corpus data.source=<files> data.dir={self.data_dir}"
            )
        check_corpus_tokenizer(self.data_dir, meta, self.tokenizer_identity, self.model_name)
        for split in SPLITS:
            chunks = split_chunks(self.data_dir, split)
            tokens = sum(chunk["dim"] for chunk in chunks)
            if tokens != meta["tokens"][split]:
                raise CorpusError(
                    f"data.dir={self.data_dir}: the {split} chunks hold {tokens} tokens but {META_FILE} says "
                    f"{meta['tokens'][split]}: the corpus is damaged; run task=prepare again with data.overwrite=true"
                )
            self.windows[split] = count_windows(chunks, self.block_size)
            needed = self.batch_size if split == "train" else 1
            if self.windows[split] < needed:
                raise CorpusError(
                    f"the {split} split of data.dir={self.data_dir} has {self.windows[split]} window(s) of "
                    f"model.context_length+1={self.block_size} tokens ({tokens} tokens in {len(chunks)} chunk(s)) "
                    f"and needs {needed} (data.batch_size={self.batch_size} for training): prepare more text"
                    + (" or a larger data.val_fraction" if split == "val" else "")
                    + ", or use a smaller model.context_length"
                )
        self.meta = meta
        log.info(
            "Corpus %s: %s training tokens in %s windows, %s validation tokens in %s windows of %d",
            self.data_dir,
            f"{meta['tokens']['train']:,}",
            f"{self.windows['train']:,}",
            f"{meta['tokens']['val']:,}",
            f"{self.windows['val']:,}",
            self.block_size,
        )

    def split_sizes(self) -> dict[str, Any]:
        """What results.json records about the data: where it is and the size of each split."""
        assert self.meta is not None, "call setup() first"
        return {
            "data_dir": self.data_dir,
            "documents": self.meta["documents"],
            "tokens": self.meta["tokens"],
            "windows": dict(self.windows),
        }

    def _dataset(self, split: str, shuffle: bool) -> Any:
        from litdata import StreamingDataset, TokensLoader

        return StreamingDataset(
            input_dir=f"{self.data_dir.rstrip('/')}/{split}",
            item_loader=TokensLoader(block_size=self.block_size),
            shuffle=shuffle,
            seed=self.seed,
            # A full permutation of each chunk's windows (litdata's default shuffles blocks of 256
            # neighbouring windows: consecutive batches would come from the same few documents).
            item_shuffle_window="full" if shuffle else None,
        )

    def _loader(self, split: str, shuffle: bool, drop_last: bool) -> Any:
        return _checked_loader_class()(
            self.data_dir,
            self._dataset(split, shuffle),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            drop_last=drop_last,
            collate_fn=shift_windows,
            # Each iterator draws its base seed from this generator, not from torch's global one, which
            # the dropout masks draw from: a resumed run's masks are then the uninterrupted run's
            # (issue 21 case 10; the window order is litdata's own, from ``seed`` and the epoch).
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> Any:
        """Shuffled full batches; stateful (Lightning saves and restores its position in checkpoints)."""
        assert self.meta is not None, "call setup() first"
        return self._loader("train", shuffle=True, drop_last=True)

    def val_dataloader(self) -> Any:
        """The validation windows in order (``trainer.limit_val_batches`` bounds how many are used)."""
        assert self.meta is not None, "call setup() first"
        return self._loader("val", shuffle=False, drop_last=False)

    def eval_dataloader(self, split: str) -> BoundedLoader:
        """The first ``eval_max_batches`` batches of ``split`` in order (None: the whole split)."""
        assert self.meta is not None, "call setup() first"
        return BoundedLoader(self._loader(split, shuffle=False, drop_last=False), self.eval_max_batches)

    @classmethod
    def evaluation_data(cls, cfg: Any) -> CorpusEvaluation:
        """``task=evaluate``'s data: the prepared directory checked before the model is built."""
        return CorpusEvaluation(cfg)

    @classmethod
    def from_config(cls, cfg: Any, context_length: int) -> CorpusDataModule:
        """The ``data=corpus`` module of a run: ``data.dir`` resolved against ``paths.root_dir`` (a URL stays)."""
        if not cfg.data.dir:
            raise CorpusError(
                f"task={cfg.task.name} data=corpus needs data.dir: the directory task=prepare wrote, "
                "e.g. data.dir=data/books"
            )
        data_dir = cfg.data.dir if is_url(cfg.data.dir) else str(input_path(cfg, cfg.data.dir))
        tokenizer = corpus_tokenizer(input_path(cfg, cfg.get("init_from")))
        family = tokenizer.source is not None
        return cls(
            data_dir,
            context_length=context_length,
            batch_size=cfg.data.batch_size,
            seed=cfg.seed,
            num_workers=cfg.data.loader_workers,
            eval_max_batches=cfg.data.eval_max_batches,
            tokenizer_identity=tokenizer.identity,
            model_name=f"init_from={cfg.init_from}" if family else "gpt_lab's GPT-2 models",
            tokenizer=tokenizer.encoding if family else None,
        )


class CorpusEvaluation:
    """``task=evaluate data=corpus``: the first ``data.eval_max_batches`` batches of the val split."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        # The directory is checked before the model is read; init_from's weights fix the context length,
        # so with them the windows are counted once the model is built.
        checked = CorpusDataModule.from_config(cfg, 1 if cfg.init_from else cfg.model.context_length)
        checked.setup("validate")
        self.tokenizer = checked.tokenizer  # the model's, for the sample text (None: GPT-2's)

    def windows(self, context_length: int) -> EvaluationWindows:
        corpus = CorpusDataModule.from_config(self.cfg, context_length)
        corpus.setup("validate")
        batches = corpus.eval_dataloader("val")
        n_windows = min(corpus.windows["val"], len(batches) * corpus.batch_size)
        data = self.cfg.data
        return EvaluationWindows(
            batches,
            windows=n_windows,
            tokens=n_windows * context_length,
            fields=corpus.split_sizes(),
            hparams={"dir": data.dir, "batch_size": data.batch_size, "eval_max_batches": data.eval_max_batches},
            description=f"{corpus.data_dir}: {n_windows:,} validation windows of {context_length}",
        )
