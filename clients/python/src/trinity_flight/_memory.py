"""Keeping freed memory in the process, for atoms that read large tables repeatedly."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Buffers up to this size come from the heap once memory is kept.
_MMAP_THRESHOLD = 64 << 20


def keep_freed_memory(up_to: int = 1 << 30) -> bool:
    """Let this process keep up to ``up_to`` bytes of freed memory instead of returning it.

    Reading a table of hundreds of megabytes, gRPC and Arrow allocate a buffer per message;
    by default glibc gives large freed buffers back to the operating system at once, so the
    next table faults every page in again, which can cost more than the transfer itself.
    After this call, buffers of up to 64 MiB come from the heap and freed memory stays in
    the process (up to ``up_to`` bytes) for the next table. It is the same as starting the
    process with ``MALLOC_TRIM_THRESHOLD_`` and ``MALLOC_MMAP_THRESHOLD_`` set, and applies
    to the whole process from now on. Returns ``False`` (and changes nothing) where the C
    library is not glibc.
    """
    if up_to < 0:
        raise ValueError("up_to must be a number of bytes, 0 or more")
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    trim = min(up_to, 2**31 - 1)
    mmap = min(_MMAP_THRESHOLD, trim)
    # mallopt returns 1 on success.
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap)) and bool(mallopt(_M_TRIM_THRESHOLD, trim))
