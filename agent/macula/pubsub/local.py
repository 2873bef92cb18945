"""In-process subscribers and publishers (edge): what deployed apps and the HTTP
gateway's SSE / WebSocket clients use instead of a client session.

A ``LocalSubscription`` is a sink of the pub/sub core like a client's outbox: bounded
in bytes (drop-oldest past the bound, counted), and back-pressure first: above a
quarter of the bound it holds the sessions or in-process publishers that fed it (the
node's ``FlowGate``), releases them when it has drained to an eighth, and gives up
holding after the gate's ``max_hold`` (a reader that stopped loses its own oldest
messages; it cannot stall a publisher).

A ``LocalPublisher`` is a source the gate can hold: ``send_control`` receives the
PUBSUB_FLOW a session would get, and ``publish`` waits (at most the hold it names)
while it is paused, as the SDK does for a client.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any

from macula.transport.outbox import FlowGate, Holds
from macula.wire.messages import Deliver

if TYPE_CHECKING:
    from macula.pubsub.service import PubSubService

OVERHEAD = 96  # bytes charged per message beyond payload and topic


class LocalSubscription:
    def __init__(self, service: "PubSubService", max_bytes: int, gate: FlowGate) -> None:
        self._service = service
        self.max_bytes = max_bytes
        self.high = max_bytes // 4
        self.low = max_bytes // 8
        self._queue: deque[tuple[Deliver, int]] = deque()
        self._bytes = 0
        # a reader that stopped: its own oldest messages are dropped, nobody held
        self._holds = Holds(gate, lambda: self._holds.give_up())
        self._waiter: asyncio.Future | None = None
        self.dropped = 0
        self.delivered = 0
        self.open = True

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    # -- the core's side ---------------------------------------------------------------
    def put(self, msg: Deliver, source: Any = None) -> None:
        if not self.open:
            return
        n = len(msg.payload) + len(msg.topic) + OVERHEAD
        queue = self._queue
        queue.append((msg, n))
        self._bytes += n
        self.delivered += 1
        while self._bytes > self.max_bytes and len(queue) > 1:
            self._bytes -= queue.popleft()[1]
            self.dropped += 1
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._bytes > self.high and source is not None:
            self._holds.hold(source)

    @property
    def holds(self) -> int:
        return self._holds.count

    # -- the reader's side -------------------------------------------------------------
    def get_nowait(self) -> Deliver | None:
        if not self._queue:
            return None
        msg, n = self._queue.popleft()
        self._bytes -= n
        if self._bytes <= self.low:
            holds = self._holds
            holds.gave_up = False
            if holds.sources:
                holds.release()
        return msg

    async def next(self, timeout: float | None = None) -> Deliver:
        """The next message; TimeoutError after ``timeout`` seconds, EOFError once closed."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            msg = self.get_nowait()
            if msg is not None:
                return msg
            if not self.open:
                raise EOFError("subscription closed")
            self._waiter = loop.create_future()
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                raise TimeoutError("no message in time")
            try:
                await asyncio.wait_for(self._waiter, left)
            finally:
                self._waiter = None

    def close(self) -> None:
        if self.open:
            self._service.unsubscribe_local(self)

    def closed(self) -> None:
        """Called by the service once the subscription is out of the router."""
        self.open = False
        self._queue.clear()
        self._bytes = 0
        self._holds.release()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class LocalPublisher:
    def __init__(self, service: "PubSubService") -> None:
        self._service = service
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._hold_until = 0.0
        self.pauses = 0

    @property
    def paused(self) -> bool:
        return not self._resumed.is_set()

    def send_control(self, flow: Any) -> bool:
        """The gate's PUBSUB_FLOW, as a session would receive it."""
        if flow.paused:
            self.pauses += 1
            self._hold_until = asyncio.get_running_loop().time() + flow.hold_ms / 1000.0
            self._resumed.clear()
        else:
            self._resumed.set()
        return True

    async def publish(self, topic: str, payload: bytes, reply_to: str | None = None,
                      headers: dict | None = None) -> None:
        """Publish, after waiting out a hold (never longer than the hold it was given).
        Raises TopicError."""
        if not self._resumed.is_set():
            left = self._hold_until - asyncio.get_running_loop().time()
            if left > 0:
                try:
                    await asyncio.wait_for(self._resumed.wait(), left)
                except TimeoutError:
                    pass
            self._resumed.set()
        self._service.publish(topic, payload, reply_to, headers, source=self)

    def close(self) -> None:
        self._service.forget_publisher(self)
