"""A bounded queue in front of a session, for traffic that may be dropped (deliveries).

While the session has room, frames go straight to it. When its send buffer is at the
bound (a slow reader, a congested link), frames wait here; when this queue is full
too, the OLDEST waiting frame is dropped and counted: a slow subscriber loses its
oldest messages instead of stalling the node or growing its memory.
"""

from __future__ import annotations

import asyncio
from collections import deque

from macula.transport.session import Session, State


class Outbox:
    __slots__ = ("session", "_queue", "_drainer", "dropped", "sent")

    def __init__(self, session: Session, max_frames: int) -> None:
        self.session = session
        self._queue: deque[bytes] = deque(maxlen=max_frames)
        self._drainer: asyncio.Task | None = None
        self.dropped = 0
        self.sent = 0

    def __len__(self) -> int:
        return len(self._queue)

    def put(self, frame: bytes) -> None:
        if not self._queue and self.session.send_frame(frame):
            self.sent += 1
            return
        if self.session.state is not State.ESTABLISHED:
            self.dropped += 1
            return
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1  # deque(maxlen) drops the oldest on append
        self._queue.append(frame)
        if self._drainer is None:
            self._drainer = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        session, queue = self.session, self._queue
        try:
            while queue and session.state is State.ESTABLISHED:
                while queue and session.send_frame(queue[0]):
                    queue.popleft()
                    self.sent += 1
                if queue:
                    await session.drain()
        except Exception:  # the session closed under us: what is left is dropped
            pass
        finally:
            if session.state is not State.ESTABLISHED:
                self.dropped += len(queue)
                queue.clear()
            self._drainer = None

    def close(self) -> None:
        if self._drainer is not None:
            self._drainer.cancel()
        self.dropped += len(self._queue)
        self._queue.clear()
