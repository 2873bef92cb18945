"""Attacker processes for bench_abuse: one attack class each, run against a real node.

    python -m abuse_attacks KIND HOST PORT REALM SECONDS BLOCK [ARGS...]

Every attack prints {"ready": 1, ...} once it is under way (its setup done), then runs
until SIGTERM or SECONDS pass (a hard cap), and prints one summary line. Attack sessions
leave from source addresses 127.0.BLOCK.x (loopback answers all of 127/8), so they are
other hosts to the node than the honest clients on 127.0.0.1. Every loop is bounded in
count and time.

Raw attackers use macula's own QUIC edge (transport.quic.Endpoint over qh3, ALPN
macula/1) and Session only for the QUIC + CONNECT handshake; after it they write frame
bytes of their own making straight onto the link (``link.queue``): partial frames,
frames of types they may not send. The Initial flood uses qh3's QuicConnection alone and
a plain UDP socket.

KIND and ARGS:
  oversized SIZE            SDK clients: a subscriber and a provider; a publisher and a
                            caller send SIZE-byte payloads (> send buffer, <= max_frame)
  partial N BODY FRAME SRC  N raw sessions (role node) over SRC source addresses each send a
                            header announcing FRAME body bytes and BODY of them, then stall
  unserved SRC              raw sessions (client and node roles, fresh identities) send
                            valid frames of types they may not send, big `any` fields,
                            reconnecting whenever the node cuts them
  initials RATE             RATE QUIC Initials a second from one source, never continued
  clients N SRC             N throw-away client identities connect and stay idle
  pins N SRC                up to N throw-away identities connect as role node (TOFU pins)
  slowsub                   an SDK subscriber of abuse.busy (the bench SIGSTOPs it)
  floodpub SIZE             an SDK publisher flooding abuse.busy with SIZE-byte messages
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time

DIAL_TIMEOUT = 3.0
CONCURRENCY = 16   # dials in flight at once


def say(**kw) -> None:
    print(json.dumps(kw), flush=True)


class Stop:
    """Set by SIGTERM or the SECONDS cap."""

    def __init__(self, seconds: float) -> None:
        self.event = asyncio.Event()
        self.deadline = time.monotonic() + seconds
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.event.set)
        loop.call_later(seconds, self.event.set)

    @property
    def is_set(self) -> bool:
        return self.event.is_set()

    async def wait(self) -> None:
        await self.event.wait()


# ---- raw sessions ------------------------------------------------------------------------
class Raw:
    """Source endpoints and one shared TLS certificate; a fresh identity per session
    (the identity signs the certificate key, so one certificate serves them all)."""

    def __init__(self, host: str, port: int, realm: str, block: int, sources: int) -> None:
        from macula.identity import ephemeral_dev_material, ephemeral_identity
        from macula.transport import Endpoint

        self.host, self.port, self.realm = host, port, realm
        self.tls = ephemeral_dev_material(ephemeral_identity().node_id)
        self.endpoints = []
        for i in range(max(1, sources)):
            ep = Endpoint(self.tls, idle_timeout=60.0)
            ep.bind(f"127.0.{block}.{i + 1}", 0)
            self.endpoints.append(ep)
        self.n = 0
        self.refused: dict[str, int] = {}
        self.closed_by_node = 0

    def _closed(self, session) -> None:
        if not getattr(session, "_ours", False):
            self.closed_by_node += 1

    async def session(self, role: str = "client", name: str | None = None):
        """A fresh identity's established session, or None (refusal counted by code)."""
        from macula.errors import SessionRefused
        from macula.identity import ephemeral_identity
        from macula.transport.session import Session, SessionConfig

        self.n += 1
        ep = self.endpoints[self.n % len(self.endpoints)]
        listen = ep.local_address if role == "node" else None
        cfg = SessionConfig(ephemeral_identity(), self.tls, self.realm,
                            name or f"abuse-{os.getpid()}-{self.n}", role=role, listen=listen,
                            caps=("client",) if role == "client" else (),
                            max_frame=1 << 20, send_buffer_bytes=4 << 20,
                            handshake_timeout=DIAL_TIMEOUT)
        try:
            link = ep.dial(self.host, self.port)
        except OSError as exc:
            self._count(type(exc).__name__)
            return None
        s = Session(link, cfg, on_admit=lambda s: None, on_established=lambda s: None,
                    on_message=lambda s, m: None, on_closed=self._closed)
        try:
            await asyncio.wait_for(s.established(), DIAL_TIMEOUT)
            return s
        except asyncio.TimeoutError:
            s._ours = True
            s.close()
            self._count("TIMEOUT")
        except SessionRefused as err:
            self._count(err.code.name if err.code is not None else "refused")
        return None

    def _count(self, what: str) -> None:
        self.refused[what] = self.refused.get(what, 0) + 1

    def close_own(self, s) -> None:
        s._ours = True
        s.close()

    def close(self) -> None:
        for ep in self.endpoints:
            ep.close()


async def gather_sessions(raw: Raw, n: int, stop: Stop, role: str = "client",
                          setup: float = 15.0) -> list:
    """Up to n established sessions, CONCURRENCY dials at a time, bounded by ``setup`` s."""
    out: list = []
    deadline = time.monotonic() + setup
    attempts = 0
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one() -> None:
        async with sem:
            if stop.is_set or time.monotonic() > deadline or len(out) >= n:
                return
            s = await raw.session(role)
            if s is not None:
                out.append(s)

    while len(out) < n and attempts < 4 * n and not stop.is_set and time.monotonic() < deadline:
        batch = min(n - len(out), 4 * n - attempts)
        attempts += batch
        await asyncio.gather(*(one() for _ in range(batch)))
    return out


# ---- attacks -----------------------------------------------------------------------------
async def partial(host, port, realm, seconds, block, n, body, frame, sources) -> None:
    from macula.wire.codec import HEADER, PROTOCOL_VERSION
    from macula.wire.messages import MsgType

    stop = Stop(seconds)
    raw = Raw(host, port, realm, block, sources)
    # role node: the peer table (max_peers) holds them all, so this attack is not also a
    # client-table flood (max_clients is low in the bench); PUBLISH is accepted from nodes
    sessions = await gather_sessions(raw, n, stop, role="node")
    head = HEADER.pack(PROTOCOL_VERSION, MsgType.PUBLISH, 0, 0, frame)
    chunk = b"\x92" + b"\xa1x" + b"\x00" * (body - 3)  # starts like a body, never ends
    for s in sessions:
        s.link.queue(head + chunk)
    sent_by = time.monotonic() + 10.0   # wait (bounded) until the node has every part
    while time.monotonic() < sent_by and any(s.link.buffered for s in sessions
                                             if not s.link.closed):
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    say(ready=1, sessions=len(sessions), partial_bytes=len(sessions) * body)
    await stop.wait()
    alive = sum(1 for s in sessions if s.state.value == "established")
    links_closed = sum(1 for s in sessions if s.link.closed)
    say(sessions=len(sessions), alive_at_end=alive, closed_by_node=raw.closed_by_node,
        links_closed=links_closed, refused=raw.refused)
    raw.close()


def unserved_frames() -> list[tuple[str, bytes]]:
    from macula.wire import encode
    from macula.wire.messages import (
        BridgeRpc, FindNode, GossipPush, GossipState, PubsubRoute, Store, SwimPing,
        SwimPingReq,
    )

    big = [list(range(100)) for _ in range(400)]   # ~40k ints: costly to decode, ~80 KB
    blob = os.urandom(100_000)
    rid = os.urandom(32)
    msgs = [
        ("GOSSIP_PUSH", GossipPush(1, (), big)),
        ("GOSSIP_STATE", GossipState(1, (("abuse", big),), (), True)),
        ("SWIM_PING", SwimPing(1, tuple((os.urandom(32), 0, i, None, None) for i in range(64)),
                               True)),
        ("SWIM_PING_REQ", SwimPingReq(1, rid, ())),
        ("BRIDGE_RPC", BridgeRpc(1, 0, "abuse", big)),
        ("PUBSUB_ROUTE", PubsubRoute(rid, "abuse.route", blob)),
        ("STORE", Store(1, rid, tuple((os.urandom(32), os.urandom(8000), 300)
                                      for _ in range(12)))),
        ("FIND_NODE", FindNode(1, rid)),
    ]
    return [(name, encode(m)) for name, m in msgs]


async def unserved(host, port, realm, seconds, block, sources) -> None:
    stop = Stop(seconds)
    raw = Raw(host, port, realm, block, sources)
    frames = unserved_frames()
    counts = {"sessions": 0, "frames": 0, "bytes_queued": 0, "cut_by_node": 0, "roles": {}}
    say(ready=1, frame_sizes={n: len(f) for n, f in frames})

    async def worker(w: int) -> None:
        for k in range(10_000):   # sessions per worker: bounded
            if stop.is_set:
                return
            role = "node" if (w + k) % 2 else "client"
            s = await raw.session(role)
            if s is None:
                await asyncio.sleep(0.05)
                continue
            counts["sessions"] += 1
            counts["roles"][role] = counts["roles"].get(role, 0) + 1
            for i in range(2_000):   # frames per session: bounded
                if stop.is_set or s.state.value != "established":
                    break
                name, f = frames[i % len(frames)]
                s.link.queue(f)
                counts["frames"] += 1
                counts["bytes_queued"] += len(f)
                if i % 4 == 3:
                    await asyncio.sleep(0.001)
                    if s.link.buffered > 2 << 20:
                        await asyncio.sleep(0.02)
            if s.state.value != "established":
                counts["cut_by_node"] += 1
            else:
                raw.close_own(s)

    await asyncio.gather(*(worker(w) for w in range(4)))
    say(**counts, refused=raw.refused)
    raw.close()


async def initials(host, port, realm, seconds, block, rate) -> None:
    from qh3.quic.configuration import QuicConfiguration
    from qh3.quic.connection import QuicConnection

    stop = Stop(seconds)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((f"127.0.{block}.1", 0))
    sock.setblocking(False)
    cfg = QuicConfiguration(is_client=True, alpn_protocols=["macula/1"],
                            connection_id_length=8, max_datagram_size=1452)
    sent = replies = errors = 0
    say(ready=1)
    t0 = time.monotonic()
    for i in range(int(rate * seconds) + 1):   # bounded count
        if stop.is_set:
            break
        now = time.monotonic()
        conn = QuicConnection(configuration=cfg)
        conn.connect((host, port), now=now)
        for data, _addr in conn.datagrams_to_send(now):
            try:
                sock.sendto(data, (host, port))
                sent += 1
            except OSError:
                errors += 1
        for _ in range(64):   # drain whatever comes back (Retry, handshake): never answer
            try:
                sock.recv(65536)
                replies += 1
            except OSError:
                break
        delay = t0 + (i + 1) / rate - time.monotonic()
        await asyncio.sleep(max(0.0, delay))
    elapsed = time.monotonic() - t0
    say(initials=i + 1, datagrams=sent, replies=replies, send_errors=errors,
        rate_s=round((i + 1) / max(elapsed, 1e-6), 1))
    sock.close()


async def clients(host, port, realm, seconds, block, n, sources) -> None:
    stop = Stop(seconds)
    raw = Raw(host, port, realm, block, sources)
    sessions = await gather_sessions(raw, n, stop)
    say(ready=1, sessions=len(sessions))
    await stop.wait()
    alive = sum(1 for s in sessions if s.state.value == "established")
    say(established=len(sessions), alive_at_end=alive, closed_by_node=raw.closed_by_node,
        refused=raw.refused)
    raw.close()


async def pins(host, port, realm, seconds, block, n, sources) -> None:
    stop = Stop(seconds)
    raw = Raw(host, port, realm, block, sources)
    counts = {"established": 0}
    say(ready=1)
    sem = asyncio.Semaphore(CONCURRENCY)
    done = 0

    async def one(i: int) -> None:
        async with sem:
            if stop.is_set:
                return
            s = await raw.session("node", name=f"pin-{os.getpid()}-{i}")
            if s is not None:
                counts["established"] += 1
                await asyncio.sleep(0.05)
                raw.close_own(s)

    for start in range(0, n, 64):   # bounded by n and by time
        if stop.is_set:
            break
        await asyncio.gather(*(one(i) for i in range(start, min(n, start + 64))))
        done = min(n, start + 64)
    say(attempted=done, **counts, refused=raw.refused)
    await asyncio.sleep(0.2)
    raw.close()


async def slowsub(host, port, realm, seconds) -> None:
    from macula.client import connect

    stop = Stop(seconds)
    c = await connect(f"{host}:{port}", realm=realm, name="abuse-slowsub", timeout=DIAL_TIMEOUT)
    c.subscribe("abuse.busy", queue=16)
    await c.flush()
    say(ready=1)
    await stop.wait()
    say(done=1)


async def floodpub(host, port, realm, seconds, size) -> None:
    from macula.client import connect

    stop = Stop(seconds)
    c = await connect(f"{host}:{port}", realm=realm, name="abuse-floodpub", timeout=DIAL_TIMEOUT)
    payload = b"x" * size
    say(ready=1)
    n = 0
    t0 = time.monotonic()
    per_half_s: list[int] = []
    for n in range(1, 5_000_000):   # bounded count
        if stop.is_set:
            break
        await c.publish("abuse.busy", payload)
        slot = int((time.monotonic() - t0) * 2)
        while len(per_half_s) <= slot:
            per_half_s.append(0)
        per_half_s[slot] += 1
        if n % 64 == 0:
            await asyncio.sleep(0)
    say(published=n, rate_s=round(n / max(1e-6, time.monotonic() - t0)),
        per_half_s=per_half_s[:40])


async def oversized(host, port, realm, seconds, size) -> None:
    from macula.client import CallError, connect

    stop = Stop(seconds)
    addr = f"{host}:{port}"
    sub_c = await connect(addr, realm=realm, name="abuse-bigsub", timeout=DIAL_TIMEOUT)
    sub = sub_c.subscribe("abuse.big", queue=64)
    prov = await connect(addr, realm=realm, name="abuse-bigprov", timeout=DIAL_TIMEOUT)
    prov.register("abuse.bigecho", lambda args: args)
    await sub_c.flush()
    await prov.flush()
    pub = await connect(addr, realm=realm, name="abuse-bigpub", timeout=DIAL_TIMEOUT)
    caller = await connect(addr, realm=realm, name="abuse-bigcaller", timeout=DIAL_TIMEOUT)
    payload = os.urandom(size)
    counts = {"published": 0, "delivered": 0, "calls_ok": 0, "calls_failed": 0}
    failures: dict[str, int] = {}
    say(ready=1)

    async def publisher() -> None:
        for _ in range(100_000):
            if stop.is_set:
                return
            await pub.publish("abuse.big", payload)
            counts["published"] += 1
            await asyncio.sleep(0.002)

    async def calls() -> None:
        for _ in range(100_000):
            if stop.is_set:
                return
            try:
                r = await caller.call("abuse.bigecho", payload, timeout=2.0)
                counts["calls_ok" if len(r) == size else "calls_failed"] += 1
            except (CallError, asyncio.TimeoutError) as exc:
                counts["calls_failed"] += 1
                key = getattr(getattr(exc, "code", None), "name", type(exc).__name__)
                failures[key] = failures.get(key, 0) + 1
                await asyncio.sleep(0.05)

    async def reader() -> None:
        while not stop.is_set:
            try:
                await sub.next(0.2)
                counts["delivered"] += 1
            except asyncio.TimeoutError:
                pass

    await asyncio.gather(publisher(), calls(), reader())
    say(**counts, call_failures=failures, size=size)


def main(argv: list[str]) -> None:
    kind, host, port, realm, seconds = argv[0], argv[1], int(argv[2]), argv[3], float(argv[4])
    rest = argv[5:]
    ints = [int(a) for a in rest]
    block = ints[0] if ints else 0
    if kind == "partial":
        coro = partial(host, port, realm, seconds, *ints)
    elif kind == "unserved":
        coro = unserved(host, port, realm, seconds, *ints)
    elif kind == "initials":
        coro = initials(host, port, realm, seconds, *ints)
    elif kind == "clients":
        coro = clients(host, port, realm, seconds, *ints)
    elif kind == "pins":
        coro = pins(host, port, realm, seconds, *ints)
    elif kind == "slowsub":
        coro = slowsub(host, port, realm, seconds)
    elif kind == "floodpub":
        coro = floodpub(host, port, realm, seconds, *ints)
    elif kind == "oversized":
        coro = oversized(host, port, realm, seconds, *ints)
    else:
        raise SystemExit(f"unknown attack {kind}")
    del block
    asyncio.run(coro)


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.ERROR)
    main(sys.argv[1:])
