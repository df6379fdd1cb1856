"""A corpus tokenized once (``task=prepare``): documents in, litdata token chunks and ``meta.json`` out.

Each source file is one document, read as UTF-8; its tokens are ``encode_ordinary(text)`` (text that
looks like ``<|endoftext|>`` stays ordinary text) followed by one ``<|endoftext|>`` — or, with a
family's tokenizer (``init_from``: ``corpus_sources.corpus_tokenizer``), that tokenizer's ids and its
end-of-sequence id, stored as uint32 when its ids do not fit 16 bits. Files that are
empty or not UTF-8 are skipped and listed. ``val_fraction`` of the documents (at least one, chosen
from ``seed``) form the validation split; a single document gives its last ``val_fraction`` of
tokens instead. Worker processes tokenize one file at a time and litdata's ``optimize`` writes the
token chunks, so memory does not grow with the corpus. ``meta.json`` is written last, atomically:
a directory without it holds no (complete) corpus.

Layout of ``data.dir``::

    train/   litdata chunks (uint16 token ids; uint32 for a vocabulary beyond 65,536) + index.json
    val/     the same for the validation split
    meta.json
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# litdata asks PyPI for a newer version of itself unless told not to: gpt_lab never uses the network.
os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")

from gpt_lab.data.corpus_sources import (
    META_FILE,
    SPLITS,
    CorpusError,
    CorpusTokenizer,
    choose_val_documents,
    corpus_tokenizer,
    find_source_files,
    is_url,
    scan_sources,
    source_stats,
    sources_fingerprint,
)
from gpt_lab.data.corpus_writer import write_split
from gpt_lab.storage import DISK_FULL_ERRNOS, StorageError, write_text_atomic

log = logging.getLogger(__name__)
logging.getLogger("litdata").setLevel(logging.WARNING)  # its INFO lines (cache sizes) are not for our users

# Written first by a prepare, removed last: with it (and no meta.json) train/ and val/ are an interrupted
# prepare's leftovers, which the next prepare may remove; without it they are someone else's.
IN_PROGRESS_FILE = ".prepare-in-progress"


def usable_cores() -> int:
    """The CPU cores this process may run on (the default of ``data.num_workers``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def read_meta(data_dir: str | Path) -> dict[str, Any] | None:
    """``data.dir/meta.json`` (a local path or a URL fsspec opens), or None when there is none."""
    location = str(data_dir).rstrip("/") + "/" + META_FILE
    if is_url(location):
        import fsspec

        try:
            with fsspec.open(location, "r") as f:
                return json.load(f)
        except FileNotFoundError:
            return None
    path = Path(location)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CorpusError(
            f"data.dir={data_dir}: {path} is not valid JSON; prepare the corpus again with data.overwrite=true"
        ) from None


def write_meta(data_dir: Path, meta: dict[str, Any]) -> None:
    """``meta.json`` complete or not at all: written beside, then renamed over (a full disk: ``StorageError``)."""
    write_text_atomic(data_dir / META_FILE, json.dumps(meta, indent=2) + "\n")


def _not_writable(key: str, data_dir: Path, err: OSError) -> Exception:
    if err.errno in DISK_FULL_ERRNOS:
        return StorageError(
            f"task=prepare could not write {key}={data_dir}: the disk is full, or a quota or file-size limit was "
            f"reached ({err.strerror}); free some space there, or choose a {key} on a disk with room"
        )
    return CorpusError(
        f"{key}={data_dir} is not writable ({err.strerror}: {err.filename}); choose a directory you can write to"
    )


@contextlib.contextmanager
def directory_lock(data_dir: Path, key: str = "data.dir") -> Iterator[None]:
    """Hold an exclusive advisory lock (``flock``) on the directory ``data_dir`` itself; refuse when taken.

    The operating system releases it when the holder ends in any way (SIGKILL included): a lock
    left by a dead prepare never blocks the next one, and two prepares into one directory cannot
    both run. Where ``flock`` does not exist (Windows) there is no lock.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    fd = os.open(data_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            marker = data_dir / IN_PROGRESS_FILE
            holder = marker.read_text(errors="replace").strip() if marker.is_file() else "it holds the lock"
            raise CorpusError(
                f"{key}={data_dir} is being written by another task=prepare right now ({holder}); "
                f"wait for it to end, or choose another {key}"
            ) from None
        yield
    finally:
        os.close(fd)  # releases the lock


def _claim_directory(data_dir: Path, overwrite: bool, key: str = "data.dir") -> None:
    """Make ``data_dir`` (locked by this process) ours to write: refuse what a prepare did not write.

    Without ``overwrite``, the directory may hold only what an interrupted prepare left: train/,
    val/ and a temporary meta.json *beside the in-progress marker that prepare wrote first*. A
    train/ or val/ without that marker is someone else's data and is never removed; another
    complete corpus (meta.json) is replaced only with ``overwrite``.
    """
    marker = data_dir / IN_PROGRESS_FILE
    try:
        entries = {p.name for p in data_dir.iterdir()}
        others = entries
        if IN_PROGRESS_FILE in entries:  # an interrupted prepare's directory: what it wrote may go
            leftovers = {*SPLITS, IN_PROGRESS_FILE}
            others = {n for n in entries if n not in leftovers and not n.startswith(f".{META_FILE}.")}
        if others and not overwrite:
            what = "another prepared corpus (its meta.json lists other sources or settings)"
            if META_FILE not in others:
                what = f"other files ({', '.join(sorted(others)[:5])}) that task=prepare did not write"
            raise CorpusError(
                f"{key}={data_dir} already holds {what}: choose an empty {key}, or add data.overwrite=true "
                f"to replace {META_FILE}, train/ and val/ in it"
            )
        # The marker first: from here on train/ and val/ are this prepare's (and the next one's to clean).
        marker.write_text(
            f"task=prepare (pid {os.getpid()} on {socket.gethostname()}) is writing this directory; "
            f"without {META_FILE} it holds no corpus\n"
        )
        (data_dir / META_FILE).unlink(missing_ok=True)  # from here on the directory holds no complete corpus
        for split in SPLITS:
            shutil.rmtree(data_dir / split, ignore_errors=True)
    except OSError as err:  # no permission, a file in the way, a read-only file system, a full disk
        raise _not_writable(key, data_dir, err) from None


def _changed_sources(before: list[tuple[str, int, int]], files: list[Path]) -> list[str]:
    """The source files whose size or modification time differ from ``before`` (or that are gone)."""
    return [old[0] for old, new in zip(before, source_stats(files), strict=True) if old != new]


def prepare_corpus(
    source: str,
    data_dir: str | Path,
    root: str | Path,
    val_fraction: float,
    seed: int,
    num_workers: int | None = None,
    overwrite: bool = False,
    tokenizer: CorpusTokenizer | None = None,
) -> dict[str, Any]:
    """Tokenize ``source`` into ``data_dir`` (see the module's docstring) with ``tokenizer`` (None: GPT-2's);
    return ``meta.json``'s content plus ``"prepared": False`` when the same sources were already prepared
    there with the same settings and tokenizer (nothing is done)."""
    if is_url(str(data_dir)):
        raise CorpusError(
            f"data.dir={data_dir}: task=prepare writes a local directory; prepare locally, copy it to the "
            "bucket (e.g. aws s3 sync), then train with data.dir=<the bucket URL>"
        )
    data_dir = Path(data_dir).resolve()
    # A data.dir inside data.source is output, not input (its chunks would change the sources).
    files = [p for p in find_source_files(source, root) if data_dir not in p.parents]
    if not files:
        raise CorpusError(f"data.source={source} matches only files inside data.dir={data_dir}: give other sources")
    tokenizer = tokenizer or corpus_tokenizer()
    settings = {"val_fraction": val_fraction, "seed": seed, **tokenizer.identity}
    stats = source_stats(files)
    fingerprint = sources_fingerprint(stats)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _not_writable("data.dir", data_dir, err) from None
    with directory_lock(data_dir):
        existing = read_meta(data_dir)
        same = existing is not None and existing.get("sources", {}).get("fingerprint") == fingerprint
        if same and not overwrite and all(existing.get(k) == v for k, v in settings.items()):
            log.info("%s already holds these sources, prepared: nothing to do", data_dir / META_FILE)
            (data_dir / IN_PROGRESS_FILE).unlink(missing_ok=True)  # a prepare killed before it removed anything
            return {**existing, "prepared": False}
        _claim_directory(data_dir, overwrite)
        meta = _prepare_locked(source, data_dir, files, stats, val_fraction, seed, num_workers, tokenizer)
        meta.update(settings)
        meta["sources"]["fingerprint"] = fingerprint
        write_meta(data_dir, meta)  # last: from now on the directory holds a complete corpus
        (data_dir / IN_PROGRESS_FILE).unlink(missing_ok=True)
    return {**meta, "prepared": True}


def _prepare_locked(
    source: str,
    data_dir: Path,
    files: list[Path],
    stats: list[tuple[str, int, int]],
    val_fraction: float,
    seed: int,
    num_workers: int | None,
    tokenizer: CorpusTokenizer,
) -> dict[str, Any]:
    """Scan, split and tokenize into ``data_dir`` (claimed and locked); return meta.json's content."""
    started = time.perf_counter()
    scan = scan_sources(files)
    if not scan.documents:
        (data_dir / IN_PROGRESS_FILE).unlink(missing_ok=True)
        raise CorpusError(
            f"data.source={source} has no usable document: its {len(files)} file(s) are all empty or not UTF-8 "
            f"(e.g. {scan.skipped[0]['path']}: {scan.skipped[0]['reason']})"
        )
    workers = num_workers or usable_cores()
    docs = [str(p) for p in scan.documents]
    if len(docs) == 1:
        split_rule = "last tokens of the single document"
        plan = {"train": ([docs[0]], "head"), "val": ([docs[0]], "tail")}
        documents = {"train": 1, "val": 1}
    else:
        split_rule = "documents"
        val_idx = set(choose_val_documents(len(docs), val_fraction, seed))
        plan = {
            "train": ([d for i, d in enumerate(docs) if i not in val_idx], "all"),
            "val": ([d for i, d in enumerate(docs) if i in val_idx], "all"),
        }
        documents = {split: len(plan[split][0]) for split in SPLITS}
    log.info(
        "Tokenizing %d documents (%.1f MB) with %d processes into %s", len(docs), scan.n_bytes / 1e6, workers, data_dir
    )
    # Built once here (GPT-2's is cached, a family's travels with the workers' function): forked workers
    # inherit it instead of each building its own. GPT-2's path stays the default (tokenizer None).
    family = tokenizer if tokenizer.source is not None else None
    log.info("Tokenizer: %s", tokenizer.describe())
    tokens, unreadable = {}, 0
    for split in SPLITS:
        inputs, part = plan[split]
        tokens[split], lost = write_split(
            inputs, data_dir / split, workers, part, val_fraction, desc=f"tokenizing {split}", tokenizer=family
        )
        unreadable += lost
    changed = _changed_sources(stats, files)
    if changed or unreadable:
        shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
        raise CorpusError(
            f"data.source={source} changed while task=prepare read it ({shown or f'{unreadable} unreadable file(s)'})"
            f": the chunks may mix old and new text, so no {META_FILE} was written; run task=prepare again once "
            "the sources stop changing (it replaces what this one wrote)"
        )
    return {
        **tokenizer.identity,  # tokenizer, (tokenizer_sha256,) eot_id, vocab_size, dtype
        **({"tokenizer_source": tokenizer.source} if tokenizer.source else {}),
        "documents": documents,
        "tokens": tokens,
        "skipped": scan.skipped,
        "split": split_rule,
        "workers": workers,
        "sources": {"source": str(source), "files": len(files), "bytes": scan.n_bytes},
        "prepare_seconds": time.perf_counter() - started,
    }
