"""Pending calls (sans-IO): a bounded table with deadlines and provider accounting."""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field
from typing import Any

from macula.errors import ErrorCode, MaculaError


class CallsFull(MaculaError):
    code = ErrorCode.CALL_OVERLOADED


@dataclass(slots=True)
class PendingCall:
    call_id: int            # our id on the provider leg
    caller: Any             # who gets the reply (an opaque handle of the edge)
    caller_call_id: int
    procedure: str
    args: bytes
    deadline: float
    idempotent: bool
    provider: bytes = b""
    tried: set = field(default_factory=set)
    remote: Any = ()        # the remote providers known when it was dispatched


BUCKET_MS = 50  # deadlines are kept in 50 ms buckets: a call times out up to 50 ms late


def _bucket(deadline: float) -> int:
    return -(-math.ceil(deadline * 1000) // BUCKET_MS)  # the bucket ending at or after it


class CallTable:
    """Calls by id, and their deadlines in coarse buckets (a timer wheel): answering a
    call removes it from its bucket in O(1), so finished calls leave nothing behind in
    a heap (a heap entry per call cost a push and a pop of log(calls per timeout))."""

    def __init__(self, max_pending: int) -> None:
        self.max_pending = max_pending
        self._calls: dict[int, PendingCall] = {}
        self._buckets: dict[int, set[int]] = {}   # bucket -> call ids due by its end
        self._bucket_heap: list[int] = []          # bucket numbers, each pushed once
        self._next_id = 1
        self.outstanding: dict[bytes, int] = {}  # provider -> calls in flight

    def __len__(self) -> int:
        return len(self._calls)

    def add(self, caller: Any, caller_call_id: int, procedure: str, args: bytes,
            deadline: float, idempotent: bool) -> PendingCall:
        if len(self._calls) >= self.max_pending:
            raise CallsFull(f"{self.max_pending} calls already in flight on this node")
        call_id = self._next_id
        self._next_id = (self._next_id + 1) & 0xFFFF_FFFF_FFFF or 1
        call = PendingCall(call_id, caller, caller_call_id, procedure, args, deadline, idempotent)
        self._calls[call_id] = call
        b = _bucket(deadline)
        ids = self._buckets.get(b)
        if ids is None:
            ids = self._buckets[b] = set()
            heapq.heappush(self._bucket_heap, b)
        ids.add(call_id)
        return call

    def assign(self, call: PendingCall, provider: bytes) -> None:
        if call.provider:
            self._release(call)
        call.provider = provider
        call.tried.add(provider)
        self.outstanding[provider] = self.outstanding.get(provider, 0) + 1

    def get(self, call_id: int) -> PendingCall | None:
        return self._calls.get(call_id)

    def pop(self, call_id: int) -> PendingCall | None:
        call = self._calls.pop(call_id, None)
        if call is not None:
            ids = self._buckets.get(_bucket(call.deadline))
            if ids is not None:
                ids.discard(call_id)
            if call.provider:
                self._release(call)
        return call

    def _release(self, call: PendingCall) -> None:
        n = self.outstanding.get(call.provider, 0) - 1
        if n > 0:
            self.outstanding[call.provider] = n
        else:
            self.outstanding.pop(call.provider, None)

    def calls_to(self, provider: bytes) -> list[PendingCall]:
        return [c for c in self._calls.values() if c.provider == provider]

    def next_deadline(self) -> float | None:
        """When the earliest bucket holding a call ends (at or after its deadlines)."""
        heap, buckets = self._bucket_heap, self._buckets
        while heap and not buckets.get(heap[0]):
            buckets.pop(heapq.heappop(heap), None)
        return heap[0] * BUCKET_MS / 1000 if heap else None

    def expire(self, now: float) -> list[PendingCall]:
        """Remove and return every call whose deadline bucket has ended by ``now``."""
        out = []
        heap, buckets = self._bucket_heap, self._buckets
        while heap and heap[0] * BUCKET_MS / 1000 <= now:
            for call_id in buckets.pop(heapq.heappop(heap), ()):
                call = self.pop(call_id)
                if call is not None:
                    out.append(call)
        out.sort(key=lambda c: c.deadline)
        return out


def choose_provider(candidates: list[bytes], outstanding: dict[bytes, int],
                    rng: random.Random) -> bytes:
    """Power of two choices on calls in flight: two at random, the less loaded wins."""
    n = len(candidates)
    if n == 1:
        return candidates[0]
    i = int(rng.random() * n)
    j = (i + 1 + int(rng.random() * (n - 1))) % n  # a second, different candidate
    a, b = candidates[i], candidates[j]
    return a if outstanding.get(a, 0) <= outstanding.get(b, 0) else b
