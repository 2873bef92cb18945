"""Hybrid logical clock (Kulkarni et al., 2014).

A timestamp is (wall milliseconds, logical counter, node). It stays close to wall
time but never goes backwards and always passes every timestamp it has observed, so a
write made after seeing another write is ordered after it even on a board whose clock
is behind. The node ID breaks ties, so two nodes never produce equal timestamps.

The clock reads no time itself: callers pass the wall time (Unix ms) in.

``max_drift_ms`` (default one hour, None to disable) bounds how far ahead of the local
wall clock an observed timestamp may be. Boards without a battery-backed clock boot
minutes or days off until NTP answers, so the bound is generous: it is there to stop
one board with a wild clock (year 2099) from dragging every clock in the mesh along.
"""

from __future__ import annotations

from typing import NamedTuple

from macula.crdt import wire as w
from macula.errors import StateError

MAX_LOGICAL = 0xFFFF_FFFF


class Timestamp(NamedTuple):
    ms: int
    logical: int
    node: bytes


class ClockSkew(StateError):
    """An observed timestamp is further ahead of our wall clock than allowed.

    Adopting it would drag this node's clock (and every later write) into the future;
    refusing it silently would let our next write lose. So the caller is told.
    """


class HLC:
    __slots__ = ("node", "max_drift_ms", "_ms", "_logical")

    def __init__(self, node: bytes, max_drift_ms: int | None = 3_600_000) -> None:
        self.node = w.check_replica(node)
        self.max_drift_ms = max_drift_ms
        self._ms = 0
        self._logical = 0

    @property
    def last(self) -> Timestamp:
        return Timestamp(self._ms, self._logical, self.node)

    def tick(self, wall_ms: int) -> Timestamp:
        """A timestamp for a local write: later than every one issued or observed."""
        if wall_ms > self._ms:
            self._ms, self._logical = wall_ms, 0
        elif self._logical < MAX_LOGICAL:
            self._logical += 1
        else:  # a burst beyond 2^32 events in one ms: borrow the next millisecond
            self._ms, self._logical = self._ms + 1, 0
        return Timestamp(self._ms, self._logical, self.node)

    def observe(self, ts: Timestamp, wall_ms: int) -> None:
        """Take in a timestamp seen on a state, so the next tick passes it."""
        if self.max_drift_ms is not None and ts.ms > wall_ms + self.max_drift_ms:
            raise ClockSkew(f"timestamp from node {ts.node.hex()[:16]} is {ts.ms - wall_ms} ms "
                            f"ahead of this clock (limit {self.max_drift_ms} ms)")
        if (ts.ms, ts.logical) > (self._ms, self._logical):
            self._ms, self._logical = ts.ms, ts.logical
