"""`macula run` under tracemalloc, for finding where a node's memory goes.

    python -m memory_traced_node SNAPSHOT_PREFIX macula-run-args...

On SIGUSR1 it writes SNAPSHOT_PREFIX.<n>.census (live objects per type, JSON) and
SNAPSHOT_PREFIX.<n> (tracemalloc.Snapshot.dump, renamed into place last), n = 0, 1, ...
The census shows objects whose memory tracemalloc cannot see (qh3 keeps each QUIC
connection's state in Rust).
Tracing costs memory and time itself: use it to compare snapshots, not for the figures.
"""

from __future__ import annotations

import collections
import gc
import itertools
import json
import os
import signal
import sys
import tracemalloc

FRAMES = 8


def mallinfo() -> dict[str, int]:
    """glibc's allocator totals (bytes): in use vs free but kept, in arenas and mmaps.
    Native allocations (qh3's Rust core) show here and not in tracemalloc."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    info = libc.mallinfo2()
    return {"in_use": info.uordblks + info.hblkhd, "free_kept": info.fordblks,
            "arena": info.arena}


def main() -> int:
    prefix = sys.argv[1]
    counter = itertools.count()
    tracemalloc.start(FRAMES)

    def dump(signum, frame) -> None:
        path = f"{prefix}.{next(counter)}"
        gc.collect()
        census = collections.Counter(f"{type(o).__module__}.{type(o).__qualname__}"
                                     for o in gc.get_objects())
        census.update({f"malloc.{k}": v for k, v in mallinfo().items()})
        with open(path + ".census", "w") as fh:
            json.dump(census, fh)
        tracemalloc.take_snapshot().dump(path + ".tmp")
        os.replace(path + ".tmp", path)

    signal.signal(signal.SIGUSR1, dump)
    from macula.cli.main import main as macula_main

    return macula_main(sys.argv[2:])


if __name__ == "__main__":
    raise SystemExit(main())
