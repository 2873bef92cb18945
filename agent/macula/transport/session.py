"""A session: a QUIC link after CONNECT / CONNECTED, carrying validated frames.

The dialer sends CONNECT as its first frame; the acceptor checks version, realm,
identity binding, certificate (production) or pin (development) and answers
CONNECTED, or an ERROR frame and a close code. Nothing but CONNECT / CONNECTED /
ERROR is accepted before that. After it, PING / PONG / GOAWAY / ERROR are handled
here and everything else goes to the owner's ``on_message``.

Bad frames never raise: a fatal one (framing lost) closes the session with its
code; a non-fatal one gets an ERROR frame back, and a peer that keeps sending them
past ``bad_frames_per_minute`` is disconnected.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, NamedTuple

from macula.errors import CLOSE_CODE_BASE, ErrorCode, ProtocolError, SessionRefused, close_code
from macula.identity import Identity, TlsMaterial, TofuStore
from macula.identity.binding import (
    bind_message, check_chain, check_dialer_binding, check_identity, identity_message,
)
from macula.identity.crypto import cert_public_key
from macula.runtime.clock import MonotonicClock
from macula.runtime.ratelimit import TokenBucket
from macula.transport.quic import QuicLink
from macula.wire import PROTOCOL_VERSION, FrameDecoder, encode
from macula.wire.messages import Connect, Connected, Error, GoAway, Ping, Pong

log = logging.getLogger("macula.session")
PIPELINE_EVERY = 8  # frames dispatched between looks at what other links have ready

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
    tofu: TofuStore | None = None             # development mode pins
    max_frame: int = 1 << 20
    send_buffer_bytes: int = 1 << 20
    bad_frames_per_minute: int = 60
    handshake_timeout: float = 10.0
    boot: bytes = field(default_factory=lambda: os.urandom(8))  # tells restarts from races
    _identity_sig: bytes = field(default=b"", repr=False)
    _cert_key: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        self._cert_key = cert_public_key(self.tls.cert_der)
        self._identity_sig = self.identity.sign(identity_message(self._cert_key))


_SESSION_TYPES = frozenset({Ping, Pong, GoAway, Error, Connect, Connected})


class PeerInfo(NamedTuple):
    node_id: bytes
    name: str
    realm: str
    role: str
    listen: tuple[str, int] | None
    identity_key: bytes
    caps: tuple[str, ...]
    address: tuple[str, int]        # the address this link talks to
    boot: bytes = b""               # the peer's process-start id
    @property
    def short_id(self) -> str:
        return self.node_id.hex()[:12]


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
        self._decoder = FrameDecoder(cfg.max_frame)
        self._bad_frames = TokenBucket(cfg.bad_frames_per_minute / 60.0,
                                       cfg.bad_frames_per_minute, MonotonicClock())
        self._on_admit = on_admit  # raises SessionRefused to turn the peer away
        self._on_established = on_established
        self._on_message = on_message
        self._on_closed = on_closed
        self._established = self.loop.create_future()
        self._drain_waiters: list[asyncio.Future] = []
        self._ping_seq = 0
        self._pings: dict[int, float] = {}
        self.rtt: float | None = None
        self.on_pong: Callable[[int], None] | None = None  # flush round trips (client SDK)
        self.last_received = self.loop.time()
        self.dial_address: tuple[str, int] | None = None  # set by the pool when it dials
        self.active = False  # application traffic since the pool last looked
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
        return await asyncio.shield(self._established)

    def _on_handshake(self) -> None:
        if not self.dialer:
            return
        cfg = self.cfg
        peer_cert = self.link.peer_cert_der()
        if peer_cert is None:
            self._refuse(SessionRefused("peer presented no certificate",
                                        code=ErrorCode.CERT_REJECTED), send_error=False)
            return
        cert_sig = cfg.tls.signer.sign(bind_message(self.link.odcid, cert_public_key(peer_cert)))
        self._send_control(Connect(
            PROTOCOL_VERSION, cfg.identity.node_id, cfg.realm, cfg.role, cfg.name, cfg.listen,
            cfg.identity.public_key, cfg._identity_sig, cfg.tls.cert_der, cert_sig,
            cfg.tls.chain_der, cfg.caps, cfg.boot))

    def _handle_connect(self, msg: Connect) -> None:
        cfg = self.cfg
        if msg.version != PROTOCOL_VERSION:
            raise SessionRefused(f"protocol version {msg.version} is not {PROTOCOL_VERSION}",
                                 code=ErrorCode.VERSION_MISMATCH)
        if msg.realm != cfg.realm:
            raise SessionRefused(f"realm {msg.realm!r} is not this node's realm {cfg.realm!r}",
                                 code=ErrorCode.REALM_MISMATCH)
        if msg.role == "node" and msg.listen is None:
            raise SessionRefused("a node must say where it listens", code=ErrorCode.BAD_FIELD)
        check_identity(msg.node_id, msg.identity_key, msg.identity_sig, msg.cert)
        check_dialer_binding(msg.cert, msg.cert_sig, self.link.odcid, cfg._cert_key)
        self._check_trust(msg.cert, list(msg.chain), msg.name, msg.identity_key,
                          pin=msg.role == "node")
        addr = self.link.remote_addr
        self.peer = PeerInfo(msg.node_id, msg.name, msg.realm, msg.role,
                             _reachable(msg.listen, addr), msg.identity_key,
                             tuple(msg.caps), (_plain_host(addr[0]), addr[1]), msg.boot)
        self._on_admit(self)  # before CONNECTED: a refused dialer never sees success
        self._send_control(Connected(
            PROTOCOL_VERSION, cfg.identity.node_id, cfg.realm, cfg.name, cfg.listen,
            cfg.identity.public_key, cfg._identity_sig, (_plain_host(addr[0]), addr[1]), cfg.caps,
            cfg.boot))
        self._establish()

    def _handle_connected(self, msg: Connected) -> None:
        cfg = self.cfg
        if msg.version != PROTOCOL_VERSION:
            raise SessionRefused(f"protocol version {msg.version} is not {PROTOCOL_VERSION}",
                                 code=ErrorCode.VERSION_MISMATCH)
        if msg.realm != cfg.realm:
            raise SessionRefused(f"realm {msg.realm!r} is not this node's realm {cfg.realm!r}",
                                 code=ErrorCode.REALM_MISMATCH)
        peer_cert = self.link.peer_cert_der()
        assert peer_cert is not None  # checked at handshake
        check_identity(msg.node_id, msg.identity_key, msg.identity_sig, peer_cert)
        # production: qh3 verified the chain in the TLS handshake (CERT_REQUIRED + cafile)
        self._check_trust(None, [], msg.name, msg.identity_key, pin=True)
        addr = self.link.remote_addr
        self.peer = PeerInfo(msg.node_id, msg.name, msg.realm, "node",
                             _reachable(msg.listen, addr), msg.identity_key,
                             tuple(msg.caps), (_plain_host(addr[0]), addr[1]), msg.boot)
        self.observed_address = tuple(msg.observed)
        self._on_admit(self)
        self._establish()

    def _check_trust(self, cert: bytes | None, chain: list[bytes], name: str, key: bytes,
                     pin: bool) -> None:
        """Production: the CA decides. Development: nodes are pinned by name on first use
        (light clients are often ephemeral identities under one name: never pinned)."""
        cfg = self.cfg
        if cfg.tls.mode == "production":
            if cert is not None:
                check_chain(cert, chain, cfg.tls.ca_file or "")
        elif cfg.tofu is not None and pin:
            cfg.tofu.check_and_pin(cfg.realm, name, key)

    def _establish(self) -> None:
        self._timeout.cancel()
        self.state = State.ESTABLISHED
        self.last_received = self.loop.time()
        if not self._established.done():
            self._established.set_result(self)
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
        self.last_received = self.loop.time()
        items = self._decoder.feed(data) if data else []
        if end:
            err = self._decoder.end_of_stream()
            if err is not None:
                items.append(err)
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
                self.active = True
                self._on_message(self, msg)
            elif t is Ping:
                self._send_control(Pong(msg.seq))
            elif t is Pong:
                sent = self._pings.pop(msg.seq, None)
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
            try:
                code = ErrorCode(msg.code)
            except ValueError:
                code = ErrorCode.PROTOCOL_VIOLATION
            self._refuse(SessionRefused(f"peer refused: {msg.message}", code=code), send_error=False)
        else:
            raise SessionRefused(f"{t.__name__.upper()} before CONNECT", code=ErrorCode.NOT_CONNECTED)

    def _bad_frame(self, err: ProtocolError) -> None:
        log.debug("bad frame from %s: %r", self.link.remote_addr, err)
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

    def send_frame(self, frame: bytes) -> bool:
        if self.state is not State.ESTABLISHED:
            return False
        link = self.link
        if link.buffered + len(frame) > self.cfg.send_buffer_bytes:
            self.dropped_out += 1
            return False
        link.queue(frame)
        self.frames_out += 1
        self.active = True
        return True

    @property
    def writable(self) -> bool:
        return self.state is State.ESTABLISHED and self.link.buffered < self.cfg.send_buffer_bytes

    async def drain(self) -> None:
        """Wait until the send buffer is below half its bound (back-pressure)."""
        while self.state is State.ESTABLISHED and self.link.buffered > self.cfg.send_buffer_bytes // 2:
            fut = self.loop.create_future()
            self._drain_waiters.append(fut)
            self.link.on_transmitted = self._check_drained
            await fut
        if self.state is not State.ESTABLISHED:
            raise SessionRefused("session closed", code=ErrorCode.GOING_AWAY)

    async def send_wait(self, msg: Any) -> None:
        """Queue a message, waiting for room first (for senders that must not drop)."""
        frame = encode(msg)
        while not self.send_frame(frame):
            if self.state is not State.ESTABLISHED:
                raise SessionRefused("session closed", code=ErrorCode.GOING_AWAY)
            await self.drain()

    def _check_drained(self) -> None:
        if self.link.buffered <= self.cfg.send_buffer_bytes // 2 or self.state is not State.ESTABLISHED:
            self.link.on_transmitted = None
            waiters, self._drain_waiters = self._drain_waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

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
        for fut in self._drain_waiters:
            if not fut.done():
                fut.set_result(None)
        self._drain_waiters.clear()
        if not self._established.done():
            self._established.set_exception(self.error or SessionRefused(
                "session closed", code=ErrorCode.GOING_AWAY))
            self._established.exception()
        self._on_closed(self)


def _reachable(listen: tuple | None, remote_addr: tuple) -> tuple[str, int] | None:
    """A listen address of 0.0.0.0 / :: means "where you see me": use the source IP."""
    if listen is None:
        return None
    host, port = listen
    if host in ("0.0.0.0", "::"):
        host = _plain_host(remote_addr[0])
    return host, port


def _plain_host(host: str) -> str:
    """'::ffff:1.2.3.4' (a v4 peer on a dual-stack socket) -> '1.2.3.4'."""
    return host[7:] if host.startswith("::ffff:") else host
