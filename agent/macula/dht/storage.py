"""Records held for others: a provider list per key, TTLs, bounds per publisher.

A key maps to one record per publisher (upsert), so many providers of one service
share a key. Every record expires (the original's never did); reads never return an
expired one and ``sweep`` reclaims them. A withdrawal leaves a tombstone until the
withdrawn record would have expired, so a late replica of it cannot bring it back.
Tombstones count toward their publisher's bound, but a publisher at its bound that
stores a new record itself gives up its oldest tombstone for it (a replica never does): a node whose clients come and
go with names used once (per-session topics and procedures) would otherwise be refused
its own new records for a record TTL after 256 withdrawals.
"""

from __future__ import annotations

from typing import NamedTuple

from macula.errors import ErrorCode


class Record(NamedTuple):
    publisher: bytes
    value: bytes
    expires: float      # absolute, on the clock of the node that holds this copy


class _Entry:
    __slots__ = ("value", "expires", "refreshed")

    def __init__(self, value: bytes | None, expires: float, refreshed: float) -> None:
        self.value = value            # None: tombstone
        self.expires = expires
        self.refreshed = refreshed    # last STORE received or replication sent


class RecordStore:
    def __init__(self, max_records: int, max_per_publisher: int, max_bytes_per_publisher: int,
                 max_ttl: float) -> None:
        if min(max_records, max_per_publisher, max_bytes_per_publisher) < 1 or max_ttl <= 0:
            raise ValueError("storage bounds must be positive")
        self.max_records = max_records
        self.max_per_publisher = max_per_publisher
        self.max_bytes_per_publisher = max_bytes_per_publisher
        self.max_ttl = max_ttl
        self._keys: dict[bytes, dict[bytes, _Entry]] = {}
        self._usage: dict[bytes, list[int]] = {}   # publisher -> [records, value bytes]
        self._tombs: dict[bytes, dict[bytes, None]] = {}  # publisher -> tombstoned keys, oldest 1st
        self.count = 0                             # records, tombstones included

    def __len__(self) -> int:
        return self.count

    def usage(self, publisher: bytes) -> tuple[int, int]:
        u = self._usage.get(publisher)
        return (u[0], u[1]) if u else (0, 0)

    def put(self, key: bytes, publisher: bytes, value: bytes, ttl: float, now: float,
            authoritative: bool) -> ErrorCode | None:
        """Upsert; None when accepted (or harmlessly ignored), else the refusal code.

        ``authoritative`` means the publisher itself sent it: it always replaces, and
        ttl 0 withdraws. A replica only replaces a copy that expires earlier.
        """
        recs = self._keys.get(key)
        old = recs.get(publisher) if recs is not None else None
        if ttl <= 0:
            if authoritative and old is not None and old.value is not None:
                self._account(publisher, 0, -len(old.value))
                old.value = None
                self._tombs.setdefault(publisher, {})[key] = None
            return None
        expires = now + min(ttl, self.max_ttl)
        if old is not None and not authoritative and expires <= old.expires:
            old.refreshed = now   # another holder has it too: no need to replicate soon
            return None
        u = self._usage.get(publisher)
        records, size = (u[0], u[1]) if u else (0, 0)
        old_size = len(old.value) if old is not None and old.value is not None else 0
        if old is None:
            if records + 1 > self.max_per_publisher and authoritative \
                    and self._drop_oldest_tomb(publisher):
                records -= 1
            if self.count >= self.max_records:
                return ErrorCode.OVERLOADED
            if records + 1 > self.max_per_publisher:
                return ErrorCode.STORE_REFUSED
        if size - old_size + len(value) > self.max_bytes_per_publisher:
            return ErrorCode.STORE_REFUSED
        if old is None:
            if recs is None:
                recs = self._keys[key] = {}
            recs[publisher] = _Entry(value, expires, now)
            self.count += 1
            self._account(publisher, 1, len(value))
        else:
            if old.value is None:  # a withdrawn record stored again
                self._forget_tomb(publisher, key)
            self._account(publisher, 0, len(value) - old_size)
            old.value, old.expires, old.refreshed = value, expires, now
        return None

    def _drop_oldest_tomb(self, publisher: bytes) -> bool:
        tombs = self._tombs.get(publisher)
        if not tombs:
            return False
        key = next(iter(tombs))
        self._forget_tomb(publisher, key)
        recs = self._keys[key]
        del recs[publisher]
        if not recs:
            del self._keys[key]
        self.count -= 1
        self._account(publisher, -1, 0)
        return True

    def _forget_tomb(self, publisher: bytes, key: bytes) -> None:
        tombs = self._tombs.get(publisher)
        if tombs is not None:
            tombs.pop(key, None)
            if not tombs:
                del self._tombs[publisher]

    def _account(self, publisher: bytes, records: int, size: int) -> None:
        u = self._usage.get(publisher)
        if u is None:
            u = self._usage[publisher] = [0, 0]
        u[0] += records
        u[1] += size
        if u[0] == 0:
            del self._usage[publisher]

    def get(self, key: bytes, now: float) -> list[Record]:
        recs = self._keys.get(key)
        if not recs:
            return []
        return [Record(p, e.value, e.expires) for p, e in recs.items()
                if e.value is not None and e.expires > now]

    def sweep(self, now: float) -> int:
        """Drop expired records and tombstones; returns how many."""
        dropped = 0
        for key in list(self._keys):
            recs = self._keys[key]
            for publisher in [p for p, e in recs.items() if e.expires <= now]:
                e = recs.pop(publisher)
                if e.value is None:
                    self._forget_tomb(publisher, key)
                self._account(publisher, -1, -len(e.value) if e.value is not None else 0)
                dropped += 1
            if not recs:
                del self._keys[key]
        self.count -= dropped
        return dropped

    def due(self, now: float, interval: float) -> list[bytes]:
        """Keys with a live record nobody stored or replicated for ``interval``."""
        deadline = now - interval
        return [key for key, recs in self._keys.items()
                if any(e.value is not None and e.expires > now and e.refreshed <= deadline
                       for e in recs.values())]

    def mark_replicated(self, key: bytes, now: float) -> None:
        for e in self._keys.get(key, {}).values():
            e.refreshed = now
