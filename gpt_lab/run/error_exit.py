"""The one printer of a user error: ``gpt_lab: error: ...`` on stderr, and the exit status it ends with."""

from __future__ import annotations

import sys

from gpt_lab.errors import UserError
from gpt_lab.run.status import EXIT_FAILURE, USER_ERROR_EXIT_CODE
from gpt_lab.storage import StorageError


def exit_with_error(err: UserError | StorageError) -> SystemExit:
    """Print ``err`` as the one paragraph ``gpt_lab: error: ...`` on stderr (the one place that prints
    a user error); return the ``SystemExit`` to raise: status 2 for a user error, 1 for a full disk."""
    print(f"gpt_lab: error: {err}", file=sys.stderr, flush=True)
    return SystemExit(USER_ERROR_EXIT_CODE if isinstance(err, UserError) else EXIT_FAILURE)
