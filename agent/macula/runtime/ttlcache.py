"""A TTL cache with an entry bound (LRU eviction) and an explicit sweep.

Reads never return an expired entry. Every insert also drops up to two expired entries
from the least recently used end, so a cache that keeps being written shrinks back to
what is live without a timer; ``sweep()`` reclaims all of them at once.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, Hashable, Iterator, TypeVar

from macula.runtime.clock import Clock

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_MISSING = object()


class TTLCache(Generic[K, V]):
    def __init__(self, max_entries: int, default_ttl: float, clock: Clock) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        if default_ttl <= 0:
            raise ValueError("default_ttl must be > 0")
        self.max_entries = max_entries
        self.default_ttl = default_ttl
        self._clock = clock
        self._items: OrderedDict[K, tuple[V, float]] = OrderedDict()  # value, expires_at
        self.evictions = 0
        self.expirations = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return self.get(key, _MISSING) is not _MISSING  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[K]:
        now = self._clock.now()
        return iter([k for k, (_, exp) in self._items.items() if exp > now])

    def set(self, key: K, value: V, ttl: float | None = None) -> None:
        ttl = self.default_ttl if ttl is None else ttl
        if ttl <= 0:
            self._items.pop(key, None)
            return
        items, now = self._items, self._clock.now()
        items[key] = (value, now + ttl)
        items.move_to_end(key)
        while len(items) > self.max_entries:
            items.popitem(last=False)
            self.evictions += 1
        for _ in range(2):   # amortised expiry: the oldest first
            oldest = next(iter(items))
            if oldest == key or items[oldest][1] > now:
                break
            del items[oldest]
            self.expirations += 1

    def get(self, key: K, default=None):
        entry = self._items.get(key)
        if entry is None:
            return default
        value, expires_at = entry
        if expires_at <= self._clock.now():
            del self._items[key]
            self.expirations += 1
            return default
        self._items.move_to_end(key)
        return value

    def ttl_left(self, key: K) -> float | None:
        entry = self._items.get(key)
        if entry is None:
            return None
        left = entry[1] - self._clock.now()
        return left if left > 0 else None

    def pop(self, key: K, default=None):
        entry = self._items.pop(key, None)
        return default if entry is None else entry[0]

    def clear(self) -> None:
        self._items.clear()

    def sweep(self) -> int:
        """Drop every expired entry; returns how many."""
        now = self._clock.now()
        dead = [k for k, (_, exp) in self._items.items() if exp <= now]
        for k in dead:
            del self._items[k]
        self.expirations += len(dead)
        return len(dead)
