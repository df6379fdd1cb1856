"""One directory per run: unique default names, and no run writing over another run's files.

``${unique_dir:<path>}`` (conf/hydra/default.yaml's ``hydra.run.dir`` and ``hydra.sweep.dir``)
creates ``<path>`` with ``os.mkdir``, which fails when the directory exists, so two runs started
in the same second cannot both get it: the second gets ``<path>-2`` (then ``-3``, ...). Hydra
evaluates these paths more than once per run, in this process and in the processes a launcher
starts for its jobs, so the answer is remembered per process and in an environment variable that
those processes inherit.

``RunDirGuard`` (a Hydra callback) refuses, before Hydra writes anything, a run aimed with
``hydra.run.dir=...`` at a directory that holds another run's results.json, unless the run
resumes that run (``ckpt_path=last`` or a checkpoint inside that directory); and a sweep aimed
with ``hydra.sweep.dir=...`` at a directory that already holds a sweep. A run holds an advisory
lock on its directory (``.run.lock``, ``fcntl.flock``) while its process lives: a resume of a run
that is still going is refused, whatever pid its results.json names. A resume's attempt first keeps
the run's record in memory (``gpt_lab.run.previous``): it is put back if the attempt fails its checks.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from gpt_lab.config.saved_model import run_model_name
from gpt_lab.errors import UserError
from gpt_lab.run.error_exit import exit_with_error
from gpt_lab.run.files import RESULTS_FILE, holds_only_bookkeeping, read_results
from gpt_lab.run.previous import keep_previous_run
from gpt_lab.run.status import is_rank_zero, watch_sweep
from gpt_lab.run.sweep import JOB_DIR_RESOLVER, continues_sweep, job_dir_name
from gpt_lab.storage import remove_stale_temp_files

log = logging.getLogger(__name__)

RESOLVER = "unique_dir"
_ENV_PREFIX = "GPT_LAB_UNIQUE_DIR_"
_created: dict[str, str] = {}
SWEEP_FILES = ("summary.csv", "multirun.yaml")


def unique_dir(path: str) -> str:
    """Create ``path``, or ``path-2``, ``path-3``, ... if taken, and return the one created.

    The same ``path`` asked again in this process (or in one it started) gets the same answer.
    """
    key = _ENV_PREFIX + hashlib.sha1(str(path).encode()).hexdigest()[:16]
    known = _created.get(key) or os.environ.get(key)
    if known:
        return known
    base = Path(path).absolute()
    base.parent.mkdir(parents=True, exist_ok=True)
    suffix = 1
    while True:
        candidate = base if suffix == 1 else base.with_name(f"{base.name}-{suffix}")
        try:
            candidate.mkdir()  # exclusive: exactly one process gets each name
            break
        except FileExistsError:
            suffix += 1
    _created[key] = os.environ[key] = str(candidate)
    return str(candidate)


def register_resolver() -> None:
    """Make ``${unique_dir:...}`` available to Hydra's config (call before ``@hydra.main`` runs)."""
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, unique_dir, use_cache=True)
    if not OmegaConf.has_resolver(JOB_DIR_RESOLVER):
        OmegaConf.register_new_resolver(JOB_DIR_RESOLVER, job_dir_name)
    if not OmegaConf.has_resolver("run_model"):
        OmegaConf.register_new_resolver("run_model", run_model_name)


class RunDirError(UserError):
    """The run or sweep directory holds another run's files, or a run that is still going."""


def _refuse(message: str) -> None:
    # Hydra would print an exception raised by its callback with a traceback: the command line's own
    # error printer (gpt_lab.run.error_exit.exit_with_error) prints it and ends the process here.
    raise exit_with_error(RunDirError(message))


def resumes_run(config: DictConfig, run_dir: Path) -> bool:
    """Whether this run continues the run in ``run_dir``: ``ckpt_path=last`` or a checkpoint inside it."""
    ckpt_path = OmegaConf.select(config, "ckpt_path", default=None, throw_on_resolution_failure=False)
    if not ckpt_path:
        return False
    if str(ckpt_path) == "last":
        return True
    root = OmegaConf.select(config, "paths.root_dir", default=None, throw_on_resolution_failure=False)
    path = Path(root or os.getcwd(), str(ckpt_path)).resolve()
    return path.is_relative_to(run_dir.resolve())


LOCK_FILE = ".run.lock"
# The run directories this process holds (their lock files stay open until the process ends).
_held: dict[str, Any] = {}


def lock_run_dir(run_dir: Path) -> None:
    """Hold an advisory lock (``fcntl.flock``) on ``run_dir/.run.lock`` for the rest of this process.

    The operating system releases it when the process ends, however it ends (SIGKILL, a crash), so
    a lock that cannot be taken means a live run: another process of this machine, or of another
    one sharing the directory where the filesystem supports flock. Raises ``RunDirError`` naming
    the pid that holds it. Where flock is unavailable (not POSIX), nothing is locked.
    """
    try:
        import fcntl
    except ImportError:  # Windows
        return
    key = str(run_dir.resolve())
    if key in _held:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = open(run_dir / LOCK_FILE, "a+")  # noqa: SIM115 (held open for the process's life)
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        holder = (lock.read().strip().splitlines() or ["unknown"])[0]
        lock.close()
        raise RunDirError(
            f"hydra.run.dir={run_dir} belongs to a run that is still running (pid {holder}, which holds "
            f"{LOCK_FILE}); wait for it to end or stop it before resuming it"
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()} {socket.gethostname()}\n")
    lock.flush()
    _held[key] = lock


def check_run_dir(config: DictConfig, run_dir: Path) -> None:
    """Refuse (exit 2) a run whose directory holds another run's results.json, unless it resumes it;
    refuse a resume while that run is still alive (its lock is held); else lock the directory."""
    results_path = run_dir / RESULTS_FILE
    if not results_path.is_file():
        lock_run_dir(run_dir)
        return
    try:
        previous: dict[str, Any] = read_results(run_dir) or {}
    except ValueError:
        previous = {}
    status = previous.get("status", "unknown")
    if status == "failed" and previous.get("refused") and holds_only_bookkeeping(run_dir):
        log.info("%s held a run refused before it started: this run takes its place", run_dir)
        lock_run_dir(run_dir)
        return
    if resumes_run(config, run_dir):
        lock_run_dir(run_dir)  # a live run holds it; a pid in results.json proves nothing (pids are reused)
        keep_previous_run(run_dir)  # before Hydra rewrites .hydra/: a failed attempt puts the record back
        for path in remove_stale_temp_files(run_dir):
            log.info("Removed %s, left by a writer that was killed", path)
        return
    _refuse(
        f"hydra.run.dir={run_dir} already holds another run ({RESULTS_FILE}: status {status}); a run never "
        "writes over another run's files: leave hydra.run.dir out to get a new directory, choose an empty "
        "one, or resume that run with ckpt_path=last"
    )


def check_sweep_dir(sweep_dir: Path, config: DictConfig | None = None) -> None:
    """Refuse (exit 2) a sweep aimed at a directory that already holds a sweep, unless it continues
    that very sweep (``ckpt_path=last``, the same overrides: gpt_lab/run/sweep.py)."""
    if not sweep_dir.is_dir():
        return
    if config is not None and continues_sweep(config, sweep_dir):
        return
    found = [name for name in SWEEP_FILES if (sweep_dir / name).exists()]
    found += [str(p.relative_to(sweep_dir)) for p in sorted(sweep_dir.glob(f"*/{RESULTS_FILE}"))[:1]]
    if found:
        _refuse(
            f"hydra.sweep.dir={sweep_dir} already holds a sweep ({', '.join(found)}); a sweep never writes over "
            "another's files: leave hydra.sweep.dir out to get a new directory, choose an empty one, or continue "
            "that sweep with its very command plus ckpt_path=last"
        )


def check_writable(directory: Path, key: str) -> None:
    """Refuse (exit 2) a run or sweep directory that cannot be created or written (a read-only file
    system, no permission): found here, before Hydra's own writes fail with a traceback and no record."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as err:
        _refuse(
            f"{key}={directory} cannot be written ({err.strerror or err}): everything a run writes goes "
            f"into its directory; name one this process can write, on a file system mounted read-write, "
            f"with {key}=<directory>"
        )


class RunDirGuard(Callback):
    """Checks the run or sweep directory before Hydra creates it and writes ``.hydra/`` into it."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if is_rank_zero():
            run_dir = Path(str(config.hydra.run.dir))
            check_writable(run_dir, "hydra.run.dir")
            try:
                check_run_dir(config, run_dir)
            except RunDirError as err:
                _refuse(str(err))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if is_rank_zero():
            check_sweep_dir(Path(str(config.hydra.sweep.dir)), config)  # before creating it: an existing sweep
            check_writable(Path(str(config.hydra.sweep.dir)), "hydra.sweep.dir")
            watch_sweep(str(config.hydra.sweep.dir))  # an interrupted parallel sweep waits for its jobs there
