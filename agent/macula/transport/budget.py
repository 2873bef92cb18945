"""The node-wide bound on partially received frames.

A session may hold one frame in flight of up to ``max_frame`` bytes, and many sessions
doing so at once would exhaust the node's memory. Every session reports what its decoder holds after
each read; when the total passes the limit, the sessions whose frames made progress
least recently are named for closing (a slow or stalled sender, not the honest one
that is streaming now).
"""

from __future__ import annotations

from typing import Hashable


class ReceiveBudget:
    __slots__ = ("limit", "used", "_holders", "evicted")

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError("limit must be > 0")
        self.limit = limit
        self.used = 0
        self._holders: dict[Hashable, int] = {}  # insertion order = least recent progress first
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._holders)

    def update(self, holder: Hashable, held: int) -> list[Hashable]:
        """``holder`` now holds ``held`` bytes (0: none). Returns the holders to close so
        the total fits again; ``holder`` itself is named last, only if it alone is over."""
        holders = self._holders
        old = holders.pop(holder, 0)
        self.used -= old
        if not held:
            return []
        holders[holder] = held  # to the end: the most recent progress
        self.used += held
        victims: list[Hashable] = []
        while self.used > self.limit and holders:
            victim = next(iter(holders))
            self.used -= holders.pop(victim)
            victims.append(victim)
        self.evicted += len(victims)
        return victims
