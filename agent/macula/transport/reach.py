"""Reaching another node by its id: the one path every service sends through.

- ``AddressBook``: where each node listens, learnt from the DHT (contacts, records), the
  cluster (member addresses) and sessions (a peer's own listen address); bounded, most
  recently learnt kept. NAT traversal and bridges will add their own sources here.
- ``Reach.channel(...)``: a service's way to send to a node id. With a session, the
  service sends on it; without one, what it sends waits in one bounded queue per
  destination (the same length for every service, from the profile) while the node is
  dialled. The dial is shared by every channel, at most ``max_dials`` at once; one that
  fails, times out or reaches another node than the book says (the address was reused)
  puts the destination in an exponential backoff, during which sends to it fail at once
  rather than queue behind a dead node.
- ``Reach.connect(node_id, timeout)``: the same dial, awaited (RPC forwards a call on it).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any, Callable

from macula.errors import ErrorCode, MaculaError
from macula.runtime.backoff import Backoff

if TYPE_CHECKING:
    from macula.transport.pool import PeerPool
    from macula.transport.session import Session

log = logging.getLogger("macula.reach")

Address = tuple[str, int]
_UNSPECIFIED = ("0.0.0.0", "::", "")


class AddressBook:
    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._addrs: OrderedDict[bytes, Address] = OrderedDict()

    def learn(self, node_id: bytes, addr: Address | None) -> None:
        if addr is None or addr[0] in _UNSPECIFIED or not addr[1]:
            return
        self._addrs[node_id] = (addr[0], addr[1])
        self._addrs.move_to_end(node_id)
        while len(self._addrs) > self.max_entries:
            self._addrs.popitem(last=False)

    def address(self, node_id: bytes) -> Address | None:
        return self._addrs.get(node_id)

    def forget(self, node_id: bytes) -> None:
        self._addrs.pop(node_id, None)

    def __len__(self) -> int:
        return len(self._addrs)


class Channel:
    """One service's sends to node ids (see the module docstring)."""

    def __init__(self, reach: "Reach", name: str,
                 on_reached: Callable[["Session", list], None],
                 on_failed: Callable[[bytes, list], None] | None,
                 dial_when_full: bool) -> None:
        self.reach = reach
        self.name = name
        self.on_reached = on_reached      # (session, what waited for it, in order)
        self.on_failed = on_failed        # (node id, what waited for it)
        self.dial_when_full = dial_when_full
        self.waiting: dict[bytes, deque] = {}
        self.stats = {"queued": 0, "dropped": 0, "failed": 0}

    def send(self, node_id: bytes, item: Any, address: Address | None = None) -> bool:
        """Queue ``item`` for ``node_id`` and dial it (at ``address``, else the book's).
        False when nothing was queued: no address, the node is in its backoff, the pool
        is full for a channel that may not evict, or its queue is full (the oldest stays:
        order matters more than the newest)."""
        reach = self.reach
        queue = self.waiting.get(node_id)
        if queue is None:
            if not reach.can_dial(node_id, address, self.dial_when_full):
                self.stats["failed"] += 1
                return False
            queue = self.waiting[node_id] = deque()
            reach.dial(node_id, address)
        if len(queue) >= reach.queue_len:
            self.stats["dropped"] += 1
            return False
        queue.append(item)
        self.stats["queued"] += 1
        return True

    def dialing(self, node_id: bytes) -> bool:
        return node_id in self.waiting

    def _reached(self, node_id: bytes, session: "Session") -> None:
        items = self.waiting.pop(node_id, None)
        if items:
            self.on_reached(session, list(items))

    def _failed(self, node_id: bytes) -> None:
        items = self.waiting.pop(node_id, None)
        if items is not None:
            self.stats["dropped"] += len(items)
            if self.on_failed is not None:
                self.on_failed(node_id, list(items))


class Reach:
    def __init__(self, pool: "PeerPool", loop: asyncio.AbstractEventLoop, book: AddressBook, *,
                 queue_len: int, max_dials: int, dial_timeout: float,
                 backoff_base: float, backoff_cap: float,
                 rng: random.Random | None = None) -> None:
        self.pool = pool
        self.loop = loop
        self.book = book
        self.queue_len = queue_len
        self.dial_timeout = dial_timeout
        self._slots = asyncio.Semaphore(max_dials)
        self._base, self._cap = backoff_base, backoff_cap
        self._rng = rng or random.Random()
        self._channels: list[Channel] = []
        self._dials: dict[bytes, asyncio.Task] = {}
        # node -> (no dial before, its backoff); bounded by the book's size
        self._backoff: OrderedDict[bytes, tuple[float, Backoff]] = OrderedDict()
        self._closed = False
        self.stats = {"dials": 0, "dial_failures": 0, "wrong_node": 0, "backed_off": 0}

    def channel(self, name: str, on_reached: Callable[["Session", list], None],
                on_failed: Callable[[bytes, list], None] | None = None, *,
                dial_when_full: bool = True) -> Channel:
        ch = Channel(self, name, on_reached, on_failed, dial_when_full)
        self._channels.append(ch)
        return ch

    # -- called by the node --------------------------------------------------------------
    def peer_up(self, session: "Session") -> None:
        """A session came up (dialled by anyone): what waited for its node goes now."""
        p = session.peer
        if p is None:
            return
        if p.role == "node":
            self.book.learn(p.node_id, p.listen)
        self._backoff.pop(p.node_id, None)
        for ch in self._channels:
            ch._reached(p.node_id, session)

    async def close(self) -> None:
        self._closed = True
        tasks = list(self._dials.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- dialling ------------------------------------------------------------------------
    def backing_off(self, node_id: bytes) -> bool:
        entry = self._backoff.get(node_id)
        return entry is not None and self.loop.time() < entry[0]

    def can_dial(self, node_id: bytes, address: Address | None, when_full: bool) -> bool:
        if self._closed or node_id in self._dials:
            return not self._closed
        if len(self._dials) >= self.book.max_entries:   # bounded: destinations being dialled
            return False
        if self.backing_off(node_id):
            self.stats["backed_off"] += 1
            return False
        addr = address or self.book.address(node_id)
        if addr is None or addr[0] in _UNSPECIFIED:
            return False
        # a full pool would evict another peer to make room
        return when_full or len(self.pool.peers()) < self.pool.settings.max_peers

    def dial(self, node_id: bytes, address: Address | None = None) -> None:
        if node_id in self._dials or self._closed:
            return
        if address is not None:
            self.book.learn(node_id, address)
        task = self._dials[node_id] = self.loop.create_task(self._dial(node_id, address))
        task.add_done_callback(lambda _t, n=node_id: self._dials.pop(n, None))

    async def connect(self, node_id: bytes, timeout: float | None = None) -> "Session | None":
        """The node's session, dialled if needed; None when it cannot be reached now."""
        session = self.pool.get(node_id)
        if session is not None:
            return session
        if not self.can_dial(node_id, None, True):
            return None
        self.dial(node_id)
        task = self._dials.get(node_id)
        if task is None:
            return self.pool.get(node_id)
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except Exception:   # timed out, or the dial failed: the backoff has it
            return None
        return self.pool.get(node_id)

    async def _dial(self, node_id: bytes, address: Address | None) -> None:
        addr = address or self.book.address(node_id)
        reached = None
        try:
            if addr is None:
                raise MaculaError("no address known", code=ErrorCode.PEER_UNREACHABLE)
            async with self._slots:
                reached = self.pool.get(node_id)
                if reached is None:
                    self.stats["dials"] += 1
                    session = await self.pool.connect(addr[0], addr[1], timeout=self.dial_timeout)
                    if session.peer is None or session.peer.node_id != node_id:
                        self.stats["wrong_node"] += 1
                        self.book.forget(node_id)
                        raise MaculaError(f"{addr[0]}:{addr[1]} is another node now",
                                          code=ErrorCode.IDENTITY_INVALID)
                    reached = session
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # SessionRefused, OSError, timeouts: unreachable for now
            log.debug("cannot reach %s at %s: %s", node_id.hex()[:12], addr, exc)
            reached = None
        if reached is not None:
            self.peer_up(reached)   # usually done already by the session's PeerUp
            return
        self.stats["dial_failures"] += 1
        self._back_off(node_id)
        for ch in self._channels:
            ch._failed(node_id)

    def _back_off(self, node_id: bytes) -> None:
        now = self.loop.time()
        _, backoff = self._backoff.pop(node_id, None) or (0.0, Backoff(self._base, self._cap,
                                                                       self._rng))
        self._backoff[node_id] = (now + backoff.next_delay(), backoff)
        while len(self._backoff) > self.book.max_entries:
            self._backoff.popitem(last=False)

    def status(self) -> dict[str, Any]:
        waiting = {ch.name: sum(len(q) for q in ch.waiting.values()) for ch in self._channels}
        return {**self.stats, "dialling": len(self._dials), "addresses": len(self.book),
                "backing_off": sum(1 for n in self._backoff if self.backing_off(n)),
                "waiting": waiting,
                "dropped": {ch.name: ch.stats["dropped"] + ch.stats["failed"]
                            for ch in self._channels}}
