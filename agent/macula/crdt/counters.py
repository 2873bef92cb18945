"""Grow-only and positive-negative counters (one entry per replica, max-merged)."""

from __future__ import annotations

from typing import Any

from macula.crdt import wire as w
from macula.errors import StateError


class GCounter:
    __slots__ = ("counts",)
    KIND = "gcounter"

    def __init__(self, counts: dict[bytes, int] | None = None) -> None:
        self.counts: dict[bytes, int] = {} if counts is None else counts

    def value(self) -> int:
        return sum(self.counts.values())

    def increment(self, replica: bytes, n: int = 1) -> GCounter:
        """Add ``n`` (>= 1) as ``replica``; returns the delta (that replica's new total)."""
        w.check_replica(replica)
        if type(n) is not int or n < 1:
            raise StateError("a counter grows by a positive int")
        total = self.counts.get(replica, 0) + n
        if total > w.MAX_COUNTER:
            raise StateError("counter would overflow 64 bits")
        self.counts[replica] = total
        return GCounter({replica: total})

    def merge(self, other: GCounter) -> bool:
        if type(other) is not type(self):
            raise w.bad(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        changed = False
        counts = self.counts
        for replica, n in other.counts.items():
            if n > counts.get(replica, 0):
                counts[replica] = n
                changed = True
        return changed

    def copy(self) -> GCounter:
        return GCounter(dict(self.counts))

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.counts == other.counts  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"GCounter({self.value()})"

    def is_bottom(self) -> bool:
        return not self.counts

    def split(self, max_bytes: int) -> list[GCounter]:
        if w.packed_len(self.to_wire()) <= max_bytes:
            return [self] if self.counts else []
        items = sorted(self.counts.items())
        return [GCounter(dict(group))
                for group in w.chunks(items, lambda item: len(item[0]) + 14, max_bytes - 8)]

    def to_wire(self) -> list:
        """``[[replica, count], ...]`` sorted by replica, zero counts left out."""
        return [[r, self.counts[r]] for r in sorted(self.counts)]

    @classmethod
    def from_wire(cls, wire: Any) -> GCounter:
        return cls({r: w.uint(n, "count", 1) for r, n in w.sorted_pairs(wire, "counter", w.replica_id)})


class PNCounter:
    """Two G-Counters: increments and decrements."""

    __slots__ = ("p", "n")
    KIND = "pncounter"

    def __init__(self, p: GCounter | None = None, n: GCounter | None = None) -> None:
        self.p = GCounter() if p is None else p
        self.n = GCounter() if n is None else n

    def value(self) -> int:
        return self.p.value() - self.n.value()

    def increment(self, replica: bytes, n: int = 1) -> PNCounter:
        return PNCounter(p=self.p.increment(replica, n))

    def decrement(self, replica: bytes, n: int = 1) -> PNCounter:
        return PNCounter(n=self.n.increment(replica, n))

    def merge(self, other: PNCounter) -> bool:
        if type(other) is not PNCounter:
            raise w.bad(f"cannot merge {type(other).__name__} into PNCounter")
        grew_p = self.p.merge(other.p)
        return self.n.merge(other.n) or grew_p

    def copy(self) -> PNCounter:
        return PNCounter(self.p.copy(), self.n.copy())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PNCounter) and self.p == other.p and self.n == other.n

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PNCounter({self.value()})"

    def is_bottom(self) -> bool:
        return self.p.is_bottom() and self.n.is_bottom()

    def split(self, max_bytes: int) -> list[PNCounter]:
        if w.packed_len(self.to_wire()) <= max_bytes:
            return [] if self.is_bottom() else [self]
        return ([PNCounter(p=part) for part in self.p.split(max_bytes - 2)]
                + [PNCounter(n=part) for part in self.n.split(max_bytes - 2)])

    def to_wire(self) -> list:
        return [self.p.to_wire(), self.n.to_wire()]

    @classmethod
    def from_wire(cls, wire: Any) -> PNCounter:
        p, n = w.seq(wire, "PN-counter", 2)
        return cls(GCounter.from_wire(p), GCounter.from_wire(n))
