"""The mistakes a user can fix, at the bottom of the import graph: every module may raise them,
and word them with ``first_line`` and ``describe_type``."""

from __future__ import annotations

import types
import typing
from typing import Any


class UserError(Exception):
    """A mistake the user can fix: a bad config value, an empty prompt, a missing input file.

    scripts/run.py prints the message as one paragraph on stderr, without a traceback, and exits
    with status 2. Any task may raise it (or a subclass) for problems with its inputs.
    """


class ConfigError(UserError):
    """The composed configuration does not fit the schema or its ranges."""


class InitFromError(UserError, ValueError):
    """``init_from`` names a file that is missing, unreadable, or does not fit the chosen config.

    A ``UserError``: the command line prints the message, without a traceback, and exits 2.
    """


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type's name if it has none)."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def describe_type(hint: Any) -> str:
    """A type annotation in words for an error message: ``int | None`` is "an integer or null"."""
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        words = []
        for arg in typing.get_args(hint):
            word = describe_type(arg)
            if word and word not in words:
                words.append(word)
        return " or ".join(words)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    names = {
        bool: "a boolean (true or false)",
        int: "an integer",
        float: "a number",
        str: "a string",
        type(None): "null",
    }
    if hint in names:
        return names[hint]
    if origin in (list, tuple) or hint in (list, tuple):
        return "a list"
    if origin is dict or hint is dict:
        return "a mapping"
    return getattr(hint, "__name__", str(hint))


class RunInterrupted(SystemExit):
    """SIGINT or SIGTERM stopped the run: the one exception of an interruption, wherever it happens.

    ``signum`` is the signal, ``step`` the optimizer steps done (training; None elsewhere),
    ``checkpoint`` the checkpoint written where it stopped (or None). Raised by the command line's
    signal handlers outside training (``gpt_lab.run.status``) and by ``StopOnSignal`` in training,
    at an optimizer-step boundary, after the checkpoint is written. A ``SystemExit`` whose code is
    the shell's 128 + signal (130 for SIGINT, 143 for SIGTERM): ``except Exception`` (a job runner's,
    Hydra's, Lightning's) lets it through, and a script that does not catch it (a notebook's own
    Trainer with ``StopOnSignal``) ends with that status and no traceback.
    """

    def __init__(self, signum: int, step: int | None = None, checkpoint: str | None = None) -> None:
        super().__init__(128 + int(signum))
        self.signum = int(signum)
        self.step = step
        self.checkpoint = checkpoint

    def __reduce__(self) -> tuple[Any, ...]:  # a launcher's worker process sends it back pickled
        return (type(self), (self.signum, self.step, self.checkpoint))

    def __str__(self) -> str:
        where = f" at step {self.step}" if self.step is not None else ""
        saved = f", checkpoint {self.checkpoint}" if self.checkpoint else ""
        return f"interrupted by {self.signal_name}{where}{saved}"

    @property
    def signal_name(self) -> str:
        import signal

        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process stopped by a signal: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum
