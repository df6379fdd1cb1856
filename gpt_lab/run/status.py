"""How a run ends when a signal stops it, and which process of a run records it.

An interruption is one exception, ``gpt_lab.errors.RunInterrupted`` (signal, step, checkpoint),
raised in one of two places:
- during training, by ``gpt_lab.training.callbacks.StopOnSignal``, which owns SIGTERM and SIGINT
  from the training loop's start to its end: it finishes the optimizer step, writes the checkpoint
  and raises it (a second SIGINT raises it at once, without a checkpoint);
- everywhere else (start-up, validation before the loop, between a sweep's jobs), by the two
  handlers the command line installs here (``install_signal_handlers``), where the program stands.
Lightning passes any exception other than ``KeyboardInterrupt`` through ``fit`` after calling its
callbacks' ``on_exception``; ``run_task`` records it in results.json (``"status": "interrupted"``)
and the command line (``gpt_lab.run.job.run_command_line``) ends with its exit status 130 / 143.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from gpt_lab.errors import RunInterrupted

__all__ = [
    "EXIT_FAILURE",
    "USER_ERROR_EXIT_CODE",
    "RunInterrupted",
    "as_interruption",
    "install_signal_handlers",
    "is_rank_zero",
    "stop_job_processes",
    "watch_sweep",
]

EXIT_FAILURE = 1  # a failure that is not the user's input: a bug, a full disk
USER_ERROR_EXIT_CODE = 2  # a mistake in the command line or its inputs (gpt_lab.config.UserError)
# The variables Lightning reads a process's rank from (lightning.fabric.utilities.rank_zero), plus
# NODE_RANK, which its DDP launcher sets for the processes of the other nodes.
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")
_LIGHTNING_RANK = "lightning.fabric.utilities.rank_zero"


def is_rank_zero() -> bool:
    """Whether this process is rank 0 of its run, as Lightning counts ranks (``rank_zero_only.rank``).

    The extra processes of a multi-process run (Lightning's DDP children, torchrun workers, SLURM
    tasks) share rank 0's run directory: only rank 0 checks it and writes results.json. Lightning
    is imported to ask it only when it is imported already or the environment names a rank, so a
    single-process run that never trains (generation) does not pay for the import.
    """
    if _LIGHTNING_RANK not in sys.modules and not any(os.environ.get(key) for key in _RANK_VARIABLES):
        return True
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return rank_zero_only.rank == 0 and int(os.environ.get("NODE_RANK") or 0) == 0


def install_signal_handlers() -> None:
    """SIGTERM and SIGINT raise ``RunInterrupted`` where the program stands (training has its own).

    Only the main thread may set handlers; elsewhere (a thread-based launcher) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)


def _interrupt(signum: int, frame: Any) -> None:
    stop_job_processes(signum)
    raise RunInterrupted(signum)


# How long an interrupted sweep waits for its job processes to write their checkpoints and results.
JOB_STOP_TIMEOUT_S = 120.0
# The processes a parallel launcher runs jobs in: joblib's loky workers (hydra/launcher=parallel).
_JOB_PROCESS_MARK = b"popen_loky"


def stop_job_processes(signum: int, timeout: float = JOB_STOP_TIMEOUT_S) -> list[int]:
    """Pass ``signum`` on to the parallel launcher's job processes and wait until their jobs recorded the stop.

    Each job then stops like a run of its own: ``StopOnSignal`` writes the checkpoint and its
    results.json records the stop. It must happen before this process raises: the launcher,
    interrupted, kills its workers. A job is done when its process ended or its results.json (in the
    sweep directory) no longer says "running". Read from ``/proc`` (Linux); elsewhere, and in a
    process with no such children (a single run, whose DataLoader workers must not be signalled),
    nothing is sent. A repeated SIGTERM changes nothing in a job; a SIGINT from a terminal reached
    them already, so only SIGTERM is passed on. Returns the pids signalled.
    """
    jobs = [pid for pid in _child_pids() if _JOB_PROCESS_MARK in _cmdline(pid)]
    if not jobs:
        return []
    if signum == signal.SIGTERM:
        for pid in jobs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
    sweep_dir = _sweep
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = {pid for pid in jobs if _alive(pid)}
        if not alive or sweep_dir is None or not _running_jobs(sweep_dir) & alive:
            break
        time.sleep(0.05)
    return jobs


def watch_sweep(sweep_dir: str | Path | None) -> None:
    """The sweep directory this process launches jobs into (``RunDirGuard`` at a multirun's start)."""
    global _sweep
    _sweep = Path(sweep_dir) if sweep_dir is not None else None


_sweep: Path | None = None


def _running_jobs(sweep_dir: Path) -> set[int]:
    """The pids that results.json files under ``sweep_dir`` name as "running"."""
    pids = set()
    for path in sweep_dir.glob("**/results.json"):
        with contextlib.suppress(OSError, ValueError):
            results = json.loads(path.read_text(encoding="utf-8"))
            if results.get("status") == "running" and isinstance(results.get("pid"), int):
                pids.add(results["pid"])
    return pids


def _child_pids() -> list[int]:
    pids: set[int] = set()
    for children in Path(f"/proc/{os.getpid()}/task").glob("*/children"):
        with contextlib.suppress(OSError, ValueError):
            pids.update(int(pid) for pid in children.read_text().split())
    return sorted(pids)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    """Still running: an ended child is a zombie (Z) until its parent reaps it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def as_interruption(err: BaseException) -> RunInterrupted | None:
    """``err`` as a ``RunInterrupted`` when a signal caused it, else None.

    A bare ``KeyboardInterrupt`` is SIGINT under Python's own handler (a script or notebook that
    calls ``run_task`` without the command line's handlers).
    """
    if isinstance(err, RunInterrupted):
        return err
    if isinstance(err, KeyboardInterrupt):
        return RunInterrupted(signal.SIGINT)
    return None
