"""A session: a QUIC link after CONNECT / CONNECTED, carrying validated frames.

The dialer sends CONNECT as its first frame; the acceptor checks version, realm,
identity binding and trust (the settings' TrustPolicy: a CA in production, pins in
development) and answers CONNECTED, or an ERROR frame and a close code. Those decisions
are transport/handshake.py's; sending them, timers and closing are here. Nothing but
CONNECT / CONNECTED / ERROR is accepted before that. After it, PING / PONG / GOAWAY /
ERROR are handled here and everything else goes to the owner's ``on_message``.

Bad frames never raise: a fatal one (framing lost) closes the session with its
code; a non-fatal one gets an ERROR frame back, and a peer that keeps sending them
past ``bad_frames_per_minute`` is disconnected.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable

from macula.errors import CLOSE_CODE_BASE, ErrorCode, ProtocolError, SessionRefused, close_code
from macula.identity import Identity, TlsMaterial
from macula.runtime.clock import MonotonicClock
from macula.runtime.ratelimit import TokenBucket
from macula.transport.authlimit import AUTH_FAILURES, FailedAuth
from macula.transport import handshake
from macula.transport.budget import ReceiveBudget
from macula.transport.handshake import (
    MAX_FRAME_CAP, LocalCredentials, PeerInfo, TrustPolicy, default_trust,
)
from macula.transport.quic import QuicLink
from macula.wire import HEADER_SIZE, FrameDecoder, encode
from macula.wire.codec import refusal_table, type_name
from macula.wire.messages import Connect, Connected, Error, GoAway, MsgType, Ping, Pong

log = logging.getLogger("macula.session")
PIPELINE_EVERY = 8  # frames dispatched between looks at what other links have ready
BACKLOG_FRAMES = 4  # a peer not reading: frames of max size held for it before it is cut
_HANDSHAKE_TYPES = (MsgType.CONNECT, MsgType.CONNECTED, MsgType.ERROR)
_SESSION_WIRE_TYPES = (MsgType.PING, MsgType.PONG, MsgType.GOAWAY, MsgType.ERROR)


def _before_connect(t: int) -> ProtocolError:
    return ProtocolError(f"{type_name(t)} before CONNECT", code=ErrorCode.NOT_CONNECTED,
                         msg_type=t)


_HANDSHAKE_REFUSE = refusal_table(_HANDSHAKE_TYPES, _before_connect)


def _noop(*_args: Any) -> None:
    return None

def error_from_close(code: int | None, reason: str) -> tuple[ErrorCode | None, str]:
    if code is not None and code >= CLOSE_CODE_BASE:
        try:
            return ErrorCode(code - CLOSE_CODE_BASE), reason
        except ValueError:
            pass
    return None, reason


@dataclass
class SessionConfig:
    """What this node presents and enforces on every session."""
    identity: Identity
    tls: TlsMaterial
    realm: str
    name: str
    role: str = "node"                        # "node" or "client"
    listen: tuple[str, int] | None = None
    caps: tuple[str, ...] = ()
    # whom to trust beyond the identity proofs; None: default_trust(tls) (the CA in
    # production, the proofs alone in development)
    trust: TrustPolicy = None  # type: ignore[assignment]
    max_frame: int = 1 << 20
    send_buffer_bytes: int = 1 << 20
    bad_frames_per_minute: int = 60
    handshake_timeout: float = 10.0
    # a frame begun must be complete within this; a PING unanswered this long ends it
    frame_timeout: float = 10.0
    ping_timeout: float = 45.0
    receive_budget: ReceiveBudget | None = None     # node-wide partial-frame bytes
    peer_bytes_per_second: float = 0.0              # 0 = unmetered (light clients)
    peer_frames_per_second: float = 0.0
    # message types a peer may send once established (None: all); the node answers
    # from its handlers, by the peer's role and caps
    accepts: Callable[["PeerInfo"], Any] | None = None
    boot: bytes = field(default_factory=lambda: os.urandom(8))  # tells restarts from races
    credential: bytes = b""                         # realm membership (docs/AUTH.md)
    failed_auth: FailedAuth | None = None           # node-wide, per source address
    credentials: LocalCredentials = field(init=False, repr=False)  # from identity and tls

    def __post_init__(self) -> None:
        if not any(c.startswith(MAX_FRAME_CAP) for c in self.caps):
            self.caps = (*self.caps, f"{MAX_FRAME_CAP}{self.max_frame}")
        if self.trust is None:
            self.trust = default_trust(self.tls)
        self.credentials = LocalCredentials.of(self.identity, self.tls)


_SESSION_TYPES = frozenset({Ping, Pong, GoAway, Error, Connect, Connected})


class State(Enum):
    HANDSHAKING = "handshaking"
    ESTABLISHED = "established"
    CLOSING = "closing"
    CLOSED = "closed"


class Session:
    def __init__(self, link: QuicLink, cfg: SessionConfig, *,
                 on_admit: Callable[["Session"], None],
                 on_established: Callable[["Session"], None],
                 on_message: Callable[["Session", Any], None],
                 on_closed: Callable[["Session"], None]) -> None:
        self.link = link
        self.cfg = cfg
        self.dialer = link.is_client
        self.state = State.HANDSHAKING
        self.peer: PeerInfo | None = None
        self.observed_address: tuple[str, int] | None = None  # how the acceptor sees us
        self.error: SessionRefused | None = None              # why it ended, when known
        self.loop = link.endpoint.loop
        self._decoder = FrameDecoder(cfg.max_frame, _HANDSHAKE_REFUSE)
        clock = MonotonicClock()
        self._bad_frames = TokenBucket(cfg.bad_frames_per_minute / 60.0,
                                       cfg.bad_frames_per_minute, clock)
        self._bytes_in: TokenBucket | None = None   # metered once established
        self._frames_in: TokenBucket | None = None
        self._partial_since: float | None = None    # when the frame in flight began
        self._held = 0                              # partial bytes told to the budget
        self.send_limit = 0  # largest frame body the peer accepts; 0 until it says
        self._backlog: list[bytes] = []  # reliable frames waiting for room (send_reliable)
        self._backlog_bytes = 0
        self._backlog_task: asyncio.Task | None = None
        self.rate_limited = 0
        self.bad_frames = 0  # refused or invalid frames from this peer (metrics, tests)
        self.counted_out = False  # the pool has taken it off its per-source count
        self._on_admit = on_admit  # raises SessionRefused to turn the peer away
        self._on_established = on_established
        self._on_message = on_message
        self._on_closed = on_closed
        self._established = self.loop.create_future()
        self._drain_waiters: list[tuple[int, asyncio.Future]] = []
        self._ping_seq = 0
        self._pings: dict[int, float] = {}
        self.rtt: float | None = None
        self.on_pong: Callable[[int], None] | None = None  # flush round trips (client SDK)
        self.last_received = self.loop.time()
        self.dial_address: tuple[str, int] | None = None  # set by the pool when it dials
        self.active = False  # application traffic since the pool last looked
        self.spoke = False   # the peer ever sent an application frame (eviction order)
        self.peer_leaving = False  # the peer said it is leaving the mesh (shutdown)
        self.retired = False  # lost a simultaneous-dial contest: draining, then closed
        self.frames_in = 0
        self.frames_out = 0
        self.dropped_out = 0
        link.on_handshake = self._on_handshake
        link.on_data = self._on_data
        link.on_closed = self._on_link_closed
        self._timeout = self.loop.call_later(cfg.handshake_timeout, self._handshake_timed_out)

    def __repr__(self) -> str:
        who = self.peer.name if self.peer else "?"
        return f"<Session {who} {self.state.value} {'out' if self.dialer else 'in'}>"

    # -- handshake ------------------------------------------------------------------
    async def established(self) -> "Session":
        """Wait until CONNECT/CONNECTED completed; raises SessionRefused otherwise."""
        await asyncio.shield(self._established)
        return self

    def _on_handshake(self) -> None:
        if not self.dialer:
            return
        link = self.link
        try:
            connect = handshake.build_connect(self.cfg, link.odcid, link.peer_cert_der())
        except SessionRefused as err:
            self._refuse(err, send_error=False)
            return
        self._send_control(connect)

    def _handle_connect(self, msg: Connect) -> None:
        limit, host = self.cfg.failed_auth, self.link.remote_addr[0]
        if limit is not None and limit.blocked(host):
            raise SessionRefused("too many failed authentications from this address; "
                                 f"retry in {limit.window:g} s", code=ErrorCode.RATE_LIMITED)
        try:
            self.peer = handshake.accept_connect(self.cfg, msg, self.link.odcid,
                                                 self.link.remote_addr)
        except SessionRefused as err:
            if limit is not None and err.code in AUTH_FAILURES:
                limit.failed(host)
            raise
        self._on_admit(self)  # before CONNECTED: a refused dialer never sees success
        self._send_control(handshake.build_connected(self.cfg, self.peer))
        self._establish()

    def _handle_connected(self, msg: Connected) -> None:
        peer_cert = self.link.peer_cert_der()
        assert peer_cert is not None  # checked at handshake
        self.peer = handshake.accept_connected(self.cfg, msg, peer_cert, self.link.remote_addr)
        self.observed_address = tuple(msg.observed)
        self._on_admit(self)
        self._establish()

    def _establish(self) -> None:
        self._timeout.cancel()
        cfg = self.cfg
        peer = self.peer
        assert peer is not None
        self.send_limit = peer.max_frame or cfg.max_frame
        accepted = cfg.accepts(peer) if cfg.accepts is not None else None
        self._decoder.refuse = None if accepted is None else _refusals(frozenset(accepted))
        if cfg.peer_bytes_per_second > 0:
            self._bytes_in = TokenBucket(cfg.peer_bytes_per_second,
                                         max(cfg.peer_bytes_per_second, 2 * cfg.max_frame),
                                         MonotonicClock())
        if cfg.peer_frames_per_second > 0:
            self._frames_in = TokenBucket(cfg.peer_frames_per_second,
                                          cfg.peer_frames_per_second, MonotonicClock())
        self.state = State.ESTABLISHED
        self.last_received = self.loop.time()
        if not self._established.done():
            self._established.set_result(None)  # not self: that would be a cycle
        self._on_established(self)

    def _handshake_timed_out(self) -> None:
        if self.state is State.HANDSHAKING:
            self._refuse(SessionRefused(f"no session within {self.cfg.handshake_timeout:g} s",
                                        code=ErrorCode.TIMEOUT))

    def _refuse(self, err: SessionRefused, send_error: bool = True) -> None:
        """End the session because of ``err``: ERROR frame (if possible), then close."""
        self.error = err
        if not self._established.done():
            self._established.set_exception(err)
            self._established.exception()  # mark retrieved: nobody may be waiting
        if send_error and self.link.handshake_done:
            self._send_control(Error(int(err.code), err.message[:1024]))
        self.close(err.code, err.message)

    # -- receiving ------------------------------------------------------------------
    def _on_data(self, data: bytes, end: bool) -> None:
        if self.state is State.CLOSED:
            return
        now = self.last_received = self.loop.time()
        decoder = self._decoder
        items = decoder.feed(data) if data else []
        if end:
            err = decoder.end_of_stream()
            if err is not None:
                items.append(err)
        held = decoder.buffered
        if held:
            if self._partial_since is None or items:  # a new frame began in this read
                self._partial_since = now
        else:
            self._partial_since = None
        budget = self.cfg.receive_budget
        if budget is not None and held != self._held:
            self._held = held
            for victim in budget.update(self, held):
                victim._refuse(SessionRefused(  # type: ignore[attr-defined]
                    "the node's budget for partly received frames is spent",
                    code=ErrorCode.OVERLOADED))
            if self.state is State.CLOSED:
                return
        metered = True
        if self._bytes_in is not None and not self._bytes_in.charge(len(data)):
            metered = False
        if self._frames_in is not None and not self._frames_in.charge(len(items)):
            metered = False
        if not metered:
            items = self._throttle(items)
        k = 0
        for item in items:
            if self.state is State.CLOSED:
                return
            k += 1
            if k % PIPELINE_EVERY == 0:  # forwarded frames leave before the batch ends
                self.link.endpoint.flush_ready(self.link)
            if type(item) is ProtocolError:
                self._bad_frame(item)
                continue
            self.frames_in += 1
            try:
                self._dispatch(item)
            except SessionRefused as err:
                log.info("refused %s: %s", self.link.remote_addr, err.message)
                self._refuse(err)
                return
        if end and self.state is not State.CLOSED:
            self.close(ErrorCode.GOING_AWAY, "peer ended its stream")

    def _dispatch(self, msg: Any) -> None:
        t = type(msg)
        if self.state is State.ESTABLISHED:
            if t not in _SESSION_TYPES:  # the hot path: application messages
                self.active = self.spoke = True
                self._on_message(self, msg)
            elif t is Ping:
                self._send_control(Pong(msg.seq))
            elif t is Pong:
                sent = self._pings.pop(msg.seq, None)
                if sent is not None:  # one ordered stream: every older PING was answered
                    while self._pings and next(iter(self._pings.values())) <= sent:
                        self._pings.pop(next(iter(self._pings)))
                if sent is not None:
                    sample = self.loop.time() - sent
                    self.rtt = sample if self.rtt is None else 0.875 * self.rtt + 0.125 * sample
                if self.on_pong is not None:
                    self.on_pong(msg.seq)
            elif t is GoAway:
                log.debug("%s goes away: %s", self, msg.reason)
                self.peer_leaving = msg.code == int(ErrorCode.GOING_AWAY)
                self.close(ErrorCode.GOING_AWAY, msg.reason or "peer going away")
            elif t is Error:
                log.info("peer %s reported error %s: %s", self.peer and self.peer.name,
                         msg.code, msg.message)
                self._on_message(self, msg)
            else:
                raise SessionRefused(f"{t.__name__.upper()} after the session started",
                                     code=ErrorCode.PROTOCOL_VIOLATION)
            return
        if self.state is not State.HANDSHAKING:
            return
        if t is Connect and not self.dialer:
            self._handle_connect(msg)
        elif t is Connected and self.dialer:
            self._handle_connected(msg)
        elif t is Error:
            self._refuse(handshake.refused_by_peer(msg), send_error=False)
        else:
            raise SessionRefused(f"{t.__name__.upper()} before CONNECT", code=ErrorCode.NOT_CONNECTED)

    def _throttle(self, items: list) -> list:
        """The peer sends more than its share (bytes or frames per second): its
        application frames of this read are dropped with one RATE_LIMITED error, which
        counts as a bad frame, so a peer that keeps flooding is disconnected."""
        kept = [m for m in items if type(m) in _SESSION_TYPES or type(m) is ProtocolError]
        dropped = len(items) - len(kept)
        if dropped:
            self.rate_limited += dropped
            kept.append(ProtocolError(f"{dropped} frame(s) dropped: over this peer's rate limit",
                                      code=ErrorCode.RATE_LIMITED))
        return kept

    def check_health(self, now: float) -> None:
        """Called about once a second by the pool: a frame in flight past its deadline,
        or a PING unanswered past ``ping_timeout``, ends the session (a peer that
        stalls mid-frame holds memory; one that stops answering holds a slot)."""
        if self.state is not State.ESTABLISHED:
            return
        cfg = self.cfg
        if self._partial_since is not None and now - self._partial_since > cfg.frame_timeout:
            self._refuse(SessionRefused(
                f"a frame in flight made no progress to completion in {cfg.frame_timeout:g} s",
                code=ErrorCode.TIMEOUT))
            return
        if self._pings:
            oldest = next(iter(self._pings.values()))
            if now - oldest > cfg.ping_timeout:
                self._refuse(SessionRefused(f"no answer to PING in {cfg.ping_timeout:g} s",
                                            code=ErrorCode.TIMEOUT))

    def _bad_frame(self, err: ProtocolError) -> None:
        log.debug("bad frame from %s: %r", self.link.remote_addr, err)
        self.bad_frames += 1
        if err.fatal or self.state is State.HANDSHAKING:
            self._refuse(SessionRefused(err.message, code=err.code))
        elif not self._bad_frames.try_take():
            self._refuse(SessionRefused(f"too many bad frames (last: {err.message})",
                                        code=ErrorCode.RATE_LIMITED))
        else:
            self._send_control(Error(int(err.code), err.message[:1024], err.msg_type))

    # -- sending --------------------------------------------------------------------
    def _send_control(self, msg: Any) -> None:
        """Control frames bypass the send bound: they are small and must go out."""
        self.link.queue(encode(msg))

    def send_control(self, msg: Any) -> None:
        """A small frame that must go out even when the send buffer is full (flow control)."""
        if self.state is State.ESTABLISHED:
            self.link.queue(encode(msg))

    def send(self, msg: Any) -> bool:
        """Queue a message. False (and counted) when the send buffer is at its bound."""
        return self.send_frame(encode(msg))

    def fits(self, size: int) -> bool:
        """A frame of ``size`` bytes may be queued now. An empty buffer takes any frame
        the peer accepts, so a frame larger than the bound is delivered, not refused for
        ever (a 300 KB publish with a 256 KiB send buffer once froze the node)."""
        buffered = self.link.buffered
        return buffered == 0 or buffered + size <= self.cfg.send_buffer_bytes

    def too_large(self, size: int) -> bool:
        """The peer would refuse a frame of ``size`` bytes (its max_frame) and close."""
        return size - HEADER_SIZE > self.send_limit > 0

    def send_frame(self, frame: bytes) -> bool:
        if self.state is not State.ESTABLISHED:
            return False
        n = len(frame)
        if not self.fits(n) or self.too_large(n):
            self.dropped_out += 1
            return False
        self.link.queue(frame)
        self.frames_out += 1
        self.active = True
        return True

    async def drain(self, need: int = 0) -> None:
        """Wait until the send buffer is below half its bound and a frame of ``need``
        bytes fits (back-pressure); every wait is on a future, never a poll."""
        bound = self.cfg.send_buffer_bytes
        target = bound // 2 if need <= bound // 2 else max(0, bound - need)
        while self.state is State.ESTABLISHED and self.link.buffered > target:
            fut = self.loop.create_future()
            self._drain_waiters.append((target, fut))
            self.link.on_transmitted = self._check_drained
            await fut
        if self.state is not State.ESTABLISHED:
            raise SessionRefused("session closed", code=ErrorCode.GOING_AWAY)

    async def send_wait(self, msg: Any) -> None:
        """Queue a message, waiting for room first (for senders that must not drop).
        A frame the peer cannot accept is refused at once (FRAME_TOO_LARGE)."""
        await self.send_frame_wait(encode(msg))

    async def send_frame_wait(self, frame: bytes) -> None:
        if self.too_large(len(frame)):
            raise ProtocolError(f"a frame body of {len(frame) - HEADER_SIZE} bytes exceeds the "
                                f"peer's {self.send_limit} byte limit",
                                code=ErrorCode.FRAME_TOO_LARGE)
        while not self.send_frame(frame):
            if self.state is not State.ESTABLISHED:
                raise SessionRefused("session closed", code=ErrorCode.GOING_AWAY)
            await self.drain(len(frame))

    def send_reliable(self, msg: Any) -> bool:
        """Queue a message that must not be dropped (RPC calls and replies): sent now,
        or kept in order in a bounded backlog that one task drains. A peer that lets the
        backlog pass ``BACKLOG_FRAMES`` frames of its max size is not reading: the
        session is closed (OVERLOADED) rather than the node holding memory for it.
        False when the message cannot go at all (closed, or too large for the peer)."""
        frame = encode(msg)
        if self.state is not State.ESTABLISHED or self.too_large(len(frame)):
            return False
        if not self._backlog and self.send_frame(frame):
            return True
        self._backlog.append(frame)
        self._backlog_bytes += len(frame)
        if self._backlog_bytes > BACKLOG_FRAMES * max(self.cfg.max_frame,
                                                      self.cfg.send_buffer_bytes):
            self._refuse(SessionRefused(
                f"peer does not read: {self._backlog_bytes} bytes waiting for it",
                code=ErrorCode.OVERLOADED))
            return False
        if self._backlog_task is None:
            self._backlog_task = self.loop.create_task(self._drain_backlog())
        return True

    async def _drain_backlog(self) -> None:
        backlog = self._backlog
        try:
            while backlog and self.state is State.ESTABLISHED:
                frame = backlog[0]
                await self.send_frame_wait(frame)
                backlog.pop(0)
                self._backlog_bytes -= len(frame)
        except (SessionRefused, ProtocolError):
            pass  # closed: the peer sees the close
        finally:
            self._backlog_task = None

    def _check_drained(self) -> None:
        buffered = self.link.buffered
        closed = self.state is not State.ESTABLISHED
        waiting = []
        for target, fut in self._drain_waiters:
            if closed or buffered <= target:
                if not fut.done():
                    fut.set_result(None)
            else:
                waiting.append((target, fut))
        self._drain_waiters = waiting
        if not waiting:
            self.link.on_transmitted = None

    def ping(self) -> None:
        self._ping_seq = (self._ping_seq + 1) & 0xFFFF_FFFF
        if len(self._pings) > 16:  # unanswered pings: keep the newest few only
            self._pings.pop(next(iter(self._pings)))
        self._pings[self._ping_seq] = self.loop.time()
        self._send_control(Ping(self._ping_seq))

    # -- closing --------------------------------------------------------------------
    def goaway(self, reason: str = "shutting down",
               code: ErrorCode = ErrorCode.GOING_AWAY) -> None:
        """Tell the peer we close this session. GOING_AWAY means this node is leaving the
        mesh (the peer forgets it); TIMEOUT (idle) or OVERLOADED (evicted) only end the
        session."""
        if self.state is State.ESTABLISHED:
            self._send_control(GoAway(int(code), reason))
            self.state = State.CLOSING

    def close(self, code: ErrorCode = ErrorCode.GOING_AWAY, reason: str = "") -> None:
        """Close the link; frames already queued (an ERROR, a GOAWAY) go out first."""
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        self._timeout.cancel()
        if self.error is None:
            self.error = SessionRefused(reason or "closed", code=code)
        qcode = close_code(code)
        # Queued frames (an ERROR, a GOAWAY) go out in the flush already scheduled;
        # the CONNECTION_CLOSE follows in the next tick.
        self.loop.call_soon(self.link.close, qcode, reason)
        self._finish()

    def _on_link_closed(self, code: int, reason: str) -> None:
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        self._timeout.cancel()
        err_code, text = error_from_close(code, reason)
        if self.error is None:
            self.error = SessionRefused(text or "connection closed",
                                        code=err_code or ErrorCode.GOING_AWAY)
        if not self._established.done():
            self._established.set_exception(self.error)
            self._established.exception()
        self._finish()

    def _finish(self) -> None:
        for _, fut in self._drain_waiters:
            if not fut.done():
                fut.set_result(None)
        self._drain_waiters.clear()
        # Free at once what this session held: its partial frame, its backlog, and the
        # link's callbacks into it (the Session <-> link cycle otherwise waits for the
        # cyclic GC, which let RSS grow from 38 to 260 MiB under churn).
        self._decoder.release()
        if self.cfg.receive_budget is not None and self._held:
            self.cfg.receive_budget.update(self, 0)
            self._held = 0
        self._partial_since = None
        self._backlog.clear()
        self._backlog_bytes = 0
        link = self.link
        link.on_handshake = link.on_transmitted = None  # type: ignore[assignment]
        link.on_handshake = _noop
        link.on_data = _noop
        link.on_closed = _noop
        if not self._established.done():
            self._established.set_exception(self.error or SessionRefused(
                "session closed", code=ErrorCode.GOING_AWAY))
            self._established.exception()
        self._on_closed(self)


@functools.lru_cache(maxsize=64)
def _refusals(accepted: frozenset[int]) -> list[ProtocolError | None]:
    """One table per distinct set of accepted types (a handful: clients, members,
    other nodes), shared by every session with that set (256 slots each)."""
    return refusal_table((*accepted, *_SESSION_WIRE_TYPES), _not_served)


def _not_served(t: int) -> ProtocolError:
    return ProtocolError(f"{type_name(t)} is not served by this node on this session",
                         code=ErrorCode.UNKNOWN_TYPE, msg_type=t)
