"""A corpus tokenized once (``task=prepare``): documents in, litdata token chunks and ``meta.json`` out.

Each source file is one document, read as UTF-8; its tokens are ``encode_ordinary(text)`` (text that
looks like ``<|endoftext|>`` stays ordinary text) followed by one ``<|endoftext|>``. Files that are
empty or not UTF-8 are skipped and listed. ``val_fraction`` of the documents (at least one, chosen
from ``seed``) form the validation split; a single document gives its last ``val_fraction`` of
tokens instead. Worker processes tokenize one file at a time and litdata's ``optimize`` writes the
token chunks, so memory does not grow with the corpus. ``meta.json`` is written last, atomically:
a directory without it holds no (complete) corpus.

Layout of ``data.dir``::

    train/   litdata chunks (uint16 token ids) + index.json
    val/     the same for the validation split
    meta.json
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import json
import logging
import multiprocessing
import os
import random
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# litdata asks PyPI for a newer version of itself unless told not to: gpt_lab never uses the network.
os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")

from gpt_lab.errors import UserError
from gpt_lab.tokenizer import ENDOFTEXT_ID, N_VOCAB, get_tokenizer

log = logging.getLogger(__name__)
logging.getLogger("litdata").setLevel(logging.WARNING)  # its INFO lines (cache sizes) are not for our users

META_FILE = "meta.json"
SPLITS = ("train", "val")
TOKENIZER_NAME = "gpt2"
TOKEN_DTYPE = np.uint16  # GPT-2's 50,257 ids fit; half the disk of int32
# Left by a prepare while it runs: a directory holding only this and train/ val/ is an interrupted prepare's.
IN_PROGRESS_FILE = ".prepare-in-progress"
CHUNK_BYTES = 16 * 2**20  # litdata chunk size: a window never spans two chunks (each loses < one window);
# a worker holds one chunk while it fills, so this also bounds its memory
READ_BLOCK = 16 * 2**20  # the UTF-8 check reads files in blocks (a huge file is not held in memory)
GLOB_CHARS = "*?["
START_METHOD = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


class CorpusError(UserError):
    """``data.source`` / ``data.dir`` do not give a usable corpus."""


@dataclass
class SourceScan:
    """The documents of ``data.source``, checked: usable files (sorted) and the skipped ones with why."""

    documents: list[Path] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    n_bytes: int = 0  # of the usable documents


def is_url(location: str) -> bool:
    """``s3://bucket/x`` and the like: a location litdata reads, not a local path."""
    return "://" in location


def find_source_files(source: str, root: str | Path) -> list[Path]:
    """The files ``data.source`` names: a file, every file under a directory, or a glob (``**`` recurses).

    Relative sources resolve against ``root`` (the directory the user ran from). Sorted, so the
    documents' order (and the split drawn from ``seed``) does not depend on the file system.
    """
    pattern = os.path.join(str(root), os.path.expanduser(source))
    if any(c in source for c in GLOB_CHARS):
        files = [Path(p) for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
    elif os.path.isdir(pattern):
        files = [p for p in Path(pattern).rglob("*") if p.is_file()]
    elif os.path.isfile(pattern):
        files = [Path(pattern)]
    else:
        files = []
    if not files:
        raise CorpusError(
            f"data.source={source} matches no file ({pattern}): give a text file, a directory of text files "
            "or a glob such as 'books/**/*.txt' (relative to the directory you ran from)"
        )
    return sorted({p.resolve() for p in files})


def check_document(path: Path) -> str | None:
    """Why ``path`` cannot be a document (empty, not UTF-8, unreadable), or None when it can.

    Decodes block by block with an incremental decoder, so memory stays flat for any file size.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    try:
        with open(path, "rb") as f:
            while block := f.read(READ_BLOCK):
                try:
                    decoder.decode(block)
                except UnicodeDecodeError as err:
                    return f"not UTF-8 (byte {offset + err.start}: {err.reason})"
                offset += len(block)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as err:
        return f"not UTF-8 (truncated character at byte {offset + err.start})"
    except OSError as err:
        return f"unreadable ({err.strerror or err})"
    return "empty" if offset == 0 else None


def scan_sources(files: list[Path]) -> SourceScan:
    """Check every file once before any split is drawn (the split counts usable documents only)."""
    from tqdm import tqdm

    scan = SourceScan()
    with tqdm(files, desc="checking", unit="file", mininterval=0.5) as bar:
        for path in bar:
            problem = check_document(path)
            if problem is None:
                scan.documents.append(path)
                scan.n_bytes += path.stat().st_size
            else:
                scan.skipped.append({"path": str(path), "reason": problem})
    if scan.skipped:
        shown = "; ".join(f"{item['path']}: {item['reason']}" for item in scan.skipped[:3])
        more = f" and {len(scan.skipped) - 3} more" if len(scan.skipped) > 3 else ""
        log.info("Skipped %d file(s) (listed in meta.json): %s%s", len(scan.skipped), shown, more)
    return scan


def sources_fingerprint(files: list[Path]) -> str:
    """SHA-256 over every source file's path, size and modification time: equal means "same sources"."""
    digest = hashlib.sha256()
    for path in files:
        st = path.stat()
        digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def choose_val_documents(n_documents: int, val_fraction: float, seed: int) -> list[int]:
    """Indices (sorted) of the validation documents: ``round(val_fraction * n)``, at least one and
    leaving at least one for training; drawn with ``random.Random(seed)``. Empty for one document
    (that document's last tokens validate instead)."""
    if n_documents < 2:
        return []
    n_val = min(n_documents - 1, max(1, round(val_fraction * n_documents)))
    return sorted(random.Random(seed).sample(range(n_documents), n_val))


def split_single_document(tokens: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """One document's tokens → (training head, validation tail): the tail is its last ``val_fraction``
    (at least one token, and at least one left for training)."""
    n_val = min(len(tokens) - 1, max(1, round(val_fraction * len(tokens))))
    return tokens[: len(tokens) - n_val], tokens[len(tokens) - n_val :]


def document_tokens(path: str | Path) -> np.ndarray:
    """A document's token ids: ``encode_ordinary(text) + [<|endoftext|>]`` as uint16."""
    text = Path(path).read_bytes().decode("utf-8")  # as it is: no newline translation (\r\n stays)
    ids = get_tokenizer().encode_ordinary(text)
    ids.append(ENDOFTEXT_ID)
    return np.asarray(ids, dtype=TOKEN_DTYPE)


class TokenizeDocument:
    """litdata's ``fn``: a file path → its token array (run in litdata's worker processes).

    ``part`` is "all", or "head"/"tail" of a single document split by tokens. ``progress`` is a
    shared array (files, bytes, tokens) the main process reads for its progress bar.
    """

    def __init__(self, progress: Any, part: str = "all", val_fraction: float = 0.0) -> None:
        self.progress = progress
        self.part = part
        self.val_fraction = val_fraction

    def __call__(self, path: str) -> Iterator[np.ndarray]:
        tokens = document_tokens(path)
        if self.part != "all":
            head, tail = split_single_document(tokens, self.val_fraction)
            tokens = head if self.part == "head" else tail
        with self.progress.get_lock():
            self.progress[0] += 1
            self.progress[1] += os.path.getsize(path)
            self.progress[2] += len(tokens)
        yield tokens


def _watch_progress(progress: Any, total_files: int, total_bytes: int, desc: str, done: threading.Event) -> None:
    """Files done, MB/s and tokens/s of the workers, from the shared counters, every half second."""
    from tqdm import tqdm

    started = time.perf_counter()
    with tqdm(total=total_files, desc=desc, unit="file", mininterval=0.5) as bar:
        while True:
            finished = done.wait(0.5)
            files, n_bytes, tokens = list(progress)
            seconds = max(time.perf_counter() - started, 1e-9)
            bar.update(files - bar.n)
            bar.set_postfix_str(
                f"{n_bytes / 1e6:.1f}/{total_bytes / 1e6:.1f} MB, {n_bytes / 1e6 / seconds:.2f} MB/s, "
                f"{tokens / seconds:,.0f} tokens/s",
                refresh=True,
            )
            if finished:
                return


def write_split(
    inputs: list[str], output_dir: Path, num_workers: int, part: str = "all", val_fraction: float = 0.0, desc: str = ""
) -> int:
    """Tokenize ``inputs`` (file paths) in ``num_workers`` processes into litdata chunks; return the tokens."""
    from litdata import TokensLoader, optimize

    # Forked workers start in milliseconds (spawned ones import torch again, seconds each); the shared
    # counters must come from the same start method.
    progress = multiprocessing.get_context(START_METHOD).Array("q", 3)
    total_bytes = sum(os.path.getsize(p) for p in inputs)
    done = threading.Event()
    watcher = threading.Thread(
        target=_watch_progress, args=(progress, len(inputs), total_bytes, desc, done), daemon=True
    )
    watcher.start()
    try:
        optimize(
            fn=TokenizeDocument(progress, part, val_fraction),
            inputs=inputs,
            output_dir=str(output_dir),
            chunk_bytes=CHUNK_BYTES,
            item_loader=TokensLoader(),
            num_workers=max(1, min(num_workers, len(inputs))),
            start_method=START_METHOD,
            reorder_files=False,  # each worker writes its documents in source order
            verbose=False,
        )
    finally:
        done.set()
        watcher.join()
    return int(progress[2])


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
    """``meta.json`` complete or not at all: written beside, then renamed over."""
    tmp = data_dir / f".{META_FILE}.tmp"
    tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, data_dir / META_FILE)


def _claim_directory(data_dir: Path, overwrite: bool, key: str = "data.dir") -> None:
    """Make ``data_dir`` ours to write: refuse another corpus or other files unless ``overwrite``.

    What an interrupted prepare left (train/, val/ and the in-progress marker, no meta.json) is
    removed without asking: it was never a usable corpus.
    """
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        probe = data_dir / IN_PROGRESS_FILE
        entries = {p.name for p in data_dir.iterdir()}
        ours = {*SPLITS, IN_PROGRESS_FILE, f".{META_FILE}.tmp"}
        if entries and not overwrite and not entries <= ours:
            what = "another prepared corpus (its meta.json lists other sources or settings)"
            if META_FILE not in entries:
                what = f"other files ({', '.join(sorted(entries)[:5])})"
            raise CorpusError(
                f"{key}={data_dir} already holds {what}: choose an empty {key}, or add data.overwrite=true "
                "to replace the corpus in it"
            )
        # The old meta.json goes first: from here on the directory holds no complete corpus.
        (data_dir / META_FILE).unlink(missing_ok=True)
        for split in SPLITS:
            shutil.rmtree(data_dir / split, ignore_errors=True)
        probe.write_text("task=prepare is writing this directory; without meta.json it holds no corpus\n")
    except OSError as err:  # no permission, a file in the way, a read-only file system
        raise CorpusError(
            f"{key}={data_dir} is not writable ({err.strerror}: {err.filename}); choose a directory you can write to"
        ) from None


def prepare_corpus(
    source: str,
    data_dir: str | Path,
    root: str | Path,
    val_fraction: float,
    seed: int,
    num_workers: int | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Tokenize ``source`` into ``data_dir`` (see the module's docstring); return ``meta.json``'s content
    plus ``"prepared": False`` when the same sources were already prepared there (nothing is done)."""
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
    settings = {"val_fraction": val_fraction, "seed": seed, "tokenizer": TOKENIZER_NAME}
    fingerprint = sources_fingerprint(files)
    existing = read_meta(data_dir) if data_dir.is_dir() else None
    same = existing is not None and existing.get("sources", {}).get("fingerprint") == fingerprint
    if same and not overwrite and all(existing.get(k) == v for k, v in settings.items()):
        log.info("%s already holds these sources, prepared: nothing to do", data_dir / META_FILE)
        return {**existing, "prepared": False}
    _claim_directory(data_dir, overwrite)

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
    get_tokenizer()  # built once here: forked workers inherit it instead of each building its own
    tokens = {}
    for split in SPLITS:
        inputs, part = plan[split]
        tokens[split] = write_split(inputs, data_dir / split, workers, part, val_fraction, desc=f"tokenizing {split}")
    seconds = time.perf_counter() - started
    meta = {
        "tokenizer": TOKENIZER_NAME,
        "eot_id": ENDOFTEXT_ID,
        "vocab_size": N_VOCAB,
        "dtype": np.dtype(TOKEN_DTYPE).name,
        "documents": documents,
        "tokens": tokens,
        "skipped": scan.skipped,
        "split": split_rule,
        **settings,
        "sources": {"source": str(source), "files": len(files), "bytes": scan.n_bytes, "fingerprint": fingerprint},
        "prepare_seconds": seconds,
    }
    write_meta(data_dir, meta)  # last: from now on the directory holds a complete corpus
    (data_dir / IN_PROGRESS_FILE).unlink(missing_ok=True)
    return {**meta, "prepared": True}
