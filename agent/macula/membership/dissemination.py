"""Piggybacked dissemination (SWIM section 4.1) and Lifeguard suspicion timeouts."""

from __future__ import annotations

import math
from bisect import bisect_left, insort

Update = tuple  # (node_id, state, incarnation, addr | None, suspected_by | None): wire MEMBER_UPDATE


class Broadcasts:
    """Updates waiting to ride on outgoing messages, at most one per member.

    The least transmitted go first, so news overtakes old news, and among those the
    newest; each is sent a bounded number of times (about retransmit_mult * log10(n)),
    enough for an epidemic to reach everyone with high probability. At the bound, the
    most transmitted (the oldest among those) is dropped.

    Kept in buckets by transmit count, each sorted by age, so taking a few updates for
    a message does not sort the whole queue (a large cluster joining fills it).
    """

    def __init__(self, max_items: int) -> None:
        self.max_items = max_items
        self._where: dict[bytes, tuple[int, int, Update]] = {}   # node -> (transmits, age, update)
        self._buckets: list[list[tuple[int, bytes]]] = [[]]      # transmits -> [(age, node)] by age
        self._age = 0

    def __len__(self) -> int:
        return len(self._where)

    def add(self, update: Update) -> None:
        node = update[0]
        if node in self._where:
            self._unlink(node)
        self._age += 1
        self._where[node] = (0, self._age, update)
        self._buckets[0].append((self._age, node))   # the newest: sorted by age still
        if len(self._where) > self.max_items:
            stalest = next(b for b in reversed(self._buckets) if b)[0][1]
            self._unlink(stalest)

    def take(self, n: int, limit: int, first: bytes | None = None) -> list[Update]:
        """Up to ``n`` updates for one message, ``first``'s update (if queued) leading."""
        chosen = [first] if first is not None and first in self._where else []
        for bucket in self._buckets:
            for _, node in reversed(bucket):           # newest first
                if len(chosen) == n:
                    break
                if node != first:
                    chosen.append(node)
            if len(chosen) == n:
                break
        out = []
        for node in chosen:
            transmits, age, update = self._unlink(node)
            out.append(update)
            if transmits + 1 < limit:
                self._where[node] = (transmits + 1, age, update)
                if len(self._buckets) == transmits + 1:
                    self._buckets.append([])
                insort(self._buckets[transmits + 1], (age, node))
        return out

    def _unlink(self, node: bytes) -> tuple[int, int, Update]:
        transmits, age, update = self._where.pop(node)
        bucket = self._buckets[transmits]
        del bucket[bisect_left(bucket, (age, node))]
        return transmits, age, update


def retransmit_limit(mult: int, n: int) -> int:
    return mult * max(1, math.ceil(math.log10(n + 1)))


class Suspicion:
    """Lifeguard's dynamic suspicion timeout (Dadgar et al., 2018, section IV-B).

    It starts at ``max_timeout`` and falls towards ``min_timeout`` as independent
    members confirm the suspicion: timeout = max - (max - min) * log(c + 1) / log(k + 1)
    for ``c`` confirmations out of ``k`` expected. A healthy member that is slow to
    refute gets time; a member that many can no longer reach goes quickly.
    """

    __slots__ = ("start", "suspectors", "min_timeout", "max_timeout", "expected", "deadline")

    def __init__(self, start: float, suspector: bytes, min_timeout: float, max_timeout: float,
                 expected: int) -> None:
        self.start = start
        self.suspectors = {suspector}
        self.min_timeout = min_timeout
        self.max_timeout = max_timeout
        self.expected = expected
        self.deadline = start + max_timeout if expected > 0 else start + min_timeout

    def confirm(self, suspector: bytes) -> bool:
        """Count an independent suspicion; True if it was new."""
        if suspector in self.suspectors:
            return False
        self.suspectors.add(suspector)
        if self.expected < 1:
            return True
        confirmations = min(len(self.suspectors) - 1, self.expected)
        frac = math.log(confirmations + 1) / math.log(self.expected + 1)
        timeout = self.max_timeout - (self.max_timeout - self.min_timeout) * frac
        self.deadline = self.start + max(self.min_timeout, timeout)
        return True
