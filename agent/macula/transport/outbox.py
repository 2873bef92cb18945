"""A bounded queue in front of a session, for traffic that may be dropped (deliveries).

While the session has room, frames go straight to it. When its send buffer is at the
bound (a slow reader, a congested link), frames wait here, up to ``max_bytes`` for this
session and up to the node-wide ``budget`` for all queues together; past either, the
OLDEST waiting frame is dropped and counted. A slow subscriber loses its oldest messages
instead of stalling the node, other subscribers or the publisher, and memory stays
bounded whatever the message sizes.
"""

from __future__ import annotations

import asyncio
from collections import deque

from macula.transport.session import Session, State


class ByteBudget:
    """Bytes held by every outbox of a node together (limits.send_buffer_total_bytes)."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.limit = limit
        self.used = 0


class Outbox:
    __slots__ = ("session", "max_bytes", "budget", "_queue", "_bytes", "_drainer", "dropped",
                 "sent")

    def __init__(self, session: Session, max_bytes: int, budget: ByteBudget) -> None:
        self.session = session
        self.max_bytes = max_bytes
        self.budget = budget
        self._queue: deque[bytes] = deque()
        self._bytes = 0
        self._drainer: asyncio.Task | None = None
        self.dropped = 0
        self.sent = 0

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def put(self, frame: bytes) -> None:
        if not self._queue and self.session.send_frame(frame):
            self.sent += 1
            return
        if self.session.state is not State.ESTABLISHED:
            self.dropped += 1
            return
        n = len(frame)
        self._queue.append(frame)
        self._bytes += n
        budget = self.budget
        budget.used += n
        queue = self._queue
        while queue and (self._bytes > self.max_bytes or budget.used > budget.limit):
            old = len(queue.popleft())  # drop the oldest: this queue's own, never another's
            self._bytes -= old
            budget.used -= old
            self.dropped += 1
        if self._drainer is None and queue:
            self._drainer = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        session, queue, budget = self.session, self._queue, self.budget
        try:
            while queue and session.state is State.ESTABLISHED:
                while queue and session.send_frame(queue[0]):
                    n = len(queue.popleft())
                    self._bytes -= n
                    budget.used -= n
                    self.sent += 1
                if queue:
                    await session.drain()
        except Exception:  # the session closed under us: what is left is dropped
            pass
        finally:
            self._drainer = None
            if session.state is not State.ESTABLISHED:
                self.close()

    def close(self) -> None:
        if self._drainer is not None:
            self._drainer.cancel()
            self._drainer = None
        self.dropped += len(self._queue)
        self.budget.used -= self._bytes
        self._bytes = 0
        self._queue.clear()
