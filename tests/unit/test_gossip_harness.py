"""A small deterministic network for driving sans-IO cores in tests.

Not the shared simulator (macula.sim): just enough to deliver messages between cores
with seeded delay and loss, cut links, take nodes down, and run every core's timers
on one virtual clock. Every message goes through the real frame codec, so schemas
and size bounds are checked on the way. Links are FIFO, as QUIC streams are.

Imported by the gossip and membership tests (pytest puts this directory on sys.path).
"""

from __future__ import annotations

import heapq
import random
from collections import Counter, defaultdict
from typing import Any

from macula.crdt import ORSet
from macula.errors import ProtocolError
from macula.gossip import GossipCore
from macula.wire import HEADER_SIZE, decode_body, encode

INF = float("inf")


def node_id(i: int) -> bytes:
    return i.to_bytes(2, "big") * 16


class Net:
    def __init__(self, seed: int, delay: tuple[float, float] = (0.002, 0.02), loss: float = 0.0) -> None:
        self.rng = random.Random(seed)
        self.delay = delay
        self.loss = loss
        self.now = 0.0
        self.cores: dict[bytes, Any] = {}
        self.down: set[bytes] = set()           # neither sends, receives nor runs timers
        self.cut: set[frozenset] = set()        # links that drop everything
        self.events: dict[bytes, list] = defaultdict(list)
        self.sent: Counter = Counter()          # message class name -> count
        self.largest: Counter = Counter()       # message class name -> largest frame
        self.trace: list[tuple[float, bytes, bytes, Any]] = []
        self.keep_trace = False
        self._queue: list = []
        self._seq = 0
        self._link_free: dict[tuple[bytes, bytes], float] = {}

    def add(self, nid: bytes, core: Any) -> Any:
        self.cores[nid] = core
        return core

    def connect(self, a: bytes, b: bytes) -> None:
        for x, y in ((a, b), (b, a)):
            self.cores[x].peer_connected(y, ("10.0.0.1", 4433), self.now)
            self.drain(x)

    def disconnect(self, a: bytes, b: bytes) -> None:
        for x, y in ((a, b), (b, a)):
            self.cores[x].peer_disconnected(y, self.now)
            self.drain(x)

    def cut_link(self, a: bytes, b: bytes) -> None:
        self.cut.add(frozenset((a, b)))

    def heal_link(self, a: bytes, b: bytes) -> None:
        self.cut.discard(frozenset((a, b)))

    def deliver(self, sender: bytes, dest: bytes, msg: Any) -> None:
        """Hand one message to ``dest`` now, as if it had just arrived."""
        self.cores[dest].handle_message(sender, msg, self.now)
        self.drain(dest)

    def drain(self, nid: bytes) -> None:
        """Collect a core's events and send its queued messages (after a direct call)."""
        core = self.cores[nid]
        while (event := core.next_event()) is not None:
            self.events[nid].append((self.now, event))
        for dest, msg in core.messages_to_send():
            frame = encode(msg)
            name = type(msg).__name__
            self.sent[name] += 1
            self.largest[name] = max(self.largest[name], len(frame))
            decoded = decode_body(frame[1], frame[HEADER_SIZE:])
            assert not isinstance(decoded, ProtocolError), decoded
            if self.keep_trace:
                self.trace.append((self.now, nid, dest, decoded))
            if self.rng.random() < self.loss:
                continue
            link = (nid, dest)
            at = max(self.now + self.rng.uniform(*self.delay), self._link_free.get(link, 0.0))
            self._link_free[link] = at + 1e-6
            self._seq += 1
            heapq.heappush(self._queue, (at, self._seq, nid, dest, decoded))

    def _blocked(self, a: bytes, b: bytes) -> bool:
        return a in self.down or b in self.down or frozenset((a, b)) in self.cut

    def run_until(self, until: float) -> None:
        while True:
            next_msg = self._queue[0][0] if self._queue else INF
            timers = [(t, nid) for nid, core in self.cores.items()
                      if nid not in self.down and (t := core.get_timer()) is not None]
            next_timer = min(timers)[0] if timers else INF
            t = min(next_msg, next_timer)
            if t > until:
                break
            self.now = max(self.now, t)
            if next_msg <= next_timer:
                _, _, sender, dest, msg = heapq.heappop(self._queue)
                if not self._blocked(sender, dest) and dest in self.cores:
                    self.deliver(sender, dest, msg)
                continue
            for due, nid in timers:
                if due <= t:
                    core = self.cores[nid]
                    core.handle_timer(self.now)
                    self.drain(nid)
                    after = core.get_timer()
                    assert after is None or after > self.now, f"timer did not advance: {after} <= {self.now}"
        self.now = max(self.now, until)

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)


def test_harness_is_deterministic() -> None:
    def trace(seed: int) -> list:
        net = Net(seed, loss=0.1)
        ids = [node_id(i) for i in range(4)]
        for i, nid in enumerate(ids):
            net.add(nid, GossipCore(nid, random.Random(i))).register("s", ORSet())
        net.keep_trace = True
        for i in range(4):
            for j in range(i + 1, 4):
                net.connect(ids[i], ids[j])
        for step in range(20):
            nid = ids[step % 4]
            net.cores[nid].update("s", lambda s: s.add(nid, step), net.now)
            net.run_for(0.5)
        return [(t, a, b, type(m).__name__) for t, a, b, m in net.trace]

    assert trace(1) == trace(1)
    assert trace(1) != trace(2)
