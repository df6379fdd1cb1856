"""``atomic_write`` for every file a run finishes, and ``StorageError`` when the disk says no.

results.json, the sweep summaries, model.pth and Lightning checkpoints go through ``atomic_write``:
written beside their final name in the same directory, flushed to disk, then renamed over it, so a
reader (or a crash, a kill, a full disk) sees the old complete file or the new complete file, never
a part. A full disk becomes a ``StorageError`` naming the file and the directory.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

TEMP_SUFFIX = ".tmp"  # atomic_write's files: .<final name>.<pid>.<random>.tmp, beside the final name
# What a full disk looks like to a write: no space, over the quota, over the file-size limit (ulimit -f).
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class StorageError(OSError):
    """A file of the run could not be written (disk full, quota, file-size limit, permissions).

    The command line prints it as one paragraph and exits 1: the input was fine, the machine
    was not. Files written before are intact; nothing partial is left under a final name.
    """


def _storage_error(path: Path, err: OSError) -> StorageError:
    detail = os.strerror(err.errno) if err.errno else str(err)
    if err.errno in DISK_FULL_ERRNOS:
        reason = f"the disk is full, or a quota or file-size limit was reached ({detail})"
        advice = "free some space there, or point hydra.run.dir (hydra.sweep.dir) at a disk with room"
    else:
        reason = detail
        advice = "check that the directory exists and is writable"
    error = StorageError(
        f"cannot write {path.name} in {path.parent}: {reason}; "
        f"nothing partial was left under that name and files written before are intact; {advice}"
    )
    error.errno = err.errno  # str(error) stays the one paragraph, the errno stays for callers
    return error


@contextlib.contextmanager
def atomic_write(
    path: str | Path, mode: str = "wb", encoding: str | None = None, newline: str | None = None
) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing; on success flush, fsync and rename it to ``path``.

    The temporary file sits in the same directory (a rename across filesystems would be a copy,
    which is what left truncated checkpoints behind) and is removed on any failure. OSErrors from
    writing become ``StorageError`` naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as err:
        raise _storage_error(path, err) from err
    tmp = Path(tmp_name)
    tracked: _TrackedFile | None = None
    try:
        with os.fdopen(fd, mode, encoding=encoding, newline=newline) as f:
            tracked = _TrackedFile(f)
            yield tracked
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode open() would
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        # torch.save reports a failed write as a RuntimeError of its own: the OSError underneath says why.
        cause = tracked.write_error if tracked is not None and tracked.write_error is not None else err
        if isinstance(cause, OSError) and not isinstance(cause, StorageError):
            raise _storage_error(path, cause) from err
        raise
    _fsync_dir(path.parent)


def remove_stale_temp_files(directory: str | Path) -> list[Path]:
    """Delete the temporary files that killed writers (SIGKILL, power cut) left under ``directory``.

    Only files whose writing process no longer exists on this machine are removed.
    """
    removed = []
    for path in Path(directory).rglob(f".*{TEMP_SUFFIX}"):
        parts = path.name.split(".")  # ["", <final name parts>..., <pid>, <random>, "tmp"]
        pid = int(parts[-3]) if len(parts) >= 5 and parts[-3].isdigit() else None
        if pid is not None and not pid_alive(pid):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (this process counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


class _TrackedFile:
    """A file object that remembers the OSError its last failed write raised."""

    def __init__(self, file: IO[Any]) -> None:
        self._file = file
        self.write_error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._file.write(data)
        except OSError as err:
            self.write_error = err
            raise

    def flush(self) -> None:
        try:
            self._file.flush()
        except OSError as err:
            self.write_error = err
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


@functools.cache
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(path)


def other_files(files: dict[Path, str]) -> list[Path]:
    """The paths of ``files`` (path -> the UTF-8 text a run means to write there) that already hold
    something else: a file the run did not write, which it must not write over."""
    return [path for path, text in files.items() if path.is_file() and path.read_bytes() != text.encode("utf-8")]


def write_texts_atomic(files: dict[Path, str]) -> None:
    """Write each text to its path atomically, skipping the files that already hold it (no change at all)."""
    for path, text in files.items():
        if not (path.is_file() and path.read_bytes() == text.encode("utf-8")):
            write_text_atomic(path, text)
