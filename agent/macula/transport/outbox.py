"""A bounded queue in front of a session, for deliveries, with back-pressure first and
drop-oldest as the last resort.

While the session has room, frames go straight to it. When its send buffer is at the
bound (a slow reader, a congested link), frames wait here, up to ``max_bytes`` for this
session and up to the node-wide ``budget`` for all queues together; past either, the
OLDEST waiting frame is dropped and counted, so memory stays bounded whatever the
message sizes and whoever ignores back-pressure.

Before that bound is reached, back-pressure: once the queue holds more than ``high``
bytes the outbox is congested, and ``put`` says so; the caller then ``hold``s the
session that fed the frame (a publishing client, or the node that routed it), and a
``FlowGate`` asks that session to pause (PUBSUB_FLOW). When the queue has drained to
``low`` bytes every held session is released. A hold lasts at most ``max_hold``: a
subscriber that stopped reading holds its publishers once, for that long, and then
only loses its own oldest messages (it cannot stall a publisher, nor the node).

A peer node can pause this outbox itself (``pause``): its own subscribers are
congested. Frames then queue here, and the outbox counts as congested, so the pause
travels back to the publisher. A peer pause ends after the time it names; while it
lasts this outbox does not give up, it renews its holds: the node at the edge, where
the slow subscriber is, is the one that gives up and drops.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Callable

from macula.transport.session import Session, State


class ByteBudget:
    """Bytes held by every outbox of a node together (limits.send_buffer_total_bytes)."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.limit = limit
        self.used = 0


class FlowGate:
    """Counts, per feeding session, the congested outboxes holding it back, and tells
    the session when that count leaves or returns to zero."""

    def __init__(self, make_flow: Callable[[bool, int], Any], max_hold: float) -> None:
        self.make_flow = make_flow        # (paused, hold_ms) -> a PUBSUB_FLOW message
        self.max_hold = max_hold
        self._held: dict[Session, int] = {}
        self.pauses = 0                   # PUBSUB_FLOW paused frames sent

    def held(self, session: Session) -> bool:
        return session in self._held

    def acquire(self, session: Session) -> None:
        if self.max_hold <= 0:  # back-pressure turned off: drop-oldest only
            return
        n = self._held.get(session, 0)
        self._held[session] = n + 1
        if n == 0:
            self.pauses += 1
            session.send_control(self.make_flow(True, int(self.max_hold * 1000)))

    def refresh(self, session: Session) -> None:
        """Still held: say so again before the session's own hold timer runs out."""
        if session in self._held:
            session.send_control(self.make_flow(True, int(self.max_hold * 1000)))

    def release(self, session: Session) -> None:
        n = self._held.get(session)
        if n is None:
            return
        if n > 1:
            self._held[session] = n - 1
            return
        del self._held[session]
        session.send_control(self.make_flow(False, 0))

    def forget(self, session: Session) -> None:
        """The session is gone: nothing to tell it."""
        self._held.pop(session, None)

    def __len__(self) -> int:
        return len(self._held)


class Holds:
    """The sources one congested sink (an outbox, an in-process subscriber) holds back
    through the gate: each once, all released together, for at most ``max_hold``; then
    ``on_expired`` decides (give up, or renew)."""

    __slots__ = ("gate", "sources", "timer", "gave_up", "count", "_on_expired")

    def __init__(self, gate: FlowGate | None, on_expired: Callable[[], None]) -> None:
        self.gate = gate
        self.sources: set[Any] = set()
        self.timer: asyncio.TimerHandle | None = None
        self.gave_up = False               # held past max_hold: hold nobody until drained
        self.count = 0                     # sources held, ever
        self._on_expired = on_expired

    def hold(self, source: Any) -> None:
        gate = self.gate
        if gate is None or self.gave_up or source in self.sources or gate.max_hold <= 0:
            return
        self.sources.add(source)
        self.count += 1
        gate.acquire(source)
        if self.timer is None:
            self.arm(gate.max_hold)

    def arm(self, seconds: float) -> None:
        self.timer = asyncio.get_running_loop().call_later(seconds, self._expired)

    def _expired(self) -> None:
        self.timer = None
        if self.sources:
            self._on_expired()

    def give_up(self) -> None:
        self.gave_up = True
        self.release()

    def release(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        sources, self.sources = self.sources, set()
        for source in sources:
            self.gate.release(source)


class Outbox:
    __slots__ = ("session", "max_bytes", "budget", "gate", "high", "low", "_queue", "_bytes",
                 "_drainer", "dropped", "sent", "_holds", "_paused_until", "_pause_timer",
                 "_resume")

    def __init__(self, session: Session, max_bytes: int, budget: ByteBudget,
                 gate: FlowGate | None = None) -> None:
        self.session = session
        self.max_bytes = max_bytes
        self.budget = budget
        self.gate = gate
        # congested above a quarter of the bound: the rest absorbs what the held
        # sessions had already sent (a round trip and their send buffers)
        self.high = max_bytes // 4
        self.low = max_bytes // 8
        self._queue: deque[bytes] = deque()
        self._bytes = 0
        self._drainer: asyncio.Task | None = None
        self.dropped = 0
        self.sent = 0
        self._holds = Holds(gate, self._hold_expired)
        self._paused_until = 0.0           # a peer node asked us to wait (loop time)
        self._pause_timer: asyncio.TimerHandle | None = None
        self._resume: asyncio.Future | None = None

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    @property
    def paused(self) -> bool:
        return self._paused_until > 0.0

    def put(self, frame: bytes, source: Session | None = None) -> bool:
        """Queue ``frame``; False when the outbox is congested, and then ``source`` (the
        session that fed it, if any) is held back."""
        queue = self._queue
        if not queue and not self._paused_until and self.session.send_frame(frame):
            self.sent += 1
            return True
        if self.session.state is not State.ESTABLISHED or self.session.too_large(len(frame)):
            self.dropped += 1  # a frame the subscriber's node would refuse is never queued
            return True
        n = len(frame)
        queue.append(frame)
        self._bytes += n
        budget = self.budget
        budget.used += n
        # one frame larger than the queue's bound is kept (only the node-wide budget
        # drops it): a frame the node accepted is not lost just for being large
        while queue and ((self._bytes > self.max_bytes and len(queue) > 1)
                         or budget.used > budget.limit):
            old = len(queue.popleft())  # drop the oldest: this queue's own, never another's
            self._bytes -= old
            budget.used -= old
            self.dropped += 1
        if self._drainer is None and queue:
            self._drainer = asyncio.get_running_loop().create_task(self._drain())
        if self._bytes <= self.high and not self._paused_until:
            return True
        if source is not None:
            self.hold(source)
        return False

    @property
    def holds(self) -> int:
        """Sessions held back by this outbox, ever."""
        return self._holds.count

    def hold(self, source: Session) -> None:
        """Hold back ``source`` until this outbox drains (or ``max_hold`` passes)."""
        if source is not self.session:
            self._holds.hold(source)

    def _hold_expired(self) -> None:
        holds = self._holds
        if self._paused_until:
            # the peer node holds us: its own hold is bounded and it gives up at its edge,
            # where the stuck subscriber is; giving up here would only drop in the middle
            for source in holds.sources:
                self.gate.refresh(source)
            holds.arm(self.gate.max_hold / 2)
            return
        holds.give_up()  # still congested after max_hold: stop holding, drop oldest

    def _drained(self) -> None:
        """Called as the queue shrinks: below ``low`` the congestion is over."""
        if self._bytes <= self.low and not self._paused_until:
            holds = self._holds
            holds.gave_up = False
            if holds.sources:
                holds.release()

    # -- a peer node's own back-pressure ------------------------------------------------
    def pause(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        seconds = max(0.001, seconds)
        self._paused_until = loop.time() + seconds
        if self._pause_timer is not None:
            self._pause_timer.cancel()
        self._pause_timer = loop.call_later(seconds, self.resume)

    def resume(self) -> None:
        if self._pause_timer is not None:
            self._pause_timer.cancel()
            self._pause_timer = None
        self._paused_until = 0.0
        if self._resume is not None and not self._resume.done():
            self._resume.set_result(None)
        if self._queue and self._drainer is None and self.session.state is State.ESTABLISHED:
            self._drainer = asyncio.get_running_loop().create_task(self._drain())
        self._drained()

    async def _drain(self) -> None:
        session, queue, budget = self.session, self._queue, self.budget
        try:
            while queue and session.state is State.ESTABLISHED:
                if self._paused_until:
                    self._resume = asyncio.get_running_loop().create_future()
                    await self._resume
                    continue
                while queue and session.send_frame(queue[0]):
                    n = len(queue.popleft())
                    self._bytes -= n
                    budget.used -= n
                    self.sent += 1
                self._drained()
                if queue:
                    await session.drain(len(queue[0]))
        except Exception:  # the session closed under us: what is left is dropped
            pass
        finally:
            self._drainer = None
            self._resume = None
            if session.state is not State.ESTABLISHED:
                self.close()
            else:
                self._drained()

    def close(self) -> None:
        if self._drainer is not None:
            self._drainer.cancel()
            self._drainer = None
        self.dropped += len(self._queue)
        self.budget.used -= self._bytes
        self._bytes = 0
        self._queue.clear()
        self._paused_until = 0.0
        if self._pause_timer is not None:
            self._pause_timer.cancel()
            self._pause_timer = None
        if self._holds.sources:
            self._holds.release()
