"""The connection pool: every session of a node, bounded, reused and kept alive.

- Node peers live in a BoundedPool (``max_peers``) in LRU order of application
  traffic; when it is full the least recently used peer that is not a wanted peer
  (a seed) is sent GOAWAY to make room, and if none may go the newcomer is refused
  with OVERLOADED. Light clients have their own bound (``max_clients``).
- ``connect(host, port)`` reuses a live session to that address, joins a dial
  already under way, or dials.
- Wanted addresses (seeds) are redialled after a drop with exponential backoff and
  full jitter; a peer unused for ``idle_ttl`` is closed.
- Every ``keepalive`` seconds each session is PINGed; PONGs give its RTT. A session
  that leaves a PING unanswered, or a frame unfinished, past its deadline is closed.
- One source address may hold at most ``sessions_per_source`` inbound sessions (and a
  quarter of the handshake slots); when the client table is full, the least recently
  active client makes room for a new one, so throw-away identities cannot lock out
  honest clients.
- ``close()``: GOAWAY to all, wait for send buffers to drain (bounded), close.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field
from typing import Any, Callable

from macula.errors import ErrorCode, SessionRefused
from macula.runtime.backoff import Backoff
from macula.runtime.clock import Clock, MonotonicClock
from macula.runtime.pool import BoundedPool, PoolFull
from macula.transport.quic import Endpoint, QuicLink
from macula.transport.session import Session, SessionConfig, State

log = logging.getLogger("macula.pool")

DUPLICATE_GRACE = 2.0  # seconds a retired duplicate session stays open to drain

Address = tuple[str, int]


# refusals a peer answers a dial with that no retry can change until someone fixes a
# config or a key: such a seed is shown as refused and dialled at most every REFUSED_RETRY s
REFUSALS = frozenset({ErrorCode.REALM_MISMATCH, ErrorCode.VERSION_MISMATCH,
                      ErrorCode.IDENTITY_INVALID, ErrorCode.PEER_KEY_CHANGED,
                      ErrorCode.CERT_REJECTED})
REFUSED_RETRY = 60.0


@dataclass
class PoolSettings:
    max_peers: int = 256
    max_clients: int = 512
    idle_ttl: float = 300.0
    keepalive: float = 15.0
    connect_timeout: float = 10.0
    reconnect_base: float = 0.5
    reconnect_cap: float = 30.0
    shutdown_timeout: float = 2.0
    sessions_per_source: int = 256


@dataclass
class _Wanted:
    backoff: Backoff
    next_attempt: float = 0.0
    task: asyncio.Task | None = None
    last_error: str = ""
    refused: bool = False  # the last error was a refusal (realm, key, certificate, version)
    is_self: bool = False
    tried: asyncio.Event = field(default_factory=asyncio.Event)  # first dial finished


@dataclass
class PoolStats:
    dials: int = 0
    dial_failures: int = 0
    accepted: int = 0
    refused_full: int = 0
    evicted: int = 0
    idle_closed: int = 0
    duplicates: int = 0
    refused_source: int = 0
    clients_evicted: int = 0
    unhealthy_closed: int = 0
    extra: dict = field(default_factory=dict)


class PeerPool:
    def __init__(self, endpoint: Endpoint, cfg: SessionConfig, settings: PoolSettings,
                 clock: Clock | None = None, rng: random.Random | None = None) -> None:
        from collections import Counter
        self.endpoint = endpoint
        self.cfg = cfg
        self.settings = settings
        self.clock = clock or MonotonicClock()
        self._rng = rng or random.Random()
        self._peers: BoundedPool[bytes, Session] = BoundedPool(settings.max_peers, self.clock,
                                                               settings.idle_ttl)
        self._clients: dict[bytes, Session] = {}
        self._pending: set[Session] = set()
        self._max_pending = max(16, settings.max_peers // 4)
        self._pending_per_source = max(2, self._max_pending // 4)
        self._inbound: Counter[str] = Counter()   # source IP -> inbound sessions, any state
        self._by_addr: dict[Address, bytes] = {}
        self._dialing: dict[Address, asyncio.Future] = {}
        self._wanted: dict[Address, _Wanted] = {}
        self._maintenance: asyncio.Task | None = None
        self._closing = False
        self.stats = PoolStats()
        self.on_peer_up: Callable[[Session], None] = lambda s: None
        self.on_peer_down: Callable[[Session], None] = lambda s: None
        self._on_message: Callable[[Session, Any], None] = lambda s, m: None
        if cfg.role != "client":
            # a light client only dials: a node redialling a stale address that the OS
            # gave to a client's socket must not land in (and evict from) its pool
            endpoint.on_accept = self._accept

    @property
    def on_message(self) -> Callable[[Session, Any], None]:
        return self._on_message

    @on_message.setter
    def on_message(self, handler: Callable[[Session, Any], None]) -> None:
        """Where application messages go; sessions call it directly (hot path)."""
        self._on_message = handler
        for session in self.peers() + self.clients() + list(self._pending):
            session._on_message = handler

    # -- views ----------------------------------------------------------------------
    @property
    def node_id(self) -> bytes:
        return self.cfg.identity.node_id

    def peers(self) -> list[Session]:
        return [s for _, s in self._peers.items()]

    def clients(self) -> list[Session]:
        return list(self._clients.values())

    def get(self, node_id: bytes) -> Session | None:
        """The live session to a node (peer or client), marked as used."""
        session = self._peers.get(node_id)
        if session is None:
            session = self._clients.get(node_id)
        return session if session is not None and session.state is State.ESTABLISHED else None

    def wanted(self) -> dict[Address, str]:
        """Wanted addresses and their last error ('' when connected)."""
        return {addr: w.last_error for addr, w in self._wanted.items() if not w.is_self}

    def seed_states(self) -> dict[Address, str]:
        """What each wanted address is now: 'connected', 'dialling' (no attempt has
        failed since it was last connected), 'unreachable: why' or 'refused: why' (the
        peer answered and said no: realm, key, certificate or version)."""
        out = {}
        for addr, w in self._wanted.items():
            if w.is_self:
                continue
            node_id = self._by_addr.get(addr)
            if node_id is not None and self.get(node_id) is not None:
                out[addr] = "connected"
            elif w.last_error:
                out[addr] = f"{'refused' if w.refused else 'unreachable'}: {w.last_error}"
            else:
                out[addr] = "dialling"
        return out

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        if self._maintenance is None:
            self._maintenance = asyncio.get_running_loop().create_task(self._maintain())

    async def close(self) -> None:
        self._closing = True
        if self._maintenance is not None:
            self._maintenance.cancel()
        for w in self._wanted.values():
            if w.task is not None:
                w.task.cancel()
        sessions = self.peers() + self.clients()
        # a light client's pool closes too: the node would log it as shutting down
        client = self.cfg.role == "client"
        reason = "client closed the connection" if client else "node shutting down"
        for s in sessions:
            s.goaway(reason)
        deadline = self.endpoint.loop.time() + self.settings.shutdown_timeout
        while any(s.link.buffered for s in sessions if not s.link.closed):
            if self.endpoint.loop.time() >= deadline:
                break
            await asyncio.sleep(0.01)  # drain poll: bounded by the shutdown timeout
        for s in sessions + list(self._pending):
            s.close(ErrorCode.GOING_AWAY, "node shut down")
        await asyncio.sleep(0)  # let the scheduled link closes run before the socket goes
        self.endpoint.close()

    # -- accepting and dialling ----------------------------------------------------
    def _new_session(self, link: QuicLink, dial_address: Address | None = None) -> Session:
        session = Session(link, self.cfg, on_admit=self._admit,
                          on_established=self._established, on_message=self._on_message,
                          on_closed=self._closed)
        session.dial_address = dial_address
        self._pending.add(session)
        return session

    def _accept(self, link: QuicLink) -> bool:
        if self._closing or len(self._pending) >= self._max_pending:
            return False
        # handshakes in progress from one address are capped here, silently (a flood);
        # the cap on its sessions is told to the dialer in _admit (an honest host)
        source = _source(link)
        if sum(1 for s in self._pending if not s.dialer and _source(s.link) == source) \
                >= self._pending_per_source:
            self.stats.refused_source += 1
            return False
        self.stats.accepted += 1
        self._inbound[source] += 1
        self._new_session(link)
        return True

    async def connect(self, host: str, port: int, timeout: float | None = None) -> Session:
        """A session to ``host:port``: reused if live, else joined or dialled."""
        addr = (host, port)
        node_id = self._by_addr.get(addr)
        if node_id is not None:
            live = self.get(node_id)
            if live is not None:
                return live
        dialing = self._dialing.get(addr)
        if dialing is not None:
            return await asyncio.shield(dialing)
        if self._closing:
            raise SessionRefused("node is shutting down", code=ErrorCode.GOING_AWAY)
        fut = asyncio.get_running_loop().create_future()
        self._dialing[addr] = fut
        self.stats.dials += 1
        try:
            session = self._new_session(self.endpoint.dial(host, port), addr)
            try:
                result = await asyncio.wait_for(session.established(),
                                                timeout or self.settings.connect_timeout)
            except asyncio.TimeoutError:
                session.close(ErrorCode.TIMEOUT, "connect timed out")
                raise SessionRefused(f"no session with {host}:{port} within "
                                     f"{timeout or self.settings.connect_timeout:g} s",
                                     code=ErrorCode.TIMEOUT) from None
            except SessionRefused as err:
                if err.code is ErrorCode.DUPLICATE_SESSION:
                    # the peer dialled us at the same moment and kept its own session; a
                    # refusal carries no identity, so find that session by its address
                    peer_id = session.peer.node_id if session.peer else self._by_addr.get(addr)
                    live = self.get(peer_id) if peer_id is not None else None
                    if live is not None:
                        result = live
                    else:
                        raise
                else:
                    raise
            if result.retired:  # lost a simultaneous dial: use the session that won
                result = self.get(result.peer.node_id) or result
            fut.set_result(result)
            return result
        except BaseException as exc:
            self.stats.dial_failures += 1
            if not fut.done():
                fut.set_exception(exc if isinstance(exc, Exception) else SessionRefused(
                    "dial cancelled", code=ErrorCode.CANCELLED))
                fut.exception()
            raise
        finally:
            self._dialing.pop(addr, None)

    def keep_connected(self, host: str, port: int) -> None:
        """Keep a session to this address (a seed), redialling with backoff."""
        addr = (host, port)
        if addr not in self._wanted:
            self._wanted[addr] = _Wanted(Backoff(self.settings.reconnect_base,
                                                 self.settings.reconnect_cap, self._rng))

    # -- session events -------------------------------------------------------------
    def _admit(self, session: Session) -> None:
        """Take the peer into the pool or raise SessionRefused; runs before CONNECTED."""
        self._pending.discard(session)
        peer = session.peer
        assert peer is not None
        if peer.node_id == self.node_id:
            wanted = self._wanted.get(session.dial_address)  # a seed list naming this node
            if wanted is not None:
                wanted.is_self = True
            raise SessionRefused("connected to itself", code=ErrorCode.DUPLICATE_SESSION)
        if not session.dialer:
            source = _source(session.link)
            if self._inbound[source] > self.settings.sessions_per_source:
                self.stats.refused_source += 1
                raise SessionRefused(f"more than {self.settings.sessions_per_source} sessions "
                                     f"from {source}", code=ErrorCode.OVERLOADED)
        if peer.role == "client":
            old = self._clients.get(peer.node_id)
            if old is None and len(self._clients) >= self.settings.max_clients:
                if not self._clients:
                    self.stats.refused_full += 1
                    raise SessionRefused(f"client limit of {self.settings.max_clients} reached",
                                         code=ErrorCode.OVERLOADED)
                # A client that never sent anything since CONNECT makes room first (a
                # flood of throw-away identities pushes out its own kind, not an idle
                # subscriber or provider), else the least recently active one (the table
                # is kept in activity order by maintenance).
                idle = next((c for c in self._clients.values() if not c.spoke),
                            next(iter(self._clients.values())))
                self.stats.clients_evicted += 1
                idle.goaway("client table full", ErrorCode.OVERLOADED)
                idle.close(ErrorCode.OVERLOADED, "evicted: client table full, least active")
            self._clients[peer.node_id] = session
            if old is not None:
                old.close(ErrorCode.DUPLICATE_SESSION, "replaced by a newer session")
                # a client that reconnects starts afresh and sends its subscriptions and
                # procedures again: what the old session held goes now, before the new
                # session's first frame (its _closed no longer finds it in the table)
                self.on_peer_down(old)
            return
        existing = self._peers.peek(peer.node_id)
        if existing is not None and existing.state is State.ESTABLISHED \
                and existing.peer.boot != peer.boot:
            # the node restarted (crash, watchdog): its old session is dead, replace it now
            # rather than refuse the new one until the old one idles out
            self._peers.pop(peer.node_id)
            existing.close(ErrorCode.GOING_AWAY, "the peer restarted")
            self._forget_peer(existing)
            existing = None
        if existing is not None and existing.state is State.ESTABLISHED:
            # Two nodes dialled each other at once. Both keep the session dialled by the
            # smaller node ID; the other is retired: out of the table at once, closed after
            # a grace period, so frames already sent on it are not lost.
            self.stats.duplicates += 1
            if self._dialer_of(session) > self._dialer_of(existing):
                if not session.dialer:  # nothing was sent on it yet: just refuse it
                    raise SessionRefused("a session to this node exists",
                                         code=ErrorCode.DUPLICATE_SESSION)
                session.retired = True  # the peer already uses it: let it drain
                return
            self._peers.pop(peer.node_id)
            self._retire(existing)
        try:
            evicted = self._peers.put(peer.node_id, session, evictable=self._evictable)
        except PoolFull:
            self.stats.refused_full += 1
            raise SessionRefused(f"peer limit of {self.settings.max_peers} reached",
                                 code=ErrorCode.OVERLOADED) from None
        for _, old in evicted:
            self.stats.evicted += 1
            old.goaway("peer pool full", ErrorCode.OVERLOADED)
            old.close(ErrorCode.OVERLOADED, "evicted: peer pool full")
            self._forget_peer(old)

    def _retire(self, session: Session) -> None:
        session.retired = True
        self.endpoint.loop.call_later(DUPLICATE_GRACE, session.close,
                                      ErrorCode.DUPLICATE_SESSION, "duplicate session retired")

    def _established(self, session: Session) -> None:
        peer = session.peer
        assert peer is not None
        if session.retired:
            self._retire(session)
            return
        if peer.role != "client":
            dial_addr = session.dial_address
            if dial_addr is not None:
                self._by_addr[dial_addr] = peer.node_id
                wanted = self._wanted.get(dial_addr)
                if wanted is not None:
                    wanted.backoff.reset()
                    wanted.last_error = ""
                    wanted.refused = False
            if peer.listen is not None and peer.listen[0] not in ("0.0.0.0", "::"):
                self._by_addr[peer.listen] = peer.node_id
        self.on_peer_up(session)

    def _closed(self, session: Session) -> None:
        self._pending.discard(session)
        if not session.dialer and not session.counted_out:
            session.counted_out = True
            source = _source(session.link)
            self._inbound[source] -= 1
            if self._inbound[source] <= 0:
                del self._inbound[source]
        peer = session.peer
        if peer is None:
            return
        if self._peers.peek(peer.node_id) is session:
            self._peers.pop(peer.node_id)
            self._forget_peer(session)
        elif self._clients.get(peer.node_id) is session:
            del self._clients[peer.node_id]
            self.on_peer_down(session)

    def _forget_peer(self, session: Session) -> None:
        node_id = session.peer.node_id  # type: ignore[union-attr]
        for addr in [a for a, n in self._by_addr.items() if n == node_id]:
            del self._by_addr[addr]
        self.on_peer_down(session)

    def _dialer_of(self, session: Session) -> bytes:
        assert session.peer is not None
        return self.node_id if session.dialer else session.peer.node_id

    def _evictable(self, node_id: bytes, session: Session) -> bool:
        return not any(self._by_addr.get(addr) == node_id for addr in self._wanted)

    # -- maintenance ----------------------------------------------------------------
    async def _maintain(self) -> None:
        interval = max(0.05, min(1.0, self.settings.keepalive / 2))
        last_ping = 0.0
        while True:
            try:
                now = self.clock.now()
                if now - last_ping >= self.settings.keepalive:
                    last_ping = now
                    for s in self.peers() + self.clients():
                        s.ping()
                self._check_health()
                self._expire_idle()
                self._redial(now)
            except Exception:  # maintenance must never die; the node would rot silently
                log.exception("pool maintenance failed")
            await asyncio.sleep(interval)

    def _check_health(self) -> None:
        loop_now = self.endpoint.loop.time()
        for s in self.peers() + self.clients():
            s.check_health(loop_now)
            if s.state is State.CLOSED:
                self.stats.unhealthy_closed += 1
        clients = self._clients
        for node_id in [n for n, s in clients.items() if s.active]:
            clients[node_id].active = False
            clients[node_id] = clients.pop(node_id)  # to the end: recently active

    def _expire_idle(self) -> None:
        for node_id, session in self._peers.items():
            if session.active or not self._evictable(node_id, session):
                session.active = False
                self._peers.touch(node_id)
        for node_id, session in self._peers.expire_idle():
            self.stats.idle_closed += 1
            session.goaway("idle", ErrorCode.TIMEOUT)
            session.close(ErrorCode.GOING_AWAY, "idle")
            self._forget_peer(session)

    def _redial(self, now: float) -> None:
        for addr, w in self._wanted.items():
            if w.is_self or (w.task is not None and not w.task.done()):
                continue
            node_id = self._by_addr.get(addr)
            if node_id is not None and self.get(node_id) is not None:
                continue
            if now < w.next_attempt:
                continue
            w.task = asyncio.get_running_loop().create_task(self._dial_wanted(addr, w))

    async def seeds_tried(self, timeout: float) -> None:
        """Wait (bounded) until every wanted address was dialled at least once."""
        waits = [w.tried.wait() for w in self._wanted.values()]
        if waits:
            await asyncio.wait([asyncio.ensure_future(x) for x in waits], timeout=timeout)

    async def _dial_wanted(self, addr: Address, w: _Wanted) -> None:
        if self._closing:
            return
        try:
            await self.connect(*addr)
            w.tried.set()
        except (SessionRefused, OSError) as exc:
            w.tried.set()
            node_id = self._by_addr.get(addr)
            if node_id is not None and self.get(node_id) is not None:
                w.last_error = ""  # refused as a duplicate of a session it opened to us
                w.refused = False
                w.backoff.reset()
                return
            delay = w.backoff.next_delay()
            message = getattr(exc, "message", None) or str(exc)
            refused = getattr(exc, "code", None) in REFUSALS
            if refused:
                # a config mistake (here or there) does not heal by itself: retry slowly,
                # and say so at WARNING each time (once per attempt, so rarely)
                delay = max(delay, REFUSED_RETRY)
                log.warning("seed %s:%d refused us: %s; retrying in %.0f s", addr[0], addr[1],
                            message, delay)
            elif message != w.last_error:
                log.info("seed %s:%d unreachable (%s); retrying with backoff", addr[0], addr[1],
                         message)
            w.next_attempt = self.clock.now() + delay
            w.last_error = message
            w.refused = refused


def _source(link: QuicLink) -> str:
    host = link.remote_addr[0]
    return host[7:] if host.startswith("::ffff:") else host
