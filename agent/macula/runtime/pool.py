"""A bounded pool of keyed resources with LRU order and idle-time expiry.

The pool itself never blocks and never closes anything: it says what to evict or
expire and the owner (e.g. the connection pool) closes it. That keeps the policy
testable with a ManualClock.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Generic, Hashable, Iterator, TypeVar

from macula.errors import Overloaded
from macula.runtime.clock import Clock

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class PoolFull(Overloaded):
    """The pool is at its bound and nothing in it may be evicted."""


class BoundedPool(Generic[K, V]):
    def __init__(self, capacity: int, clock: Clock, idle_ttl: float | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self.idle_ttl = idle_ttl
        self._clock = clock
        # key -> (value, last_used); order = least recently used first
        self._items: OrderedDict[K, list] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._items))

    def items(self) -> list[tuple[K, V]]:
        return [(k, entry[0]) for k, entry in self._items.items()]

    def get(self, key: K) -> V | None:
        """Return the value and mark it used now."""
        entry = self._items.get(key)
        if entry is None:
            return None
        entry[1] = self._clock.now()
        self._items.move_to_end(key)
        return entry[0]

    def peek(self, key: K) -> V | None:
        entry = self._items.get(key)
        return None if entry is None else entry[0]

    def touch(self, key: K) -> None:
        self.get(key)

    def put(self, key: K, value: V,
            evictable: Callable[[K, V], bool] = lambda k, v: True) -> list[tuple[K, V]]:
        """Insert or replace; when full, evict least recently used evictable entries.

        Returns what was evicted (the caller closes it). Raises PoolFull when the
        pool is full and nothing may be evicted: a bound is never exceeded.
        """
        now = self._clock.now()
        if key in self._items:
            self._items[key] = [value, now]
            self._items.move_to_end(key)
            return []
        evicted: list[tuple[K, V]] = []
        if len(self._items) >= self.capacity:
            for old_key, entry in self._items.items():
                if evictable(old_key, entry[0]):
                    evicted.append((old_key, entry[0]))
                    break
            if not evicted:
                raise PoolFull(f"pool full ({self.capacity} entries) and nothing evictable")
            del self._items[evicted[0][0]]
        self._items[key] = [value, now]
        return evicted

    def pop(self, key: K) -> V | None:
        entry = self._items.pop(key, None)
        return None if entry is None else entry[0]

    def expire_idle(self) -> list[tuple[K, V]]:
        """Remove and return entries unused for longer than ``idle_ttl``."""
        if self.idle_ttl is None:
            return []
        deadline = self._clock.now() - self.idle_ttl
        expired = []
        for key, entry in self._items.items():
            if entry[1] > deadline:
                break  # LRU order: everything after is more recent
            expired.append((key, entry[0]))
        for key, _ in expired:
            del self._items[key]
        return expired
