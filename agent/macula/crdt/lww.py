"""Last-writer-wins register ordered by hybrid logical clock timestamps."""

from __future__ import annotations

from typing import Any

from macula.crdt import wire as w
from macula.crdt.hlc import HLC, Timestamp
from macula.errors import StateError


class LWWRegister:
    """Holds the value with the greatest (timestamp, packed value).

    The packed value only decides between equal timestamps, which a correct HLC never
    issues twice; it keeps merge commutative even for a replica that reused one.
    """

    __slots__ = ("timestamp", "_value", "_packed")
    KIND = "lww"

    def __init__(self) -> None:
        self.timestamp: Timestamp | None = None
        self._value: Any = None
        self._packed = b""

    def _order(self) -> tuple:
        return self.timestamp, self._packed

    def value(self) -> Any:
        """The current value (None when never set). Treat it as read-only."""
        return self._value

    def set(self, value: Any, clock: HLC, wall_ms: int) -> LWWRegister:
        """Write ``value`` stamped by ``clock``; returns the delta.

        The clock first observes the current timestamp, so this write wins over
        everything this replica has seen however far behind the local clock is.
        Raises ClockSkew if the current value claims a time too far in the future,
        and StateError if the value is not plain msgpack data or too large.
        """
        frozen, packed = w.freeze_value(value, StateError)
        if self.timestamp is not None:
            clock.observe(self.timestamp, wall_ms)
        self.timestamp, self._value, self._packed = clock.tick(wall_ms), frozen, packed
        return self.copy()

    def merge(self, other: LWWRegister) -> bool:
        if type(other) is not LWWRegister:
            raise w.bad(f"cannot merge {type(other).__name__} into LWWRegister")
        if other.timestamp is None or (self.timestamp is not None and other._order() <= self._order()):
            return False
        self.timestamp, self._value, self._packed = other.timestamp, other._value, other._packed
        return True

    def copy(self) -> LWWRegister:
        reg = LWWRegister()
        reg.timestamp, reg._value, reg._packed = self.timestamp, self._value, self._packed
        return reg

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LWWRegister) and self._order() == other._order()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"LWWRegister({self._value!r} @ {self.timestamp})"

    def is_bottom(self) -> bool:
        return self.timestamp is None

    def split(self, max_bytes: int) -> list[LWWRegister]:
        return [] if self.timestamp is None else [self]

    def to_wire(self) -> list:
        """``[]`` when never set, else ``[ms, logical, node, value]``."""
        ts = self.timestamp
        return [] if ts is None else [ts.ms, ts.logical, ts.node, self._value]

    @classmethod
    def from_wire(cls, wire: Any) -> LWWRegister:
        reg = cls()
        if not w.seq(wire, "register"):
            return reg
        ms, logical, node, value = w.seq(wire, "register", 4)
        reg.timestamp = Timestamp(w.uint(ms, "register ms"), w.uint(logical, "register logical", 0, 0xFFFF_FFFF),
                                  w.replica_id(node))
        reg._value, reg._packed = w.freeze_value(value, w.bad)
        return reg
