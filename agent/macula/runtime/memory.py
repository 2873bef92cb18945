"""Give freed heap memory back to the OS.

Under churn (sessions, subscriptions and calls coming and going) glibc keeps freed chunks
in its arenas and the resident size creeps upward in steps although nothing leaks.
malloc_trim(0), called every minute, returns what it can. Elsewhere (musl, macOS) it is
a no-op.
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
ARENA_MAX = 2
_M_ARENA_MAX = -8  # mallopt parameter (malloc.h)


def limit_arenas(n: int = ARENA_MAX) -> bool:
    """Cap glibc's malloc arenas (as MALLOC_ARENA_MAX does). Each thread that allocates
    (executor threads: pin writes, name lookups) may otherwise get an arena of its own
    that keeps its freed chunks (the default cap is 8 per core)."""
    mallopt = getattr(_libc, "mallopt", None) if _trim is not None else None
    return bool(mallopt and mallopt(_M_ARENA_MAX, n) == 1)


def trim_heap() -> bool:
    """Release free heap pages; False where the C library has no malloc_trim."""
    if _trim is None:
        return False
    _trim(0)
    return True
