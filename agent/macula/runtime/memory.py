"""Give freed heap memory back to the OS.

Under churn (sessions, subscriptions and calls coming and going) glibc keeps freed chunks
in its arenas and the resident size creeps upward in steps although nothing leaks (the
memory soak: +3 MiB per 10 min, allocations flat). malloc_trim(0) returns what it can;
called every minute it keeps RSS flat. Elsewhere (musl, macOS) it is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_trim = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _trim = getattr(_libc, "malloc_trim", None)
    except OSError:
        _trim = None

TRIM_INTERVAL = 60.0


def trim_heap() -> bool:
    """Release free heap pages; False where the C library has no malloc_trim."""
    if _trim is None:
        return False
    _trim(0)
    return True
