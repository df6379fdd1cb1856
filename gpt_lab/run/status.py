"""How a run ends when a signal stops it: SIGINT and SIGTERM become ``RunInterrupted``.

The command line (``gpt_lab.run.job.run_command_line``) installs the two handlers below. Outside
training, SIGTERM raises ``RunInterrupted`` where the program stands and SIGINT raises Python's
``KeyboardInterrupt``. During ``trainer.fit`` Lightning stops by itself: on SIGTERM its own handler
(which it chains before ours) makes the loop raise ``SIGTERMException`` at the end of the batch;
on SIGINT it catches the ``KeyboardInterrupt``. Either way it calls the callbacks' ``on_exception``
(where the step checkpoint is written) and leaves ``fit`` with a ``SystemExit``, which would end
the process with status 0 or 1. ``interruptible_fit`` turns that into ``RunInterrupted`` with the
step reached and the checkpoint written, which ``run_task`` records in results.json as
``"status": "interrupted"`` and the command line maps to exit status 128 + signal (130, 143).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

EXIT_FAILURE = 1  # a failure that is not the user's input: a bug, a full disk
USER_ERROR_EXIT_CODE = 2  # a mistake in the command line or its inputs (gpt_lab.config.UserError)
# The signal seen most recently, and whether Lightning's fit is handling SIGTERM itself.
_received: int | None = None
_in_fit = False


def is_extra_process() -> bool:
    """A process of a multi-process run other than rank 0, known from the environment alone.

    Lightning's DDP children (which re-run the command line with rank 0's ``hydra.run.dir``),
    torchrun workers and SLURM tasks have these set before they import anything.
    """
    return any(int(os.environ.get(key) or 0) != 0 for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


class RunInterrupted(BaseException):
    """SIGINT or SIGTERM stopped the run, at ``step`` (training), with ``checkpoint`` written (or None).

    A ``BaseException`` like ``KeyboardInterrupt``: the ``except Exception`` of a job runner
    (Hydra's, or a sweep's "record the failure and go on") must not swallow it.
    """

    def __init__(self, signum: int, step: int | None = None, checkpoint: str | None = None) -> None:
        self.signum = int(signum)
        self.step = step
        self.checkpoint = checkpoint
        where = f" at step {step}" if step is not None else ""
        super().__init__(f"interrupted by {self.signal_name}{where}")

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process stopped by a signal: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum


def install_signal_handlers() -> None:
    """SIGTERM raises ``RunInterrupted``; SIGINT raises ``KeyboardInterrupt`` (both remember the signal).

    Only the main thread may set handlers; elsewhere (a thread-based launcher) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, _on_sigint)


def _on_sigterm(signum: int, frame: Any) -> None:
    global _received
    _received = signum
    if not _in_fit:  # during fit Lightning's handler (called just before this one) stops the loop cleanly
        raise RunInterrupted(signum)


def _on_sigint(signum: int, frame: Any) -> None:
    global _received
    _received = signum
    raise KeyboardInterrupt


def as_interruption(err: BaseException) -> RunInterrupted | None:
    """``err`` as a ``RunInterrupted`` when a signal caused it (a bare KeyboardInterrupt is SIGINT), else None."""
    if isinstance(err, RunInterrupted):
        return err
    if isinstance(err, KeyboardInterrupt):
        return RunInterrupted(signal.SIGINT)
    return None


@contextlib.contextmanager
def interruptible_fit(trainer: Any, started_at: float) -> Iterator[None]:
    """Around ``trainer.fit``: Lightning's exit after SIGTERM/SIGINT becomes ``RunInterrupted``.

    ``started_at`` (``time.time()`` when the run began) tells this run's checkpoints from older
    ones in the same directory. A SIGTERM that came while the Trainer was starting, before
    Lightning took over the signal, stops the run as soon as ``fit`` returns.
    """
    global _in_fit, _received
    _received, _in_fit = None, True
    try:
        yield
    except (KeyboardInterrupt, SystemExit) as err:
        signum_seen = getattr(err, "signum", None)  # callbacks.StopOnSignal's TrainingInterrupted names its signal
        if signum_seen is not None:
            checkpoint = getattr(err, "checkpoint", None) or latest_checkpoint(trainer, started_at)
            raise RunInterrupted(signum_seen, trainer.global_step, checkpoint) from None
        if not (isinstance(err, KeyboardInterrupt) or trainer.interrupted):
            raise
        sigterm = _received == signal.SIGTERM or trainer.received_sigterm
        signum = signal.SIGTERM if sigterm else signal.SIGINT
        raise RunInterrupted(signum, trainer.global_step, latest_checkpoint(trainer, started_at)) from None
    finally:
        _in_fit = False
    if _received == signal.SIGTERM:
        raise RunInterrupted(signal.SIGTERM, trainer.global_step, latest_checkpoint(trainer, started_at))


def latest_checkpoint(trainer: Any, started_at: float) -> str | None:
    """The newest checkpoint this run wrote (``last.ckpt`` or the callback's last/best), or None."""
    callback = trainer.checkpoint_callback
    if callback is None:
        return None
    candidates = [getattr(callback, "last_model_path", ""), getattr(callback, "best_model_path", "")]
    if getattr(callback, "dirpath", None):
        candidates.insert(0, str(Path(callback.dirpath) / "last.ckpt"))
    newest: tuple[float, str] | None = None
    for name in filter(None, candidates):
        path = Path(name)
        try:
            mtime = path.stat().st_mtime  # follows last.ckpt when it is a link
        except OSError:
            continue
        if mtime >= started_at and (newest is None or mtime > newest[0]):
            newest = (mtime, str(path))
    return newest[1] if newest else None
