"""Piggybacked dissemination (SWIM section 4.1) and Lifeguard suspicion timeouts."""

from __future__ import annotations

import math
from typing import Any

Update = tuple  # (node_id, state, incarnation, addr | None, suspected_by | None): wire MEMBER_UPDATE


class Broadcasts:
    """Updates waiting to ride on outgoing messages, at most one per member.

    The least transmitted go first, so news overtakes old news; each is sent a bounded
    number of times (about retransmit_mult * log10(n)), enough for an epidemic to reach
    everyone with high probability. At the bound, the most transmitted one is dropped.
    """

    def __init__(self, max_items: int) -> None:
        self.max_items = max_items
        self._items: dict[bytes, list[Any]] = {}   # node_id -> [update, transmits, age]
        self._age = 0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, update: Update) -> None:
        self._age += 1
        self._items[update[0]] = [update, 0, self._age]
        if len(self._items) > self.max_items:
            stalest = max(self._items.values(), key=lambda item: (item[1], -item[2]))
            del self._items[stalest[0][0]]

    def take(self, n: int, limit: int, first: bytes | None = None) -> list[Update]:
        """Up to ``n`` updates for one message, ``first``'s update (if queued) leading."""
        chosen = sorted(self._items.values(), key=lambda item: (item[0][0] != first, item[1], -item[2]))[:n]
        for item in chosen:
            item[1] += 1
            if item[1] >= limit:
                del self._items[item[0][0]]
        return [item[0] for item in chosen]


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
