"""A deterministic discrete-event simulator for sans-IO cores.

It hosts any object with the core shape (``handle_message(sender, msg, now)``,
``handle_timer(now)``, ``get_timer()``, ``messages_to_send()``, ``next_event()``, and
optionally ``handle_unreachable(node_id, now)``) on a virtual clock, and carries
their messages over simulated links: a latency distribution, random loss,
partitions between groups of nodes, and churn (``kill`` a node, ``add`` it again).
Everything random comes from one seeded ``random.Random``, and ties in time are
broken by insertion order, so a run is a pure function of its seed.

Messages can pass through ``macula.wire.encode`` and ``FrameDecoder`` (``codec``: the
fraction of messages that do; 1.0 checks every schema, 0.0 is for speed at 10,000
nodes). The sampling has its own random stream, so a run gives the same results
whatever ``codec`` is.

A destination is a node ID or a tuple whose first item is the node ID (a
``Contact``). The receiver is handed the sender as the sender registered itself in
``add`` (e.g. its Contact, or a bare node ID for a DHT client), as the node's edge
would from the session's CONNECT. A host's ``handle_timer(now)`` must move its timer
past ``now``; one that does not would spin the clock and stops the run instead.
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from macula.errors import ProtocolError
from macula.wire import FrameDecoder, encode

MSG, TIMER, CALL, FLUSH, UNREACHABLE = range(5)
INF = float("inf")


def default_latency(rng: random.Random) -> float:
    """10 ms floor plus an exponential tail, mean 50 ms: a city-scale mesh."""
    return 0.01 + rng.expovariate(25.0)


class SimError(RuntimeError):
    """The simulation itself went wrong (a schema broke, the queue overflowed)."""


@dataclass(slots=True)
class SimStats:
    sent: int = 0
    delivered: int = 0
    lost: int = 0              # random loss
    partitioned: int = 0       # dropped between partition groups
    to_dead: int = 0           # destination not running
    encoded: int = 0           # messages that went through the codec
    encoded_bytes: int = 0
    timers: int = 0


class _Slot:
    __slots__ = ("node_id", "host", "sender", "alive", "group", "timer_at")

    def __init__(self, node_id: bytes, host: Any, sender: Any) -> None:
        self.node_id = node_id
        self.host = host
        self.sender = sender
        self.alive = True
        self.group = 0
        self.timer_at = INF


class Sim:
    def __init__(self, seed: int = 0, *,
                 latency: Callable[[random.Random], float] = default_latency,
                 loss: float = 0.0, codec: float = 1.0, max_queue: int = 10_000_000,
                 unreachable_delay: float | None = None, fifo: bool = False,
                 on_event: Callable[[bytes, Any, float], None] | None = None) -> None:
        """``unreachable_delay``: when a message goes to a dead or partitioned node,
        tell the sender ``handle_unreachable`` this much later (a failed dial); None
        leaves it to the sender's own timeouts. ``fifo``: messages from one node to
        another arrive in the order they were sent (one stream, as a session's)."""
        if not 0.0 <= loss < 1.0 or not 0.0 <= codec <= 1.0:
            raise ValueError("loss in [0, 1), codec in [0, 1]")
        self.rng = random.Random(seed)
        self._codec_rng = random.Random(seed + 1)
        self.latency = latency
        self.loss = loss
        self.codec = codec
        self.max_queue = max_queue
        self.unreachable_delay = unreachable_delay
        self.on_event = on_event
        self.now = 0.0
        self.stats = SimStats()
        self._queue: list[tuple] = []
        self._seq = itertools.count().__next__
        self._slots: dict[bytes, _Slot] = {}
        self._decoder = FrameDecoder()
        self._last_arrival: dict[tuple[bytes, bytes], float] | None = {} if fifo else None

    # ---- population -------------------------------------------------------------------
    def add(self, node_id: bytes, host: Any, sender: Any = None) -> None:
        """Start hosting ``host`` as ``node_id`` (replacing a killed incarnation)."""
        if node_id in self._slots:
            raise ValueError("node already running; kill it first")
        slot = self._slots[node_id] = _Slot(node_id, host, node_id if sender is None else sender)
        self._flush(slot)

    def kill(self, node_id: bytes) -> None:
        """Crash: messages in flight to it and its timers are dropped."""
        self._slots.pop(node_id).alive = False

    def alive(self, node_id: bytes) -> bool:
        return node_id in self._slots

    def host(self, node_id: bytes) -> Any:
        return self._slots[node_id].host

    def __len__(self) -> int:
        return len(self._slots)

    def partition(self, *groups: Iterable[bytes]) -> None:
        """Drop traffic between the groups; nodes in no group form one more."""
        for slot in self._slots.values():
            slot.group = 0
        for n, group in enumerate(groups, 1):
            for node_id in group:
                self._slots[node_id].group = n

    def heal(self) -> None:
        self.partition()

    # ---- driving ----------------------------------------------------------------------
    def at(self, when: float, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` at virtual time ``when`` (e.g. a kill or an app call)."""
        self._push(max(when, self.now), CALL, fn, args, None)

    def call(self, node_id: bytes, fn: Callable[[Any, float], Any]) -> Any:
        """Run ``fn(host, now)`` on a node now and return its result (e.g. an op id);
        what it produced is carried out next, at the same virtual time, so the
        caller can register interest in the op's events first."""
        slot = self._slots[node_id]
        result = fn(slot.host, self.now)
        self._push(self.now, FLUSH, slot, None, None)
        return result

    def run(self, until: float) -> None:
        """Process every event up to and including ``until``; the clock ends there."""
        q = self._queue
        pop = heapq.heappop
        stats = self.stats
        while q and q[0][0] <= until:
            t, _, kind, a, b, c = pop(q)
            self.now = t
            if kind == MSG:
                if a.alive:
                    stats.delivered += 1
                    a.host.handle_message(b, c, t)
                    self._flush(a)
            elif kind == TIMER:
                if a.alive and a.timer_at == t:
                    a.timer_at = INF
                    stats.timers += 1
                    a.host.handle_timer(t)
                    self._flush(a)
                    if a.timer_at <= t:   # it would fire again at once, for ever
                        raise SimError(f"{a.host!r}: timer at {t} still due after handle_timer")
            elif kind == CALL:
                a(*b)
            elif kind == FLUSH:
                if a.alive:
                    self._flush(a)
            elif a.alive:
                a.host.handle_unreachable(b, t)
                self._flush(a)
        if until > self.now:
            self.now = until

    # ---- internals --------------------------------------------------------------------
    def _push(self, t: float, kind: int, a: Any, b: Any, c: Any) -> None:
        if len(self._queue) >= self.max_queue:
            raise SimError(f"event queue at its bound ({self.max_queue})")
        heapq.heappush(self._queue, (t, self._seq(), kind, a, b, c))

    def _flush(self, slot: _Slot) -> None:
        host = slot.host
        for dest, msg in host.messages_to_send():
            self._send(slot, dest, msg)
        on_event = self.on_event
        event = host.next_event()
        while event is not None:
            if on_event is not None:
                on_event(slot.node_id, event, self.now)
            event = host.next_event()
        t = host.get_timer()
        if t is not None and t < slot.timer_at:
            slot.timer_at = t
            self._push(t, TIMER, slot, None, None)

    def _send(self, src: _Slot, dest: Any, msg: Any) -> None:
        stats = self.stats
        stats.sent += 1
        dst_id = dest if type(dest) is bytes else dest[0]
        dst = self._slots.get(dst_id)
        if dst is None or dst.group != src.group:
            if dst is None:
                stats.to_dead += 1
            else:
                stats.partitioned += 1
            if self.unreachable_delay is not None and hasattr(src.host, "handle_unreachable"):
                self._push(self.now + self.unreachable_delay, UNREACHABLE, src, dst_id, None)
            return
        rng = self.rng
        if self.loss and rng.random() < self.loss:
            stats.lost += 1
            return
        if self.codec and (self.codec >= 1.0 or self._codec_rng.random() < self.codec):
            msg = self._roundtrip(msg)
        at = self.now + self.latency(rng)
        last = self._last_arrival
        if last is not None:
            link = (src.node_id, dst_id)
            at = max(at, last.get(link, 0.0))  # ties keep the sending order
            last[link] = at
        self._push(at, MSG, dst, src.sender, msg)

    def _roundtrip(self, msg: Any) -> Any:
        frame = encode(msg)
        self.stats.encoded += 1
        self.stats.encoded_bytes += len(frame)
        out = self._decoder.feed(frame)
        if len(out) != 1 or isinstance(out[0], ProtocolError):
            raise SimError(f"{type(msg).__name__} did not survive the codec: {out!r}")
        return out[0]
