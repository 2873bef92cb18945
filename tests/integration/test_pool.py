"""The peer pool at its bounds, idle expiry and graceful shutdown, on real QUIC."""

from __future__ import annotations

import asyncio

import pytest

from helpers import addr, peer_names, start_node, until
from macula.errors import ErrorCode, SessionRefused
from macula.host import PeerDown


async def test_full_pool_evicts_the_least_recently_used_peer_but_never_a_seed(tmp_path):
    seed = await start_node(tmp_path, "seed")
    hub = await start_node(tmp_path, "hub", seeds=(addr(seed),), limits={"max_peers": 2})
    others = []
    try:
        await until(lambda: peer_names(hub) == {"seed"}, what="hub joined its seed")
        p1 = await start_node(tmp_path, "p1")
        others.append(p1)
        await p1.pool.connect("127.0.0.1", hub.listen_address[1])
        await until(lambda: peer_names(hub) == {"seed", "p1"}, what="p1 in")
        p2 = await start_node(tmp_path, "p2")
        others.append(p2)
        await p2.pool.connect("127.0.0.1", hub.listen_address[1])
        # p1 was evicted (GOAWAY) to make room; the seed stays although it is older
        await until(lambda: peer_names(hub) == {"seed", "p2"}, what="p1 evicted")
        await until(lambda: "hub" not in peer_names(p1), what="p1 told")
        assert hub.pool.stats.evicted == 1 and len(hub.pool.peers()) == 2
    finally:
        for n in others + [hub, seed]:
            await n.stop()


async def test_full_pool_of_seeds_refuses_newcomers(tmp_path):
    s1 = await start_node(tmp_path, "s1")
    s2 = await start_node(tmp_path, "s2")
    hub = await start_node(tmp_path, "hub", seeds=(addr(s1), addr(s2)), limits={"max_peers": 2})
    late = await start_node(tmp_path, "late")
    try:
        await until(lambda: peer_names(hub) == {"s1", "s2"}, what="hub joined both seeds")
        with pytest.raises(SessionRefused) as info:
            await late.pool.connect("127.0.0.1", hub.listen_address[1])
        assert info.value.code is ErrorCode.OVERLOADED and "limit of 2" in info.value.message
        assert peer_names(hub) == {"s1", "s2"}
    finally:
        for n in (late, hub, s2, s1):
            await n.stop()


async def test_unused_peer_is_closed_after_the_idle_ttl_but_seeds_are_kept(tmp_path):
    seed = await start_node(tmp_path, "seed")
    a = await start_node(tmp_path, "a", seeds=(addr(seed),), pool_idle=1.0, keepalive=0.2)
    b = await start_node(tmp_path, "b")
    try:
        await b.pool.connect("127.0.0.1", a.listen_address[1])
        await until(lambda: peer_names(a) == {"seed", "b"}, what="both peers")
        # keepalive PINGs do not count as use: b goes after ~1 s, the seed stays
        await until(lambda: peer_names(a) == {"seed"}, timeout=5, what="idle b closed")
        assert a.pool.stats.idle_closed == 1
        await asyncio.sleep(0)  # one more tick: nothing else is closed
        assert peer_names(a) == {"seed"}
    finally:
        for n in (b, a, seed):
            await n.stop()


async def test_shutdown_sends_goaway_so_peers_notice_at_once(tmp_path):
    a = await start_node(tmp_path, "a", idle=60.0)
    b = await start_node(tmp_path, "b", seeds=(addr(a),), idle=60.0)
    left = asyncio.Event()
    reasons = []

    def watch(event):
        if type(event) is PeerDown:
            session = event.session
            reasons.append(session.error.message if session.error else "")
            left.set()

    b.operations.watch_peers(watch)
    try:
        await until(lambda: peer_names(b) == {"a"}, what="joined")
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await a.stop()
        await asyncio.wait_for(left.wait(), 5)
        assert loop.time() - t0 < 2.0  # not the 60 s idle timeout
        assert "shutting down" in reasons[0] or "shut down" in reasons[0], reasons
    finally:
        await b.stop()
