"""QUIC edge: the only module that imports qh3's QUIC stack.

One UDP socket per node serves the connections it accepts and those it dials,
demultiplexed by destination connection ID (as quinn's Endpoint does): dials leave
from the listening port, which NAT traversal needs, and one socket is lighter.

Per loop tick the endpoint reads every datagram the socket holds, feeds them to
their connections in batches, and then flushes once: the frames queued on each
link are handed to qh3 in one call and its datagrams are sent. Sends made outside
that path schedule one flush with ``call_soon``, so N messages in a tick cost one
transmit, not N. One exception: while a large batch is being processed, a link that
has a datagram's worth to send for the next hop sends it at once (``flush_ready``), so
a node relaying 32 calls lets the provider start on the first ones while it works on
the rest.

A peer whose process died sends no CONNECTION_CLOSE, and QUIC alone would notice only
at the idle timeout. The socket asks for ICMP errors (IP_RECVERR): a "port
unreachable" for a peer's address fails a handshake at once, and makes an established
connection prove itself with a PING within ``max(PROBE_MIN, 4 RTT)``, else it is
closed as PEER_UNREACHABLE. The probe, not the ICMP alone, decides: a forged ICMP
cannot close a live connection.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import logging
import os
import socket
import ssl
import sys
from collections import deque
from typing import Callable

from qh3.quic.configuration import QuicConfiguration
from qh3.quic.connection import QuicConnection, QuicConnectionError
from qh3.quic.events import (
    ConnectionIdIssued, ConnectionIdRetired, ConnectionTerminated, HandshakeCompleted,
    StreamDataReceived, StreamReset,
)
from qh3._hazmat import pull_quic_header as _pull_quic_header
from qh3.quic.packet import QuicProtocolVersion, encode_quic_retry, encode_quic_version_negotiation

from macula.errors import ErrorCode, close_code
from macula.identity.certs import TlsMaterial
from macula.runtime.ratelimit import TokenBucket
from macula.runtime.clock import MonotonicClock

log = logging.getLogger("macula.transport")
logging.getLogger("quic").setLevel(logging.ERROR)  # qh3 warns on every peer close

ALPN = "macula/1"
CID_LENGTH = 8
MAX_DATAGRAM_SIZE = 1452     # Ethernet MTU minus IPv4/UDP headers; qh3 defaults to 1280
MAX_DATAGRAM_FRAME_SIZE = 65536  # qh3 always advertises datagrams: say how large
PIPELINE_BYTES = 768        # a link with this much queued is sent mid-batch (flush_ready)
RECV_BATCH = 32             # reads per readiness callback: bursts are bounded so ACKs flow
# New connections' datagrams wait for a loop turn of their own, one link per turn: a
# handshake costs milliseconds of CPU, and a burst of them handled back to back would
# hold every established peer's frames that long. Past the bound they are dropped
# (QUIC resends them).
DEFERRED_HANDSHAKES = 64
RECV_BUFFER = 1 << 16       # one GRO buffer holds up to 64 KiB
SOL_UDP = 17                # Linux UDP-level options (the socket module lacks the names)
UDP_SEGMENT = 103           # GSO: send equal-sized datagrams in one syscall
UDP_GRO = 104               # GRO: receive a burst of one flow in one buffer
GSO_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65000
_GRO_CMSG_SPACE = socket.CMSG_SPACE(4)             # datagrams read per readiness callback before yielding
_SUPPORTED_VERSIONS = (QuicProtocolVersion.VERSION_1,)
IP_RECVERR = 11             # Linux: queue ICMP errors on the socket's error queue
IPV6_RECVERR = 25
SO_EE_ORIGIN_ICMP = (2, 3)  # sock_extended_err.ee_origin for ICMP and ICMPv6
UNREACHABLE_ERRNOS = frozenset({errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH})
ERRQUEUE_BATCH = 64         # error-queue reads per readiness callback
PROBE_MIN = 1.0             # seconds an ICMP-unreachable peer has to answer a PING
UNREACHABLE_CLOSE = close_code(ErrorCode.PEER_UNREACHABLE)
RETRY_TOKEN_TTL = 10.0      # seconds a Retry token is good for
SOURCE_TABLE = 4096         # per-source handshake buckets kept (oldest forgotten first)


def _parse_dcid(data: bytes) -> tuple[bytes, bool, int] | None:
    """(destination CID, is_initial, version) from QUIC invariants (RFC 8999), or None."""
    if len(data) < 1 + CID_LENGTH:
        return None
    first = data[0]
    if first & 0x80:  # long header
        if len(data) < 7:
            return None
        version = int.from_bytes(data[1:5], "big")
        dcid_len = data[5]
        if dcid_len > 20 or len(data) < 6 + dcid_len:
            return None
        is_initial = version != 0 and ((first & 0x30) >> 4) == 0
        return data[6:6 + dcid_len], is_initial, version
    return data[1:1 + CID_LENGTH], False, -1


class QuicLink:
    """One QUIC connection carrying one long-lived bidirectional stream of frames.

    The owner (a Session) sets the ``on_*`` callbacks. ``queue`` takes encoded frames;
    bytes are handed to qh3 at the next flush. ``buffered`` counts what is queued here
    plus what qh3 has not sent yet, so the owner can bound it (qh3 buffers without limit).
    """

    __slots__ = ("endpoint", "conn", "is_client", "remote_addr", "stream_id", "_pending",
                 "_pending_bytes", "_unsent", "_timer", "_timer_at", "handshake_done", "closed",
                 "on_handshake", "on_data", "on_closed", "on_transmitted", "close_code",
                 "close_reason", "_cids", "_probe", "_probe_uid", "_half_open")

    def __init__(self, endpoint: "Endpoint", conn: QuicConnection, remote_addr: tuple,
                 is_client: bool) -> None:
        self.endpoint = endpoint
        self.conn = conn
        self.is_client = is_client
        self.remote_addr = remote_addr
        self.stream_id: int | None = conn.get_next_available_stream_id() if is_client else None
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._unsent = 0  # qh3's unsent stream bytes, read once per flush (not per frame)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._cids: set[bytes] = set()
        self._probe: asyncio.TimerHandle | None = None  # liveness probe after an ICMP error
        self._probe_uid = 0
        self._half_open = False  # an accepted connection still in its QUIC handshake
        self.handshake_done = False
        self.closed = False
        self.close_code: int | None = None
        self.close_reason = ""
        self.on_handshake: Callable[[], None] = lambda: None
        self.on_data: Callable[[bytes, bool], None] = lambda data, end: None
        self.on_closed: Callable[[int, str], None] = lambda code, reason: None
        self.on_transmitted: Callable[[], None] | None = None  # set while a writer waits

    # -- facts about the connection -------------------------------------------------
    @property
    def odcid(self) -> bytes:
        return self.conn.original_destination_connection_id

    def peer_cert_der(self) -> bytes | None:
        cert = self.conn.get_peercert()
        return None if cert is None else cert.public_bytes()

    @property
    def buffered(self) -> int:
        """Bytes queued here plus those qh3 had not sent at the last flush."""
        return self._pending_bytes + self._unsent

    # -- sending --------------------------------------------------------------------
    def queue(self, data: bytes) -> None:
        if self.closed:
            return
        if not self._pending:  # the first frame of this tick schedules the flush
            self.endpoint.mark_dirty(self)
        self._pending.append(data)
        self._pending_bytes += len(data)

    def close(self, code: int = 0, reason: str = "") -> None:
        if self.closed:
            return
        self._push_pending()
        self.conn.close(error_code=code, reason_phrase=reason[:256])
        self.endpoint.mark_dirty(self)

    def _push_pending(self) -> None:
        if self._pending and self.stream_id is not None:
            data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
            self._pending.clear()
            self._pending_bytes = 0
            try:
                self.conn.send_stream_data(self.stream_id, data)
            except QuicConnectionError:
                pass  # the peer closed the connection; its ConnectionTerminated follows

    # -- driven by the endpoint -----------------------------------------------------
    def _process_events(self) -> None:
        conn = self.conn
        while True:
            event = conn.next_event()
            if event is None:
                break
            kind = type(event)
            if kind is StreamDataReceived:
                if self.stream_id is None:
                    self.stream_id = event.stream_id
                if event.stream_id == self.stream_id:
                    self.on_data(event.data, event.end_stream)
                else:
                    conn.stop_stream(event.stream_id, 0)  # one stream per peer
            elif kind is HandshakeCompleted:
                if event.alpn_protocol != ALPN:
                    conn.close(error_code=0x178, reason_phrase="ALPN mismatch")  # no_application_protocol
                    continue
                self.handshake_done = True
                self.endpoint._handshake_over(self)
                self.on_handshake()
            elif kind is ConnectionIdIssued:
                self._cids.add(event.connection_id)
                self.endpoint._cids[event.connection_id] = self
            elif kind is ConnectionIdRetired:
                self._cids.discard(event.connection_id)
                self.endpoint._cids.pop(event.connection_id, None)
            elif kind is StreamReset:
                if event.stream_id == self.stream_id:
                    self.on_data(b"", True)
            elif kind is ConnectionTerminated:
                self._terminated(event.error_code, event.reason_phrase)
                return

    def _peer_unreachable(self) -> None:
        """An ICMP error named this link's peer address."""
        if self.closed:
            return
        if not self.handshake_done:  # a dial to a closed port fails now, not at its timeout
            self._terminated(UNREACHABLE_CLOSE, "peer unreachable (ICMP)")
            return
        if self._probe is not None:
            return  # a probe is already out
        loop = self.endpoint.loop
        loss = getattr(self.conn, "_loss", None)  # qh3 internals: best effort
        rtt = getattr(loss, "_rtt_smoothed", 0.0) or 0.0
        self._probe_uid += 1
        try:
            self.conn.send_ping(self._probe_uid)
        except QuicConnectionError:
            return  # already closing: its ConnectionTerminated follows
        self._probe = loop.call_later(max(PROBE_MIN, 4 * rtt), self._probe_expired)
        self.endpoint.stats["unreachable_probes"] += 1
        self.endpoint.mark_dirty(self)

    def _probe_expired(self) -> None:
        self._probe = None
        if self.closed:
            return
        self.endpoint.stats["unreachable_closed"] += 1
        self._terminated(UNREACHABLE_CLOSE, "peer unreachable (no answer after ICMP error)")

    def _terminated(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_code, self.close_reason = code, reason
        self.endpoint._handshake_over(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None
        self.endpoint._forget(self)
        self.on_closed(code, reason)

    def _transmit(self, now: float) -> None:
        if self.closed:
            return
        self._push_pending()
        try:
            datagrams = self.conn.datagrams_to_send(now)
        except QuicConnectionError as exc:
            # qh3's native core can fail one connection (seen: "packet builder capacity
            # exhausted" under attack); end that link instead of leaving it timerless in
            # the tables and aborting the flush of every other link
            self.endpoint.stats["quic_errors"] += 1
            self._terminated(0x1, f"QUIC error: {exc}")
            return
        if datagrams:
            self.endpoint._send_datagrams(datagrams)
        if self.stream_id is not None:
            self._unsent = self.conn.get_send_buffer_size(self.stream_id)
        self._process_events()  # closing may have produced ConnectionTerminated
        if self.closed:
            return
        at = self.conn.get_timer()
        if at != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = at
            self._timer = None if at is None else self.endpoint.loop.call_at(at, self._on_timer)
        if self.on_transmitted is not None:
            self.on_transmitted()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        now = self.endpoint.loop.time()
        self.conn.handle_timer(now)
        self._process_events()
        self._transmit(now)


class Endpoint:
    """The node's UDP socket and every QUIC connection on it."""

    def __init__(self, tls: TlsMaterial, *, idle_timeout: float = 60.0,
                 on_accept: Callable[[QuicLink], bool] | None = None,
                 max_handshakes_per_s: float = 200.0, receive_buffer: int = 4 << 20,
                 handshakes_per_source: float = 20.0, retry_threshold: int = 16,
                 receive_window: int = 1 << 20,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        """``handshakes_per_source``: new connections accepted per second from one IP
        address. ``retry_threshold``: with this many accepted connections still in
        their handshake, new ones must first prove their address with a Retry (RFC
        9000 8.1), so a flood of Initials from forged addresses costs no state.
        ``receive_window``: bytes one peer may send ahead of what this node has read
        (the connection's flow-control window; a stream gets half)."""
        self.loop = loop or asyncio.get_running_loop()
        self.tls = tls
        self.idle_timeout = idle_timeout
        self.receive_buffer = receive_buffer
        self.receive_window = receive_window  # QUIC flow control: bytes in flight per peer
        self.on_accept = on_accept  # None = dial only (a light client)
        self._sock: socket.socket | None = None
        self._cids: dict[bytes, QuicLink] = {}
        self._links: set[QuicLink] = set()
        self._dirty: set[QuicLink] = set()
        self._flush_scheduled = False
        self._accept_bucket = TokenBucket(max_handshakes_per_s, max_handshakes_per_s, MonotonicClock())
        self.handshakes_per_source = handshakes_per_source
        self._source_buckets: dict[str, TokenBucket] = {}
        self.retry_threshold = retry_threshold
        self._half_open = 0
        self._retry_key = os.urandom(32)
        self._server_config = self._make_config(is_client=False)
        self._gso = sys.platform == "linux"   # turned off at the first failure
        self._gro = False
        self.stats = {"quic_errors": 0, "datagrams_in": 0, "datagrams_out": 0, "send_dropped": 0,
                      "unknown_cid": 0, "accept_refused": 0, "gso_sends": 0, "gro_receives": 0,
                      "icmp_unreachable": 0, "unreachable_probes": 0, "unreachable_closed": 0,
                      "retries_sent": 0, "retry_bad_token": 0, "source_refused": 0,
                      "handshake_datagrams_dropped": 0}
        self._recverr = False
        self._rbuf = bytearray(RECV_BUFFER)
        self._handshakes: deque[tuple[QuicLink, tuple, list]] = deque()
        self._handshake_turn: asyncio.Handle | None = None
        self._rview = memoryview(self._rbuf)

    # -- configuration -------------------------------------------------------------
    def _make_config(self, is_client: bool, server_name: str | None = None) -> QuicConfiguration:
        cfg = QuicConfiguration(
            alpn_protocols=[ALPN], is_client=is_client, idle_timeout=self.idle_timeout,
            connection_id_length=CID_LENGTH, max_datagram_size=MAX_DATAGRAM_SIZE,
            max_datagram_frame_size=MAX_DATAGRAM_FRAME_SIZE,
            # Flow control bounds what one peer can have queued at this node, unread:
            # qh3's defaults (15 MiB, 6 MiB a stream) let a full-rate publisher keep
            # ~70 ms of work ahead of every other peer's frames in the socket.
            max_data=self.receive_window, max_stream_data=self.receive_window // 2,
        )
        if is_client:
            cfg.server_name = server_name
            if self.tls.mode == "production":
                cfg.verify_mode = ssl.CERT_REQUIRED
                cfg.cafile = self.tls.ca_file
                cfg.verify_hostname = False  # who the peer is comes from its identity signature
            else:
                cfg.verify_mode = ssl.CERT_NONE  # self-signed; identity + TOFU decide
        else:
            cfg.load_cert_chain(self.tls.cert_pem, self.tls.key_pem)
        return cfg

    # -- socket ----------------------------------------------------------------------
    def bind(self, host: str, port: int) -> tuple[str, int]:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                try:  # Python falls behind in bursts: the default 208 KiB overflows
                    sock.setsockopt(socket.SOL_SOCKET, opt, self.receive_buffer)
                except OSError:
                    pass
            sock.bind((host, port))
            sock.setblocking(False)
            try:  # ICMP errors (a dead peer's closed port) reach us: see the module doc
                sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
                self._recverr = True
            except OSError:
                self._recverr = False
            try:  # GRO: the kernel hands us bursts of one flow as one buffer
                sock.setsockopt(SOL_UDP, UDP_GRO, 1)
                self._gro = True
            except OSError:
                self._gro = False
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self.loop.add_reader(sock.fileno(), self._on_readable)
        return self.local_address

    @property
    def local_address(self) -> tuple[str, int]:
        assert self._sock is not None
        addr = self._sock.getsockname()
        return addr[0], addr[1]

    @property
    def links(self) -> set[QuicLink]:
        return self._links

    def _sendto(self, data: bytes, addr: tuple) -> None:
        try:
            self._sock.sendto(data, addr)  # type: ignore[union-attr]
            self.stats["datagrams_out"] += 1
        except (BlockingIOError, InterruptedError):
            self.stats["send_dropped"] += 1  # QUIC loss recovery resends it
        except OSError as exc:
            self.stats["send_dropped"] += 1
            log.debug("sendto %s failed: %s", addr, exc)
            self._send_failed(exc)

    def _send_failed(self, exc: OSError) -> None:
        # A pending ICMP error can surface on a send; its details wait in the error queue.
        if self._recverr and exc.errno in UNREACHABLE_ERRNOS:
            self.loop.call_soon(self._read_errors)

    def _send_datagrams(self, datagrams: list[tuple[bytes, tuple]]) -> None:
        """Send one connection's datagrams, several per syscall with GSO where possible.

        GSO (UDP_SEGMENT) takes a buffer of equal-sized segments, the last one may be
        shorter; qh3 fills datagrams to the maximum size, so a burst is one sendmsg
        instead of dozens of sendto calls.
        """
        if not self._gso or len(datagrams) == 1:
            for data, addr in datagrams:
                self._sendto(data, addr)
            return
        run: list[bytes] = []
        run_addr = None
        size = 0
        for data, addr in datagrams:
            n = len(data)
            if run and (addr != run_addr or n > size or len(run[-1]) != size
                        or len(run) >= GSO_MAX_SEGMENTS or (len(run) + 1) * size > GSO_MAX_BYTES):
                self._send_run(run, run_addr, size)
                run = []
            if not run:
                run_addr, size = addr, n
            run.append(data)
        if run:
            self._send_run(run, run_addr, size)

    def _send_run(self, run: list[bytes], addr: tuple, size: int) -> None:
        if len(run) == 1:
            self._sendto(run[0], addr)
            return
        try:
            self._sock.sendmsg([b"".join(run)],  # type: ignore[union-attr]
                               [(SOL_UDP, UDP_SEGMENT, size.to_bytes(2, sys.byteorder))], 0, addr)
            self.stats["datagrams_out"] += len(run)
            self.stats["gso_sends"] += 1
        except (BlockingIOError, InterruptedError):
            self.stats["send_dropped"] += len(run)
        except OSError as exc:
            if exc.errno in UNREACHABLE_ERRNOS:  # an ICMP error, not a GSO problem
                self.stats["send_dropped"] += len(run)
                self._send_failed(exc)
                return
            # no GSO here after all (old kernel, odd device): plain sends
            log.debug("GSO send failed (%s); falling back to one datagram per syscall", exc)
            self._gso = False
            for data in run:
                self._sendto(data, addr)

    # -- dialling -------------------------------------------------------------------
    def dial(self, host: str, port: int) -> QuicLink:
        if self._sock is None:
            raise RuntimeError("endpoint is not bound")
        addr = self._resolve(host, port)
        server_name = None if _is_ip(host) else host
        conn = QuicConnection(configuration=self._make_config(True, server_name))
        link = QuicLink(self, conn, addr, is_client=True)
        self._register(link, [conn.host_cid])
        conn.connect(addr, now=self.loop.time())
        self.mark_dirty(link)
        return link

    def _resolve(self, host: str, port: int) -> tuple:
        sock_family = self._sock.family  # type: ignore[union-attr]
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        for family, _, _, _, sockaddr in infos:
            if family == sock_family:
                return sockaddr[:2]
            if sock_family == socket.AF_INET6 and family == socket.AF_INET:
                return ("::ffff:" + sockaddr[0], sockaddr[1])
        raise OSError(f"cannot reach {host}:{port} from a {sock_family.name} socket")

    def _register(self, link: QuicLink, cids: list[bytes]) -> None:
        self._links.add(link)
        for cid in cids:
            link._cids.add(cid)
            self._cids[cid] = link

    def _forget(self, link: QuicLink) -> None:
        self._links.discard(link)
        self._dirty.discard(link)
        for cid in link._cids:
            if self._cids.get(cid) is link:
                del self._cids[cid]
        link._cids.clear()

    # -- receiving ------------------------------------------------------------------
    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        gro = self._gro
        buf, view = self._rbuf, self._rview
        # link -> [addr, item, item, ...]; an item is a datagram, or (buffer, segment size)
        batches: dict[QuicLink, list] = {}
        for i in range(RECV_BATCH):
            try:
                # into one reused buffer, then an exact-size copy: recvmsg(64 KiB) would
                # malloc 64 KiB per datagram and shrink it, which fragments the heap
                if gro:
                    n, anc, _flags, addr = sock.recvmsg_into((buf,), _GRO_CMSG_SPACE)
                else:
                    n, addr = sock.recvfrom_into(buf)
                    anc = None
                data = bytes(view[:n])
            except (BlockingIOError, InterruptedError):
                if i == 0 and self._recverr:  # woken with nothing to read: errors queued
                    self._read_errors()
                break
            except OSError as exc:  # an ICMP error surfaced as ECONNREFUSED and the like
                log.debug("recv: %s", exc)
                if self._recverr:
                    self._read_errors()
                continue
            item = data
            if anc:
                for level, kind, value in anc:
                    if level == SOL_UDP and kind == UDP_GRO:
                        segment = int.from_bytes(value[:4], sys.byteorder)
                        if 0 < segment < len(data):
                            item = (data, segment)
                            self.stats["gro_receives"] += 1
                            self.stats["datagrams_in"] += -(-len(data) // segment) - 1
            self.stats["datagrams_in"] += 1
            parsed = _parse_dcid(data)
            if parsed is None:
                continue
            dcid, is_initial, version = parsed
            link = self._cids.get(dcid)
            if link is None:
                first = data if item is data else data[:item[1]]
                link = self._accept(first, addr, dcid, is_initial, version)
                if link is None:
                    continue
            batch = batches.get(link)
            if batch is None:
                batches[link] = [addr, item]
            elif batch[0] == addr:
                batch.append(item)
            else:  # peer migrated mid-batch: deliver what we have, then restart
                self._deliver(link, batch[0], batch[1:])
                batches[link] = [addr, item]
        if not batches:
            return
        if len(batches) == 1:
            for link, batch in batches.items():
                if link._half_open:
                    self._defer_handshake(link, batch)
                else:
                    self._deliver(link, batch[0], batch[1:])
        else:
            self._deliver_fairly(batches)
        self._flush()

    def _deliver_fairly(self, batches: dict) -> None:
        """One read holds datagrams of several links: the small batches of established
        links first (a request behind a flooder's burst is handled, and its answer sent,
        before the burst); new connections wait for turns of their own."""
        flowing = []
        for i, (link, b) in enumerate(batches.items()):
            if link._half_open:
                self._defer_handshake(link, b)
            else:
                flowing.append((len(b), i, link))
        flowing.sort()
        for _n, _i, link in flowing:
            batch = batches[link]
            self._deliver(link, batch[0], batch[1:])

    def _defer_handshake(self, link: QuicLink, batch: list) -> None:
        if len(self._handshakes) >= DEFERRED_HANDSHAKES:
            self.stats["handshake_datagrams_dropped"] += len(batch) - 1
            return
        self._handshakes.append((link, batch[0], batch[1:]))
        if self._handshake_turn is None:
            self._handshake_turn = self.loop.call_soon(self._next_handshake)

    def _next_handshake(self) -> None:
        """One new connection's datagrams per loop turn (see DEFERRED_HANDSHAKES)."""
        self._handshake_turn = None
        if not self._handshakes or self._sock is None:
            return
        link, addr, items = self._handshakes.popleft()
        self._deliver(link, addr, items)
        self._flush()
        if self._handshakes:
            self._handshake_turn = self.loop.call_soon(self._next_handshake)

    def _read_errors(self) -> None:
        """Drain the socket's error queue (it keeps the socket readable until empty)."""
        sock = self._sock
        if sock is None:
            return
        for _ in range(ERRQUEUE_BATCH):
            try:
                _data, anc, _flags, addr = sock.recvmsg(64, 256, socket.MSG_ERRQUEUE)
            except OSError:  # empty (EAGAIN) or nothing more to learn
                return
            for _level, _kind, value in anc:
                if len(value) < 5:
                    continue
                err = int.from_bytes(value[:4], sys.byteorder)  # sock_extended_err.ee_errno
                if value[4] in SO_EE_ORIGIN_ICMP and err in UNREACHABLE_ERRNOS and addr:
                    self.stats["icmp_unreachable"] += 1
                    self._unreachable(addr)

    def _unreachable(self, addr: tuple) -> None:
        host, port = addr[0], addr[1]
        for link in [l for l in self._links if l.remote_addr[0] == host
                     and l.remote_addr[1] == port]:
            link._peer_unreachable()
        self._flush()

    def _deliver(self, link: QuicLink, addr: tuple, items: list) -> None:
        if link.closed:
            return
        if link._probe is not None:  # it answered: whatever the ICMP said, it is alive
            link._probe.cancel()
            link._probe = None
        conn = link.conn
        now = self.loop.time()
        plain: list[bytes] = []
        for item in items:
            if type(item) is tuple:  # a GRO buffer: qh3 splits it without copies
                if plain:
                    conn.receive_many_datagrams(plain, addr, now)
                    plain = []
                conn.receive_gro_buffer(item[0], item[1], addr, now)
            else:
                plain.append(item)
        if len(plain) == 1:
            conn.receive_datagram(plain[0], addr, now)
        elif plain:
            conn.receive_many_datagrams(plain, addr, now)
        link._process_events()
        self._dirty.add(link)

    def _accept(self, data: bytes, addr: tuple, dcid: bytes, is_initial: bool,
                version: int) -> QuicLink | None:
        if version > 0 and version not in _SUPPORTED_VERSIONS:
            if len(data) >= 1200:
                scid_at = 6 + data[5]
                scid = data[scid_at + 1:scid_at + 1 + data[scid_at]] if len(data) > scid_at else b""
                self._sendto(encode_quic_version_negotiation(
                    source_cid=dcid, destination_cid=scid,
                    supported_versions=list(_SUPPORTED_VERSIONS)), addr)
            return None
        if not is_initial or len(data) < 1200 or self.on_accept is None:
            self.stats["unknown_cid"] += 1
            return None
        odcid, retry_scid = dcid, None
        # Under load every new connection proves its address first. A token may come at
        # any time (a client retried while we were loaded), so every Initial is parsed.
        try:
            _v, _t, _l, _d, scid, token, *_rest = _pull_quic_header(data, 0, CID_LENGTH)
        except ValueError:
            return None
        if token:
            odcid = self._check_token(token, addr, dcid)
            if odcid is None:
                self.stats["retry_bad_token"] += 1
                return None
            retry_scid = dcid
        elif self._half_open >= self.retry_threshold:
            self._send_retry(addr, version, dcid, scid)
            return None
        host = addr[0]
        bucket = self._source_buckets.pop(host, None)
        if bucket is None:
            if len(self._source_buckets) >= SOURCE_TABLE:
                self._source_buckets.pop(next(iter(self._source_buckets)))
            bucket = TokenBucket(self.handshakes_per_source, self.handshakes_per_source,
                                 MonotonicClock())
        self._source_buckets[host] = bucket  # to the end: recently seen
        if not bucket.try_take():
            self.stats["source_refused"] += 1
            return None
        if not self._accept_bucket.try_take():
            self.stats["accept_refused"] += 1
            return None
        conn = QuicConnection(configuration=self._server_config,
                              original_destination_connection_id=odcid,
                              retry_source_connection_id=retry_scid)
        link = QuicLink(self, conn, addr, is_client=False)
        if not self.on_accept(link):
            self.stats["accept_refused"] += 1
            return None
        link._half_open = True
        self._half_open += 1
        self._register(link, [dcid, conn.host_cid])
        return link

    def _handshake_over(self, link: QuicLink) -> None:
        if link._half_open:
            link._half_open = False
            self._half_open -= 1

    # -- address validation (Retry) ----------------------------------------------------
    def _token_mac(self, stamp: bytes, addr: tuple, odcid: bytes, retry_scid: bytes) -> bytes:
        msg = b"|".join((stamp, str(addr[0]).encode(), str(addr[1]).encode(), odcid, retry_scid))
        return hmac.digest(self._retry_key, msg, "sha256")[:16]

    def _send_retry(self, addr: tuple, version: int, odcid: bytes, client_scid: bytes) -> None:
        retry_scid = os.urandom(CID_LENGTH)
        stamp = int(self.loop.time()).to_bytes(4, "big")
        token = stamp + bytes([len(odcid)]) + odcid + self._token_mac(stamp, addr, odcid,
                                                                      retry_scid)
        self.stats["retries_sent"] += 1
        self._sendto(encode_quic_retry(version=version, source_cid=retry_scid,
                                       destination_cid=client_scid,
                                       original_destination_cid=odcid, retry_token=token), addr)

    def _check_token(self, token: bytes, addr: tuple, retry_scid: bytes) -> bytes | None:
        """The original destination CID a valid token carries, else None."""
        if len(token) < 5 + 16 or len(token) != 5 + token[4] + 16:
            return None
        stamp, odcid, mac = token[:4], token[5:5 + token[4]], token[-16:]
        age = self.loop.time() - int.from_bytes(stamp, "big")
        if not -1.0 <= age <= RETRY_TOKEN_TTL:
            return None
        if not hmac.compare_digest(mac, self._token_mac(stamp, addr, odcid, retry_scid)):
            return None
        return odcid

    # -- flushing -------------------------------------------------------------------
    def mark_dirty(self, link: QuicLink) -> None:
        self._dirty.add(link)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def flush_ready(self, current: QuicLink) -> None:
        """Mid-batch: send what the other links have ready now (``PIPELINE_BYTES`` or
        more queued) while ``current``'s batch is still being processed. A batch of
        calls or publishes then reaches the next hop in parts, and the processes along
        the path work at the same time instead of in turn (a convoy)."""
        dirty = self._dirty
        if len(dirty) < 2 and current in dirty:
            return
        ready = [link for link in dirty if link is not current
                 and link._pending_bytes >= PIPELINE_BYTES]
        if ready:
            now = self.loop.time()
            for link in ready:
                dirty.discard(link)
                link._transmit(now)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, set()
        now = self.loop.time()
        if len(dirty) > 1:
            # the links with least to send first: a reply queued beside a relayed 200 KB
            # frame is not built and sent after that frame's ~170 packets
            dirty = sorted(dirty, key=_queued)
        for link in dirty:
            link._transmit(now)

    def close(self) -> None:
        """Close every connection (already drained by the owner) and the socket."""
        if self._handshake_turn is not None:
            self._handshake_turn.cancel()
            self._handshake_turn = None
        self._handshakes.clear()
        for link in list(self._links):
            link.close(0, "endpoint closing")
        self._flush()
        if self._sock is not None:
            self.loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        for link in list(self._links):
            link._terminated(0, "endpoint closed")


def _queued(link: QuicLink) -> int:
    return link._pending_bytes


def _is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        return True
    except OSError:
        return False

