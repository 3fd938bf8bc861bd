"""Handing freed memory back to the operating system.

glibc's ``malloc`` keeps memory that a program freed for its own reuse, and raises its threshold
for fresh ``mmap`` allocations whenever a large block is freed: after a few large temporary arrays
(a tile of an image, its activations) the freed memory stays in the process's resident set, so
that scoring a lazy image tile by tile would grow the process as if the tiles were kept.
:func:`release_free_memory` asks glibc to return what is free (``malloc_trim(0)``); elsewhere it
does nothing.
"""

from __future__ import annotations

import ctypes
import sys

_libc = None


def release_free_memory() -> bool:
    """Return memory this process freed to the operating system (glibc only).

    Returns
    -------
    bool
        True if glibc's ``malloc_trim`` ran (on other systems it is not needed, or not offered).
    """
    global _libc
    if not sys.platform.startswith("linux"):
        return False
    try:
        if _libc is None:
            _libc = ctypes.CDLL("libc.so.6")
        _libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    return True
