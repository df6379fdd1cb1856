"""Keep freed memory in the process for reuse: every training step then reuses the last step's pages.

A training step allocates and frees the same large tensors every time: the output head's logits
and their gradient (batch x context x 50,257 floats), the token embedding's gradient, bf16 copies
of the weights. glibc's ``malloc`` serves blocks over 32 MiB with ``mmap`` and hands them back
to the kernel on ``free``, and smaller ones are trimmed off the heap too, so each step the kernel
maps and zeroes them again, page by page: measured on GPT-2 small at context 256, about 300,000
page faults (1.2 GB) a step, a third of a bf16 step's time. Two ``mallopt`` settings keep those
pages in the process instead (``M_MMAP_MAX=0``: large blocks come from the heap;
``M_TRIM_THRESHOLD``: freed heap is never returned), the effect ``jemalloc`` or ``tcmalloc``
(``LD_PRELOAD``) are usually installed for, without a system library. The price: the process
keeps its peak memory while they hold. The train task holds them around ``trainer.fit`` only
(``freed_memory_kept``), then puts glibc's defaults back and returns the kept memory, so a notebook
or test process that trains once does not keep a changed allocator for its whole life. glibc only
(Linux); elsewhere this does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import sys
from collections.abc import Iterator

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_KEEP = 2**31 - 1  # mallopt takes an int: "never trim"
# glibc's defaults (malloc(3)): up to 65,536 mmap'd blocks, trim the heap above 128 KiB free.
_DEFAULT_MMAP_MAX = 65536
_DEFAULT_TRIM_THRESHOLD = 128 * 1024

_kept = False


def _libc() -> ctypes.CDLL | None:
    """The C library this process already runs on, if it is glibc (musl, for one, has no mallopt)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes, libc.mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = (ctypes.c_size_t,), ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def release_freed_memory() -> None:
    """Undo ``keep_freed_memory``: glibc's default settings, and the kept memory handed back to the system."""
    global _kept
    libc = _libc()
    if not _kept or libc is None:
        return
    libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
    libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
    libc.malloc_trim(0)
    _kept = False
    log.debug("malloc back to glibc's defaults; freed memory returned")


@contextlib.contextmanager
def freed_memory_kept(enabled: bool = True) -> Iterator[bool]:
    """``keep_freed_memory()`` for the ``with`` block only (when ``enabled``); yields whether it holds."""
    kept = enabled and keep_freed_memory()
    try:
        yield kept
    finally:
        if kept:
            release_freed_memory()


def keep_freed_memory() -> bool:
    """Make glibc's ``malloc`` keep freed memory for reuse (once per process); True if it now does."""
    global _kept
    if _kept:
        return True
    libc = _libc()
    if libc is None:
        return False
    _kept = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _KEEP))
    if _kept:
        log.debug("malloc keeps freed memory for reuse (M_MMAP_MAX=0, M_TRIM_THRESHOLD=%d)", _KEEP)
    return _kept
