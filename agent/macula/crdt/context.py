"""Dots and causal contexts.

A dot ``(replica, counter)`` names one event: replica ``r``'s ``n``-th write. A causal
context is the set of dots a state has seen. It is kept as sorted, disjoint,
non-adjacent closed intervals per replica, so the usual case ("everything from 1 to
n") costs one pair of ints however many writes were made and removed: a removed
OR-Set tag needs no tombstone once the dots before it have arrived. Dots that arrive
out of order are further intervals until the gap fills.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Any, Iterable, Iterator

from macula.crdt import wire as w
from macula.errors import StateError

Dot = tuple[bytes, int]
Intervals = list[tuple[int, int]]

_INF = float("inf")


def _coalesce(ordered: Iterable[tuple[int, int]]) -> Intervals:
    """Sorted intervals -> disjoint, non-adjacent intervals."""
    out: Intervals = []
    for lo, hi in ordered:
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def _covers(ivs: Intervals, counter: int) -> bool:
    if len(ivs) == 1:
        return ivs[0][0] <= counter <= ivs[0][1]
    i = bisect_right(ivs, (counter, _INF)) - 1
    return i >= 0 and counter <= ivs[i][1]


class DotContext:
    __slots__ = ("_iv",)

    def __init__(self) -> None:
        self._iv: dict[bytes, Intervals] = {}

    @classmethod
    def of(cls, dots: Iterable[Dot]) -> DotContext:
        ctx = cls()
        by_replica: dict[bytes, list[int]] = {}
        for replica, counter in dots:
            by_replica.setdefault(replica, []).append(counter)
        for replica, counters in by_replica.items():
            counters.sort()
            ctx._iv[replica] = _coalesce((c, c) for c in counters)
        return ctx

    # ---- queries ---------------------------------------------------------------------
    def __contains__(self, dot: Dot) -> bool:
        ivs = self._iv.get(dot[0])
        return ivs is not None and _covers(ivs, dot[1])

    def __bool__(self) -> bool:
        return bool(self._iv)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DotContext) and self._iv == other._iv

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        parts = (f"{r.hex()[:8]}:{ivs}" for r, ivs in sorted(self._iv.items()))
        return f"DotContext({', '.join(parts)})"

    def replicas(self) -> Iterable[bytes]:
        return self._iv.keys()

    def intervals(self, replica: bytes) -> Intervals:
        return list(self._iv.get(replica, ()))

    def max(self, replica: bytes) -> int:
        ivs = self._iv.get(replica)
        return ivs[-1][1] if ivs else 0

    def single(self) -> Dot | None:
        """The one dot, if this context holds exactly one."""
        if len(self._iv) != 1:
            return None
        replica, ivs = next(iter(self._iv.items()))
        return (replica, ivs[0][0]) if len(ivs) == 1 and ivs[0][0] == ivs[0][1] else None

    def interval_count(self) -> int:
        return sum(len(ivs) for ivs in self._iv.values())

    def issubset(self, other: DotContext) -> bool:
        for replica, ivs in self._iv.items():
            theirs = other._iv.get(replica)
            if theirs is None:
                return False
            for lo, hi in ivs:
                i = bisect_right(theirs, (lo, _INF)) - 1
                if i < 0 or theirs[i][1] < hi:
                    return False
        return True

    # ---- updates ---------------------------------------------------------------------
    def add(self, dot: Dot) -> None:
        replica, counter = dot
        ivs = self._iv.get(replica)
        if ivs is None:
            self._iv[replica] = [(counter, counter)]
            return
        lo, hi = ivs[-1]
        if counter == hi + 1:
            ivs[-1] = (lo, counter)   # the common case: the next write of that replica
        elif counter > hi + 1:
            ivs.append((counter, counter))
        elif not _covers(ivs, counter):
            self._iv[replica] = _coalesce(sorted(ivs + [(counter, counter)]))

    def next_dot(self, replica: bytes) -> Dot:
        """A fresh dot for ``replica``'s next write, recorded here."""
        counter = self.max(replica) + 1
        if counter > w.MAX_COUNTER:   # only a peer lying about our replica gets us here
            raise StateError(f"replica {replica.hex()[:16]} has no dots left")
        dot = (replica, counter)
        self.add(dot)
        return dot

    def join(self, other: DotContext) -> bool:
        """Union in place; True if this context grew."""
        grew = False
        for replica, theirs in other._iv.items():
            mine = self._iv.get(replica)
            if mine is None:
                self._iv[replica] = list(theirs)
                grew = True
            elif mine != theirs:
                merged = _coalesce(sorted(mine + theirs))
                if merged != mine:
                    self._iv[replica] = merged
                    grew = True
        return grew

    def copy(self) -> DotContext:
        ctx = DotContext()
        ctx._iv = {r: list(ivs) for r, ivs in self._iv.items()}
        return ctx

    def minus(self, dots: Iterable[Dot]) -> DotContext:
        """This context without ``dots`` (each must be in it): intervals split around them."""
        holes: dict[bytes, list[int]] = {}
        for replica, counter in dots:
            holes.setdefault(replica, []).append(counter)
        out = DotContext()
        for replica, ivs in self._iv.items():
            points = sorted(holes.get(replica, ()))
            rest: Intervals = []
            p = 0
            for lo, hi in ivs:
                while p < len(points) and points[p] <= hi:
                    if points[p] >= lo:
                        if points[p] > lo:
                            rest.append((lo, points[p] - 1))
                        lo = points[p] + 1
                    p += 1
                if lo <= hi:
                    rest.append((lo, hi))
            if rest:
                out._iv[replica] = rest
        return out

    def difference(self, other: DotContext) -> DotContext:
        """The dots of this context that ``other`` does not hold."""
        out = DotContext()
        for replica, ivs in self._iv.items():
            theirs = other._iv.get(replica)
            if not theirs:
                out._iv[replica] = list(ivs)
                continue
            rest: Intervals = []
            i = 0
            for lo, hi in ivs:
                while i < len(theirs) and theirs[i][1] < lo:
                    i += 1
                j = i
                while lo <= hi and j < len(theirs) and theirs[j][0] <= hi:
                    t_lo, t_hi = theirs[j]
                    if t_lo > lo:
                        rest.append((lo, t_lo - 1))
                    lo = max(lo, t_hi + 1)
                    j += 1
                if lo <= hi:
                    rest.append((lo, hi))
            if rest:
                out._iv[replica] = rest
        return out

    def restrict(self, replicas: set[bytes]) -> None:
        """Forget every replica not in ``replicas`` (in place)."""
        for replica in [r for r in self._iv if r not in replicas]:
            del self._iv[replica]

    def split(self, max_bytes: int) -> Iterator[DotContext]:
        """Contexts whose union is this one, each encoding to about ``max_bytes`` or less."""
        part = DotContext()
        used = 0
        for replica in sorted(self._iv):
            for interval in self._iv[replica]:
                # worst cases: a u64 is 9 bytes; a replica id has a 2-byte header plus
                # up to 5 bytes of array headers around it
                cost = 18 + (0 if replica in part._iv else len(replica) + 7)
                if part._iv and used + cost > max_bytes:
                    yield part
                    part, used = DotContext(), 0
                    cost = 18 + len(replica) + 7
                part._iv.setdefault(replica, []).append(interval)
                used += cost
        if part._iv:
            yield part

    # ---- wire ------------------------------------------------------------------------
    def to_wire(self) -> list:
        """``[[replica, [lo, hi, lo, hi, ...]], ...]`` sorted by replica."""
        return [[r, [n for iv in self._iv[r] for n in iv]] for r in sorted(self._iv)]

    @classmethod
    def from_wire(cls, wire: Any) -> DotContext:
        ctx = cls()
        for replica, flat in w.sorted_pairs(wire, "context", w.replica_id):
            flat = w.seq(flat, "context intervals")
            if not flat or len(flat) % 2:
                raise w.bad("context intervals must be a non-empty list of lo, hi pairs")
            ivs: Intervals = []
            for i in range(0, len(flat), 2):
                lo = w.uint(flat[i], "interval start", 1)
                hi = w.uint(flat[i + 1], "interval end", lo)
                if ivs and lo <= ivs[-1][1] + 1:
                    raise w.bad("context intervals must be sorted, disjoint and not adjacent")
                ivs.append((lo, hi))
            ctx._iv[replica] = ivs
        return ctx
