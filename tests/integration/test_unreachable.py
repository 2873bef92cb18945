"""A peer whose process is gone is noticed through ICMP errors, not at the idle timeout."""

from __future__ import annotations

import asyncio

import pytest

from helpers import NodeProcess, free_udp_port, peer_names, start_node, until
from macula.errors import ErrorCode, SessionRefused


async def test_a_dial_to_a_closed_port_fails_at_once_not_at_the_connect_timeout(tmp_path):
    a = await start_node(tmp_path, "a", connect=5.0)
    try:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(SessionRefused) as err:
            await a.pool.connect("127.0.0.1", free_udp_port())  # nobody listens there
        assert loop.time() - t0 < 1.0
        assert err.value.code is ErrorCode.PEER_UNREACHABLE
        assert a.endpoint.stats["icmp_unreachable"] >= 1
    finally:
        await a.stop()


async def test_a_killed_peer_is_closed_after_the_icmp_probe_not_the_idle_timeout(tmp_path):
    a = await start_node(tmp_path, "a")  # keepalive 1 s; QUIC idle timeout 60 s
    b = NodeProcess(tmp_path, "b", seeds=(f"127.0.0.1:{a.listen_address[1]}",))
    try:
        await until(lambda: peer_names(a) == {"b"}, timeout=20, what="b joined")
        b.kill()  # no CONNECTION_CLOSE, no GOAWAY: its port is simply closed
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await until(lambda: peer_names(a) == set(), timeout=10, what="a noticed b is gone")
        assert loop.time() - t0 < 5.0  # keepalive (1 s) + probe (1 s), with slack
        assert a.endpoint.stats["unreachable_closed"] >= 1
    finally:
        b.kill()
        await a.stop()


async def test_a_forged_icmp_error_does_not_close_a_live_connection(tmp_path):
    a = await start_node(tmp_path, "a")
    b = await start_node(tmp_path, "b", seeds=(f"127.0.0.1:{a.listen_address[1]}",))
    try:
        await until(lambda: peer_names(a) == {"b"}, what="b joined")
        session = a.pool.peers()[0]
        link = session.link
        link._peer_unreachable()  # what an ICMP naming b's address triggers
        assert link._probe is not None
        await until(lambda: link._probe is None, timeout=5, what="probe answered")
        assert not link.closed
        assert a.endpoint.stats["unreachable_closed"] == 0
        assert peer_names(a) == {"b"}
    finally:
        await b.stop()
        await a.stop()


async def test_a_call_through_a_frozen_node_fails_by_the_sdk_guard(tmp_path):
    import signal

    from macula.client import CallError, connect

    node = NodeProcess(tmp_path, "frozen")
    client = None
    try:
        async def attached():
            nonlocal client
            while client is None:
                try:
                    client = await connect(node.address, realm="test", timeout=1.0)
                except Exception:
                    await asyncio.sleep(0.05)  # retry until the process listens
        await asyncio.wait_for(attached(), 20)
        node.proc.send_signal(signal.SIGSTOP)  # alive (its port is open) but never answers
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(CallError) as err:
            await client.call("anything", b"x", timeout=0.2)
        assert err.value.code is ErrorCode.CALL_TIMEOUT
        assert 1.2 <= loop.time() - t0 < 3.0  # timeout + 1 s guard, swept every 0.5 s
        assert not client._guards
    finally:
        node.proc.send_signal(signal.SIGCONT)
        if client is not None:
            await client.close()
        node.kill()


async def test_an_icmp_error_for_a_closing_connection_is_ignored(tmp_path):
    a = await start_node(tmp_path, "a")
    b = await start_node(tmp_path, "b", seeds=(f"127.0.0.1:{a.listen_address[1]}",))
    try:
        await until(lambda: peer_names(a) == {"b"}, what="b joined")
        link = a.pool.peers()[0].link
        link.conn.close(error_code=0, reason_phrase="test")  # qh3 now refuses a PING
        link._peer_unreachable()  # must not raise
        assert link._probe is None
    finally:
        await b.stop()
        await a.stop()
