"""Arithmetic and /proc reading for the memory benchmark."""

from __future__ import annotations

import math
import statistics
from pathlib import Path


def median(values: list[float]) -> float:
    return statistics.median(values)


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope of ys over xs and its standard error."""
    n = len(xs)
    if n < 3:
        raise ValueError("need at least 3 samples for a trend")
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    residual = sum((y - my - slope * (x - mx)) ** 2 for x, y in zip(xs, ys))
    return slope, math.sqrt(residual / (n - 2) / sxx)


def smaps_breakdown(pid: int) -> str:
    """Where the resident memory is: anonymous (heap, Python objects) vs file-backed
    (interpreter, libraries), from /proc/PID/smaps_rollup."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        fields[key] = int(rest.split()[0]) / 1024
    file_backed = fields["Rss"] - fields["Anonymous"]
    return (f"anonymous {fields['Anonymous']:.1f} MiB, file-backed {file_backed:.1f} MiB "
            f"(shared with other processes: {fields.get('Shared_Clean', 0):.1f} MiB clean)")
