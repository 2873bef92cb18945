"""Pending calls (sans-IO): a bounded table with deadlines and provider accounting."""

from __future__ import annotations

import heapq
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


class CallTable:
    def __init__(self, max_pending: int) -> None:
        self.max_pending = max_pending
        self._calls: dict[int, PendingCall] = {}
        self._deadlines: list[tuple[float, int]] = []  # heap, lazily cleaned
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
        heapq.heappush(self._deadlines, (deadline, call_id))
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
        if call is not None and call.provider:
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
        heap = self._deadlines
        while heap and heap[0][1] not in self._calls:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def expire(self, now: float) -> list[PendingCall]:
        """Remove and return every call whose deadline has passed."""
        out = []
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            _, call_id = heapq.heappop(heap)
            call = self.pop(call_id)
            if call is not None:
                out.append(call)
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
