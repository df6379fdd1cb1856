"""Writing a corpus split with litdata (``task=prepare``), in a writer process of its own group.

litdata's ``optimize`` installs its own SIGINT handler (``os._exit(0)``) and leaves worker processes
behind when its parent is killed; here it runs in a child process in a process group of its own,
every process it starts dies with its parent (Linux ``PR_SET_PDEATHSIG``), and the group is killed on
any failure, so Ctrl-C / SIGTERM / SIGKILL of a prepare leave nothing running.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import multiprocessing
import multiprocessing.util
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

# litdata asks PyPI for a newer version of itself unless told not to: gpt_lab never uses the network.
os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")

from gpt_lab.data.corpus_sources import META_FILE, CorpusTokenizer, TokenizeDocument
from gpt_lab.storage import DISK_FULL_ERRNOS, StorageError

log = logging.getLogger(__name__)

DISK_FULL_WORDS = tuple(os.strerror(e) for e in DISK_FULL_ERRNOS)  # how a worker's traceback says "disk full"
PR_SET_PDEATHSIG = 1  # Linux prctl: the signal a process gets when the one that started it ends
CHUNK_BYTES = 16 * 2**20  # litdata chunk size: a window never spans two chunks (each loses < one window);
# a worker holds one chunk while it fills, so this also bounds its memory
START_METHOD = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


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
    inputs: list[str],
    output_dir: Path,
    num_workers: int,
    part: str = "all",
    val_fraction: float = 0.0,
    desc: str = "",
    tokenizer: CorpusTokenizer | None = None,
) -> tuple[int, int]:
    """Tokenize ``inputs`` (file paths) in ``num_workers`` processes into litdata chunks, with ``tokenizer``
    (a family's; None: GPT-2's).

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
        "fn": TokenizeDocument(progress, part, val_fraction, tokenizer),
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
