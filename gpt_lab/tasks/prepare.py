"""The prepare task: tokenize ``data.source`` once into ``data.dir`` for ``data=corpus`` training.

    python scripts/run.py task=prepare data=corpus data.source=<file|dir|glob> data.dir=<dir> [init_from=<family dir>]

With ``init_from`` a Llama 3 / Qwen3 / Gemma 3 directory (or a run trained from one) the documents are
tokenized with its ``tokenizer.json`` (meta.json records which); GPT-2's tokenizer otherwise.

Writes ``data.dir/train/``, ``data.dir/val/`` (litdata token chunks) and, last, ``data.dir/meta.json``
(see gpt_lab/data/corpus_prepare.py, corpus_sources.py and corpus_writer.py). Preparing the same sources again
does nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig

from gpt_lab.config import input_path
from gpt_lab.data.corpus_prepare import prepare_corpus
from gpt_lab.data.corpus_sources import CorpusError, corpus_tokenizer, is_url

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Prepare the corpus (``cfg`` validated); returns the results.json fields."""
    if cfg.data.name != "corpus":
        raise CorpusError(f"task=prepare needs data=corpus (got data.name={cfg.data.name}): add data=corpus")
    for key in ("source", "dir"):
        if not cfg.data[key]:
            raise CorpusError(
                f"task=prepare needs data.{key}: e.g. task=prepare data=corpus data.source=books/ data.dir=data/books"
            )
    init_from = input_path(cfg, cfg.get("init_from"))
    if init_from is not None and not init_from.exists():
        raise CorpusError(
            f"init_from={cfg.init_from} does not exist ({init_from}): task=prepare reads the tokenizer.json of a "
            "Llama 3 / Qwen3 / Gemma 3 directory (or of a run trained from one) there; leave init_from out for GPT-2's"
        )
    data_dir = cfg.data.dir if is_url(cfg.data.dir) else str(input_path(cfg, cfg.data.dir))
    meta = prepare_corpus(
        source=cfg.data.source,
        data_dir=data_dir,
        root=cfg.paths.root_dir,
        val_fraction=cfg.data.val_fraction,
        seed=cfg.seed,
        num_workers=cfg.data.num_workers,
        overwrite=cfg.data.overwrite,
        tokenizer=corpus_tokenizer(init_from),
    )
    docs, tokens = meta["documents"], meta["tokens"]
    log.info(
        "%s %s: documents %d train / %d val, tokens %s train / %s val, %d file(s) skipped",
        "Prepared" if meta["prepared"] else "Already prepared",
        data_dir,
        docs["train"],
        docs["val"],
        f"{tokens['train']:,}",
        f"{tokens['val']:,}",
        len(meta["skipped"]),
    )
    return {
        "data_dir": data_dir,
        "prepared": meta["prepared"],
        "documents": docs,
        "tokens": tokens,
        "skipped": meta["skipped"],
        "tokenizer": meta["tokenizer"],
        "dtype": meta["dtype"],
        "prepare_seconds": meta["prepare_seconds"] if meta["prepared"] else 0.0,
    }
