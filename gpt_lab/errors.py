"""The mistakes a user can fix, at the bottom of the import graph: every module may raise them."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix: a bad config value, an empty prompt, a missing input file.

    scripts/run.py prints the message as one paragraph on stderr, without a traceback, and exits
    with status 2. Any task may raise it (or a subclass) for problems with its inputs.
    """


class ConfigError(UserError):
    """The composed configuration does not fit the schema or its ranges."""
