"""A run directory's previous record, kept while a new command is checked against it.

A command aimed at a run that already has a ``results.json`` (``hydra.run.dir=<run> ckpt_path=last``)
must not change that run until it has passed every check: Hydra rewrites ``.hydra/`` and appends
to the log before any of gpt_lab's checks run, and ``run_task`` records "running". So the files
such an attempt touches first (``results.json``, ``.hydra/*``, the log files' lengths) are read into
memory before Hydra writes (``RunDirGuard``, or ``run_task`` when no guard ran), and put back as they
were when the attempt fails or is stopped before its task calls ``begin_changes`` (the train task:
right before the fit). A failed attempt never rewrites a completed run's record, whatever stage it
reached: the run keeps its results, and the error is printed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from gpt_lab.storage import atomic_write

RESULTS_FILE = "results.json"
HYDRA_DIR = ".hydra"


@dataclass
class PreviousRun:
    """The files of an existing run that a new attempt rewrites first: their bytes, the logs' lengths."""

    run_dir: Path
    status: str | None
    files: dict[Path, bytes] = field(default_factory=dict)
    log_sizes: dict[Path, int] = field(default_factory=dict)
    changing: bool = False  # set by begin_changes: the attempt passed its checks


_kept: dict[str, PreviousRun] = {}


def _key(run_dir: str | Path) -> str:
    return str(Path(run_dir).resolve())


def keep_previous_run(run_dir: str | Path) -> PreviousRun | None:
    """Read the record of the run in ``run_dir`` into memory (once per directory and process).

    Nothing is kept when ``run_dir`` holds no results.json (a new run: nothing to lose).
    """
    key = _key(run_dir)
    if key in _kept:
        return _kept[key]
    run_dir = Path(run_dir)
    results = run_dir / RESULTS_FILE
    if not results.is_file():
        return None
    files = {results: results.read_bytes()}
    hydra_dir = run_dir / HYDRA_DIR
    if hydra_dir.is_dir():
        files.update({p: p.read_bytes() for p in sorted(hydra_dir.iterdir()) if p.is_file()})
    logs = {p: p.stat().st_size for p in sorted(run_dir.glob("*.log")) if p.is_file()}
    kept = PreviousRun(run_dir, _status(files[results]), files, logs)
    _kept[key] = kept
    return kept


def _status(content: bytes) -> str | None:
    import json

    try:
        record = json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return record.get("status") if isinstance(record, dict) else None


def begin_changes(run_dir: str | Path) -> None:
    """The attempt in ``run_dir`` passed its checks: from now on it may change the run's files."""
    kept = _kept.get(_key(run_dir))
    if kept is not None:
        kept.changing = True


def restore_previous_run(run_dir: str | Path, interrupted: bool = False) -> bool:
    """After a failed or stopped attempt: put the previous record back where the rule says so.

    Before ``begin_changes``: always (the attempt changed nothing). After it: only a completed run's
    record, after a failure (a failed attempt never rewrites it; an interruption's record names the
    checkpoint it left; an interrupted or failed run's record tells the truth about the new attempt).
    Returns whether the record was put back.
    """
    kept = _kept.get(_key(run_dir))
    if kept is None or (kept.changing and (interrupted or kept.status != "completed")):
        return False
    hydra_dir = kept.run_dir / HYDRA_DIR
    if not kept.changing and hydra_dir.is_dir():
        for path in hydra_dir.iterdir():
            if path.is_file() and path not in kept.files:
                path.unlink()  # a file this attempt added to .hydra/
    for path, content in kept.files.items():
        if not path.is_file() or path.read_bytes() != content:
            with atomic_write(path) as f:
                f.write(content)
    if not kept.changing:
        for path, size in kept.log_sizes.items():
            if path.is_file() and path.stat().st_size > size:
                os.truncate(path, size)
        for path in kept.run_dir.glob("*.log"):
            if path not in kept.log_sizes and path.is_file():
                path.unlink()  # a log file this attempt started
    return True


def forget_previous_run(run_dir: str | Path) -> None:
    """The attempt in ``run_dir`` ended: drop what was kept (a later run in this process reads afresh)."""
    _kept.pop(_key(run_dir), None)
