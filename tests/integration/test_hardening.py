"""What an attacker (or an honest app with a big payload) found on one node, on real QUIC
over loopback: each test here failed before the hardening and passes now."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import subprocess
import sys
import weakref

import msgpack
import pytest

from helpers import addr, start_node, until
from macula.client import CallError, connect
from macula.errors import ErrorCode, SessionRefused
from macula.identity import ephemeral_dev_material, ephemeral_identity
from macula.transport import Endpoint, PeerPool, PoolSettings, SessionConfig
from macula.wire import codec
from macula.wire.codec import HEADER
from macula.wire.messages import MsgType

BIG = 300_000            # larger than the 256 KiB send buffers below, under max_frame
SMALL_BUFFERS = {"send_buffer_bytes": 256 << 10, "max_frame_bytes": 1 << 20}


def header(msg_type: int, length: int) -> bytes:
    return HEADER.pack(1, int(msg_type), 0, 0, length)


async def raw_client(node, name: str = "raw", host: str = "127.0.0.1", **cfg):
    """An established client session that the test may feed with arbitrary bytes."""
    ident = ephemeral_identity()
    tls = ephemeral_dev_material(ident.node_id)
    ep = Endpoint(tls)
    ep.bind(host, 0)
    scfg = SessionConfig(ident, tls, "test", name, role="client", caps=("client",), **cfg)
    pool = PeerPool(ep, scfg, PoolSettings(max_peers=1, max_clients=0, keepalive=3600))
    session = await pool.connect("127.0.0.1", node.listen_address[1])
    return pool, session


def node_side(node, name: str):
    return next((s for s in node.pool.clients() if s.peer.name == name), None)


# -- 1. frames larger than the send buffer --------------------------------------------
async def test_publish_call_and_reply_larger_than_the_send_buffer_are_delivered(tmp_path):
    node = await start_node(tmp_path, "a", limits=SMALL_BUFFERS)
    sub = await connect(addr(node), realm="test", name="sub")
    pub = await connect(addr(node), realm="test", name="pub")
    try:
        inbox = sub.subscribe("cam.frame")
        await sub.flush()
        payload = os.urandom(BIG)
        await pub.publish("cam.frame", payload)
        assert (await inbox.next(5)).payload == payload
        sub.register("echo.big", lambda args: args + args[:1000])
        await sub.flush()
        reply = await pub.call("echo.big", payload, timeout=5)
        assert reply == payload + payload[:1000]
        # the node still serves small traffic at once afterwards
        await pub.publish("cam.frame", b"small")
        assert (await inbox.next(2)).payload == b"small"
    finally:
        await pub.close()
        await sub.close()
        await node.stop()


async def test_a_frame_over_the_peers_limit_is_refused_at_once_with_a_clear_error(tmp_path):
    node = await start_node(tmp_path, "a", limits=SMALL_BUFFERS)
    pub = await connect(addr(node), realm="test", name="pub")
    srv = await connect(addr(node), realm="test", name="srv")
    try:
        with pytest.raises(Exception) as info:
            await asyncio.wait_for(pub.publish("t", os.urandom((1 << 20) + 1)), 2)
        assert "FRAME_TOO_LARGE" in repr(info.value) or "limit" in str(info.value)
        # a reply too large for the node: the caller gets an error, not a timeout
        srv.register("huge", lambda args: os.urandom((1 << 20) + 1))
        await srv.flush()
        with pytest.raises(CallError) as err:
            await pub.call("huge", b"", timeout=3)
        assert err.value.code is ErrorCode.FRAME_TOO_LARGE
        # and the node still serves: a call without provider is answered at once
        with pytest.raises(CallError) as none:
            await pub.call("nothing", b"", timeout=3)
        assert none.value.code is ErrorCode.NO_RESPONDERS
    finally:
        await srv.close()
        await pub.close()
        await node.stop()


async def test_cli_publishes_a_payload_larger_than_its_send_buffer_from_stdin(tmp_path):
    node = await start_node(tmp_path, "a")
    sub = await connect(addr(node), realm="test", name="sub")
    try:
        inbox = sub.subscribe("files.in")
        await sub.flush()
        payload = os.urandom(BIG)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        run = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "macula", "pub", "files.in", "-",
                             "--node", addr(node), "--realm", "test"],
            input=payload, capture_output=True, env=env, timeout=30)
        assert run.returncode == 0, run.stderr
        assert (await inbox.next(5)).payload == payload
    finally:
        await sub.close()
        await node.stop()


# -- 2. partial frames: node-wide budget, progress deadline, PING timeout, freed at once
async def test_partial_frames_from_many_sessions_are_bounded_node_wide(tmp_path):
    budget = 2 << 20
    node = await start_node(tmp_path, "a", limits={"partial_frame_bytes_total": budget})
    pools = []
    try:
        for i in range(12):  # 12 x 400 KB partial frames would hold 4.8 MB
            pool, s = await raw_client(node, f"p{i}")
            pools.append(pool)
            s.link.queue(header(MsgType.PUBLISH, 1_000_000) + os.urandom(400_000))
        limit = node.pool.cfg.receive_budget
        await until(lambda: limit.evicted >= 1, what="evictions")
        assert limit.used <= budget, limit.used
        assert len(node.pool.clients()) < 12  # the least recently progressed were closed
        # an honest client is still served
        async with await connect(addr(node), realm="test", name="honest") as c:
            inbox = c.subscribe("x")
            await c.flush()
            await c.publish("x", b"ok")
            assert (await inbox.next(2)).payload == b"ok"
    finally:
        for p in pools:
            await p.close()
        await node.stop()


async def test_a_frame_that_stalls_mid_body_ends_its_session(tmp_path):
    node = await start_node(tmp_path, "a", frame=0.5)
    pool, s = await raw_client(node, "stall")
    try:
        await until(lambda: node_side(node, "stall") is not None, what="attached")
        s.link.queue(header(MsgType.PUBLISH, 10_000) + b"\x00" * 100)
        await until(lambda: node_side(node, "stall") is None, timeout=5, what="stalled session closed")
        assert node.pool.stats.unhealthy_closed == 1
    finally:
        await pool.close()
        await node.stop()


async def test_a_peer_that_stops_answering_ping_is_closed(tmp_path):
    node = await start_node(tmp_path, "a", keepalive=0.2, ping=1.0)
    pool, s = await raw_client(node, "mute")
    try:
        await until(lambda: node_side(node, "mute") is not None, what="attached")
        # the client's endpoint goes deaf: no PONG, no QUIC acks (a board that hung)
        pool.endpoint.loop.remove_reader(pool.endpoint._sock.fileno())
        await until(lambda: node_side(node, "mute") is None, timeout=6, what="mute session closed")
        assert node.pool.stats.unhealthy_closed >= 1
    finally:
        await pool.close()
        await node.stop()


async def test_a_closed_session_is_freed_without_the_cyclic_gc(tmp_path):
    node = await start_node(tmp_path, "a")
    gc.disable()
    try:
        pool, s = await raw_client(node, "gone")
        await until(lambda: node_side(node, "gone") is not None, what="attached")
        ref = weakref.ref(node_side(node, "gone"))
        s.link.queue(header(MsgType.PUBLISH, 100_000) + b"\x00" * 50_000)  # a partial frame held
        await until(lambda: ref() is not None and ref()._decoder.buffered > 0, what="partial held")
        await pool.close()
        await until(lambda: node_side(node, "gone") is None, what="session closed")
        # freed by reference counting alone: the cyclic GC is off, never collected
        await until(lambda: ref() is None, 2, "closed session freed without the cyclic GC")
    finally:
        gc.enable()
        await node.stop()


# -- 3. frames of types the peer may not send are refused from the header -------------
async def test_unserved_types_are_refused_from_the_header_without_decoding(tmp_path, monkeypatch):
    node = await start_node(tmp_path, "a", limits={"bad_frames_per_minute": 100})
    decoded = []
    real = codec.decode_body
    monkeypatch.setattr(codec, "decode_body", lambda t, b: decoded.append(t) or real(t, b))
    pool, s = await raw_client(node, "intruder")
    errors = []
    pool.on_message = lambda session, msg: errors.append(msg)
    try:
        body = msgpack.packb([1, 0, "op", list(range(100_000))])
        for t in (MsgType.BRIDGE_RPC, MsgType.GOSSIP_PUSH, MsgType.SWIM_PING, MsgType.FIND_NODE):
            s.link.queue(header(t, len(body)) + body)
        await until(lambda: len(errors) >= 4, what="four refusals")
        assert {e.code for e in errors} == {int(ErrorCode.UNKNOWN_TYPE)}
        assert all("not served" in e.message for e in errors)
        assert not {MsgType.BRIDGE_RPC, MsgType.GOSSIP_PUSH, MsgType.SWIM_PING} & set(decoded)
        assert node_side(node, "intruder") is not None  # refused, not crashed
    finally:
        await pool.close()
        await node.stop()


async def test_gossip_from_a_node_outside_the_cluster_is_refused_from_the_header(tmp_path, monkeypatch):
    a = await start_node(tmp_path, "a", cluster={"name": "home"})
    b = await start_node(tmp_path, "b", seeds=(addr(a),), cluster={"name": "elsewhere"})
    try:
        await until(lambda: b.pool.get(a.node_id) is not None, what="b joined a")
        decoded = []
        real = codec.decode_body
        monkeypatch.setattr(codec, "decode_body", lambda t, body: decoded.append(t) or real(t, body))
        session = b.pool.get(a.node_id)
        body = msgpack.packb([1, [], list(range(50_000))])
        session.link.queue(header(MsgType.GOSSIP_PUSH, len(body)) + body)
        await until(lambda: a.pool.get(b.node_id).bad_frames >= 1, what="refused")
        assert MsgType.GOSSIP_PUSH not in decoded
    finally:
        await b.stop()
        await a.stop()


# -- 4. lock-out: Initial flood, client-table flood, per-source limits -----------------
def _initials(n: int, port: int) -> list[bytes]:
    """n client Initials of fresh connections, as a flooder sends them (never continued)."""
    from qh3.quic.configuration import QuicConfiguration
    from qh3.quic.connection import QuicConnection

    out = []
    for _ in range(n):
        cfg = QuicConfiguration(is_client=True, alpn_protocols=["macula/1"])
        conn = QuicConnection(configuration=cfg)
        conn.connect(("127.0.0.1", port), now=0.0)
        out += [d for d, _ in conn.datagrams_to_send(now=0.0)]
    return out


async def test_initial_flood_from_one_source_does_not_lock_out_honest_clients(tmp_path):
    node = await start_node(tmp_path, "a", limits={"handshakes_per_second": 100,
                                                   "handshakes_per_source": 20})
    port = node.listen_address[1]
    flood = await asyncio.to_thread(_initials, 600, port)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.2", 0))  # another source than the honest clients
    try:
        for d in flood:
            sock.sendto(d, ("127.0.0.1", port))
        ok = 0
        for i in range(7):
            try:
                c = await connect(addr(node), realm="test", name=f"honest{i}", timeout=3)
                ok += 1
                await c.close()
            except SessionRefused:
                pass
            for d in flood[i * 50:(i + 1) * 50]:  # the flood goes on between connects
                sock.sendto(d, ("127.0.0.1", port))
        assert ok == 7
        ep = node.pool.endpoint.stats
        assert ep["retries_sent"] + ep["source_refused"] > 0
    finally:
        sock.close()
        await node.stop()


async def test_retry_makes_an_honest_client_prove_its_address_and_it_gets_in(tmp_path):
    node = await start_node(tmp_path, "a")
    node.pool.endpoint.retry_threshold = 0  # every new connection must answer a Retry
    try:
        async with await connect(addr(node), realm="test", name="proved", timeout=5) as c:
            assert c.node_name == "a"
        assert node.pool.endpoint.stats["retries_sent"] >= 1
        assert node.pool.endpoint.stats["retry_bad_token"] == 0
    finally:
        await node.stop()


async def test_a_full_client_table_evicts_throwaway_clients_not_idle_honest_ones(tmp_path):
    node = await start_node(tmp_path, "a", limits={"max_clients": 8})
    provider = await connect(addr(node), realm="test", name="provider")
    idle = []
    try:
        provider.register("svc", lambda args: b"pong")
        await provider.flush()
        for i in range(7):
            idle.append(await raw_client(node, f"idle{i}"))
        await until(lambda: len(node.pool.clients()) == 8, what="table full")
        for i in range(7, 12):  # a flood of throw-away identities on a full table
            idle.append(await raw_client(node, f"idle{i}"))
        caller = await connect(addr(node), realm="test", name="caller", timeout=3)
        names = {s.peer.name for s in node.pool.clients()}
        assert {"provider", "caller"} <= names and len(names) <= 8
        assert node.pool.stats.clients_evicted >= 6
        assert await caller.call("svc", b"", timeout=3) == b"pong"  # the idle provider stayed
        await caller.close()
    finally:
        await provider.close()
        for pool, _ in idle:
            await pool.close()
        await node.stop()


async def test_sessions_per_source_address_are_capped(tmp_path):
    node = await start_node(tmp_path, "a", limits={"sessions_per_source": 3})
    pools = []
    try:
        for i in range(3):
            pools.append((await raw_client(node, f"s{i}"))[0])
        with pytest.raises(SessionRefused) as info:
            pools.append((await raw_client(node, "s3"))[0])
        assert info.value.code is ErrorCode.OVERLOADED
        # another source address is still admitted
        pools.append((await raw_client(node, "other", host="127.0.0.2"))[0])
        await until(lambda: node_side(node, "other") is not None, what="other admitted")
        assert node.pool.stats.refused_source >= 1
    finally:
        for p in pools:
            await p.close()
        await node.stop()


async def test_a_light_client_accepts_no_inbound_connection(tmp_path):
    node = await start_node(tmp_path, "a")
    client = await connect(addr(node), realm="test", name="light")
    other = await start_node(tmp_path, "b")
    try:
        # a node dialling the client's port (a stale address the OS reused) gets nothing,
        # and the client keeps its session to its own node
        port = client._pool.endpoint.local_address[1]
        with pytest.raises(SessionRefused):
            await other.pool.connect("127.0.0.1", port, timeout=1.0)
        inbox = client.subscribe("still.here")
        await client.flush()
        await client.publish("still.here", b"yes")
        assert (await inbox.next(2)).payload == b"yes"
    finally:
        await other.stop()
        await client.close()
        await node.stop()


# -- slow subscriber / full-rate publisher --------------------------------------------
async def test_a_peer_may_have_only_the_profiles_receive_window_in_flight(tmp_path):
    """qh3's default windows (15 MiB, 6 MiB a stream) let a full-rate publisher keep
    ~70 ms of work queued ahead of every other client's frames (bench/run abuse,
    slowsub: honest p99 1.6 -> 74 ms); the node now advertises the profile's window."""
    node = await start_node(tmp_path, "a", limits={"receive_window_bytes": 256 << 10})
    pool, session = await raw_client(node)
    try:
        conn = session.link.conn
        assert conn._remote_max_stream_data_bidi_remote == 128 << 10
        # and the stream still carries a frame larger than the window
        big = await connect(addr(node), realm="test", name="big")
        sub = await connect(addr(node), realm="test", name="sub")
        inbox = sub.subscribe("bulk")
        await sub.flush()
        payload = os.urandom(600_000)
        await big.publish("bulk", payload)
        assert (await inbox.next(5)).payload == payload
        await big.close()
        await sub.close()
    finally:
        await pool.close()
        await node.stop()
