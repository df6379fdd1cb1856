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
import contextlib
import ctypes
import glob
import hashlib
import json
import logging
import multiprocessing
import multiprocessing.util
import os
import random
import shutil
import signal
import socket
import sys
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
from gpt_lab.storage import DISK_FULL_ERRNOS, StorageError, write_text_atomic
from gpt_lab.tokenizer import ENDOFTEXT_ID, N_VOCAB, get_tokenizer

log = logging.getLogger(__name__)
logging.getLogger("litdata").setLevel(logging.WARNING)  # its INFO lines (cache sizes) are not for our users

META_FILE = "meta.json"
SPLITS = ("train", "val")
TOKENIZER_NAME = "gpt2"
TOKEN_DTYPE = np.uint16  # GPT-2's 50,257 ids fit; half the disk of int32
# Written first by a prepare, removed last: with it (and no meta.json) train/ and val/ are an interrupted
# prepare's leftovers, which the next prepare may remove; without it they are someone else's.
IN_PROGRESS_FILE = ".prepare-in-progress"
DISK_FULL_WORDS = tuple(os.strerror(e) for e in DISK_FULL_ERRNOS)  # how a worker's traceback says "disk full"
PR_SET_PDEATHSIG = 1  # Linux prctl: the signal a process gets when the one that started it ends
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


def source_stats(files: list[Path]) -> list[tuple[str, int, int]]:
    """(path, size, modification time in ns) of every source file; (path, -1, -1) for one that is gone."""
    stats = []
    for path in files:
        try:
            st = path.stat()
            stats.append((str(path), st.st_size, st.st_mtime_ns))
        except OSError:
            stats.append((str(path), -1, -1))
    return stats


def sources_fingerprint(stats: list[tuple[str, int, int]]) -> str:
    """SHA-256 over every source file's path, size and modification time: equal means "same sources"."""
    digest = hashlib.sha256()
    for path, size, mtime in stats:
        digest.update(f"{path}\0{size}\0{mtime}\n".encode())
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
    shared array (files, bytes, tokens, unreadable files) the main process reads for its progress
    bar. A file that cannot be read or decoded any more (it changed after the scan) gives no
    tokens and is counted: the prepare then fails with a paragraph instead of a worker's traceback.
    """

    def __init__(self, progress: Any, part: str = "all", val_fraction: float = 0.0) -> None:
        self.progress = progress
        self.part = part
        self.val_fraction = val_fraction

    def __call__(self, path: str) -> Iterator[np.ndarray]:
        try:
            tokens = document_tokens(path)
            n_bytes = os.path.getsize(path)
        except (OSError, UnicodeDecodeError):
            with self.progress.get_lock():
                self.progress[3] += 1
            return
        if self.part != "all":
            head, tail = split_single_document(tokens, self.val_fraction)
            tokens = head if self.part == "head" else tail
        with self.progress.get_lock():
            self.progress[0] += 1
            self.progress[1] += n_bytes
            self.progress[2] += len(tokens)
        yield tokens


def _watch_progress(progress: Any, total_files: int, total_bytes: int, desc: str, done: threading.Event) -> None:
    """Files done, MB/s and tokens/s of the workers, from the shared counters, every half second."""
    from tqdm import tqdm

    started = time.perf_counter()
    with tqdm(total=total_files, desc=desc, unit="file", mininterval=0.5) as bar:
        while True:
            finished = done.wait(0.5)
            files, n_bytes, tokens = list(progress)[:3]
            seconds = max(time.perf_counter() - started, 1e-9)
            bar.update(files - bar.n)
            bar.set_postfix_str(
                f"{n_bytes / 1e6:.1f}/{total_bytes / 1e6:.1f} MB, {n_bytes / 1e6 / seconds:.2f} MB/s, "
                f"{tokens / seconds:,.0f} tokens/s",
                refresh=True,
            )
            if finished:
                return


def _die_with_parent() -> None:
    """Linux: this process gets SIGKILL when the process that started it ends, however it ends."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _optimize_in_own_group(conn: Any, kwargs: dict[str, Any]) -> None:
    """The writer process: litdata's ``optimize`` in a process group of its own.

    litdata's SIGINT handler (``os._exit(0)``) and its worker processes stay in here: a Ctrl-C at
    the terminal reaches only the main process, which kills this whole group. Every process of
    the group dies with the one that started it (the workers with this one), so not even a
    SIGKILL of the main process leaves a worker behind. Sends None, or what went wrong.
    """
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    _die_with_parent()
    os.register_at_fork(after_in_child=_die_with_parent)  # litdata's workers, forked from here
    multiprocessing.util.register_after_fork(_AFTER_FORK, _end_children_at_exit)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)  # the main process's handlers raise exceptions meant for it
    try:
        from litdata import optimize

        optimize(**kwargs)
    except BaseException as err:  # everything goes back to the main process, as text
        conn.send(f"{type(err).__name__}: {err}")
        conn.close()
        os._exit(1)
    conn.send(None)
    conn.close()


class _AfterFork:
    """A key for ``multiprocessing.util.register_after_fork`` (it holds its keys weakly)."""


_AFTER_FORK = _AfterFork()


def _kill_children() -> None:
    for child in multiprocessing.active_children():
        child.kill()


def _end_children_at_exit(_: Any) -> None:
    """In each process litdata starts: at exit, kill the processes it started and did not stop.

    A litdata worker that fails (e.g. a chunk write on a full disk) returns without stopping its
    helper processes, and multiprocessing then waits for them forever. A worker that succeeds has
    joined them already: there is nothing left to kill.
    """
    multiprocessing.util.Finalize(None, _kill_children, exitpriority=100)


def _check_split(output_dir: Path, tokens: int, workers: int) -> None:
    """After litdata's ``optimize``: its index lists every token the workers produced, in whole chunk files.

    litdata can end "successfully" after a worker failed writing its last chunk (its error is then
    never read); the count tells. Little free space left on the disk makes it a ``StorageError``.
    """
    index = output_dir / "index.json"
    try:
        chunks = json.loads(index.read_text(encoding="utf-8"))["chunks"]
        listed = sum(chunk["dim"] for chunk in chunks)
        whole = all((output_dir / c["filename"]).stat().st_size == c["chunk_bytes"] for c in chunks)
    except (OSError, ValueError, KeyError, TypeError):
        listed, whole = -1, False
    if listed == tokens and whole:
        return
    free = shutil.disk_usage(output_dir if output_dir.is_dir() else output_dir.parent).free
    what = f"{output_dir} is incomplete ({max(listed, 0):,} of {tokens:,} tokens in whole chunks)"
    if free < 2 * CHUNK_BYTES * workers:
        raise StorageError(
            f"task=prepare could not write {what}: the disk is full ({free / 2**20:.1f} MiB free); data.dir holds "
            f"no corpus (no {META_FILE}); free some space there, or choose a data.dir on a disk with room, "
            "then run it again"
        )
    raise RuntimeError(f"task=prepare's writer failed: {what}; see the log above for a litdata worker's error")


def _kill_group(proc: Any) -> None:
    """SIGKILL the writer process and its process group (litdata's workers); wait for the writer."""
    for kill in (lambda: os.killpg(proc.pid, signal.SIGKILL), proc.kill):
        with contextlib.suppress(OSError, ValueError):
            kill()
    proc.join()


def _run_writer(ctx: Any, kwargs: dict[str, Any], output_dir: Path) -> None:
    """Run ``optimize(**kwargs)`` in a writer process group (see ``_optimize_in_own_group``) and wait.

    A signal (``KeyboardInterrupt``, ``RunInterrupted``) or any error here kills the group before
    it goes on. A failure in there becomes a ``StorageError`` when the disk was full, else a
    ``RuntimeError`` carrying litdata's report (with the worker's traceback).
    """
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_optimize_in_own_group, args=(sender, kwargs), name="gpt_lab-prepare")
    proc.start()
    sender.close()
    with contextlib.suppress(OSError):
        os.setpgid(proc.pid, proc.pid)  # also here: no signal may reach the group before the child did it
    try:
        failure: str | None = "the writer process ended without a word"
        while True:
            if receiver.poll(0.2):
                failure = receiver.recv()
                break
            if not proc.is_alive():
                failure = receiver.recv() if receiver.poll() else f"{failure} (exit status {proc.exitcode})"
                break
        proc.join()
    except BaseException:
        _kill_group(proc)
        raise
    finally:
        receiver.close()
    if failure is None:
        return
    if any(words in failure for words in DISK_FULL_WORDS):
        raise StorageError(
            f"task=prepare could not write {output_dir}: the disk is full, or a quota or file-size limit was "
            f"reached ({next(w for w in DISK_FULL_WORDS if w in failure)}); data.dir holds no corpus (no "
            f"{META_FILE}); free some space there, or choose a data.dir on a disk with room, then run it again"
        )
    raise RuntimeError(f"task=prepare's writer process failed: {failure}")


def write_split(
    inputs: list[str], output_dir: Path, num_workers: int, part: str = "all", val_fraction: float = 0.0, desc: str = ""
) -> tuple[int, int]:
    """Tokenize ``inputs`` (file paths) in ``num_workers`` processes into litdata chunks.

    Returns (tokens written, files that could not be read any more). Each worker takes a
    contiguous run of the inputs, in order, and writes its own chunks, so the chunk layout depends
    only on the inputs and ``num_workers``, never on which worker happened to be faster.
    """
    from litdata import TokensLoader

    # Forked workers start in milliseconds (spawned ones import torch again, seconds each); the shared
    # counters must come from the same start method.
    ctx = multiprocessing.get_context(START_METHOD)
    progress = ctx.Array("q", 4)
    total_bytes = sum(os.path.getsize(p) for p in inputs)
    kwargs = {
        "fn": TokenizeDocument(progress, part, val_fraction),
        "inputs": inputs,
        "output_dir": str(output_dir),
        "chunk_bytes": CHUNK_BYTES,
        "item_loader": TokensLoader(),
        "num_workers": max(1, min(num_workers, len(inputs))),
        "start_method": START_METHOD,
        "reorder_files": False,  # inputs keep their order...
        "keep_data_ordered": True,  # ...and each worker its own contiguous share (no shared work queue)
        "verbose": False,
    }
    done = threading.Event()
    watcher = threading.Thread(
        target=_watch_progress, args=(progress, len(inputs), total_bytes, desc, done), daemon=True
    )
    watcher.start()
    try:
        _run_writer(ctx, kwargs, output_dir)
    finally:
        done.set()
        watcher.join()
    if not progress[3]:  # files that became unreadable: prepare_corpus reports the changed sources instead
        _check_split(output_dir, int(progress[2]), kwargs["num_workers"])
    return int(progress[2]), int(progress[3])


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
        meta = _prepare_locked(source, data_dir, files, stats, val_fraction, seed, num_workers)
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
    get_tokenizer()  # built once here: forked workers inherit it instead of each building its own
    tokens, unreadable = {}, 0
    for split in SPLITS:
        inputs, part = plan[split]
        tokens[split], lost = write_split(
            inputs, data_dir / split, workers, part, val_fraction, desc=f"tokenizing {split}"
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
        "tokenizer": TOKENIZER_NAME,
        "eot_id": ENDOFTEXT_ID,
        "vocab_size": N_VOCAB,
        "dtype": np.dtype(TOKEN_DTYPE).name,
        "documents": documents,
        "tokens": tokens,
        "skipped": scan.skipped,
        "split": split_rule,
        "workers": workers,
        "sources": {"source": str(source), "files": len(files), "bytes": scan.n_bytes},
        "prepare_seconds": time.perf_counter() - started,
    }
