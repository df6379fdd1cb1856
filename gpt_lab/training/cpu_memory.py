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
keeps its peak memory until it exits. glibc only (Linux); elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_KEEP = 2**31 - 1  # mallopt takes an int: "never trim"

_kept = False


def keep_freed_memory() -> bool:
    """Make glibc's ``malloc`` keep freed memory for reuse (once per process); True if it now does."""
    global _kept
    if _kept:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _kept = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP))
    if _kept:
        log.debug("malloc keeps freed memory for reuse (M_MMAP_MAX=0, M_TRIM_THRESHOLD=%d)", _KEEP)
    return _kept
