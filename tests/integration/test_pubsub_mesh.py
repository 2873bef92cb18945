"""Pub/sub and RPC across a mesh of real nodes on loopback QUIC, each test twice:
routed through the DHT (every node in a cluster of its own) and through the cluster
state (all nodes in one cluster; tests/integration/test_cluster_routing.py proves
which source a route came from)."""

from __future__ import annotations

import asyncio

import pytest

from helpers import addr, start_node, until
from macula.client import CallError, connect
from macula.errors import ErrorCode


@pytest.fixture(params=["dht", "cluster"])
def routing(request) -> str:
    return request.param


async def mesh(tmp_path, n: int, routing: str, **kw):
    def cluster(i: int) -> dict:
        return {} if routing == "dht" else {"name": "home"}  # unnamed: a cluster of one

    seed = await start_node(tmp_path, "n0", cluster=cluster(0), **kw)
    nodes = [seed] + [await start_node(tmp_path, f"n{i}", seeds=(addr(seed),), cluster=cluster(i), **kw)
                      for i in range(1, n)]
    # every node has joined the DHT through the seed
    await until(lambda: all(len(x.pool.peers()) >= 1 for x in nodes[1:]), what="joined")
    await until(lambda: all(x.dht.core.stats()["contacts"] >= 1 for x in nodes), what="DHT")
    if routing == "cluster":   # and holds every other node's cluster state
        await until(lambda: all(len(x.cluster.synced()) == n - 1 for x in nodes), 20, "cluster")
    else:
        assert all(not x.cluster.synced() for x in nodes)
    return nodes


async def stop_all(nodes, clients=()):
    for c in clients:
        await c.close()
    for n in reversed(nodes):
        await n.stop()


async def wait_delivery(publisher, topic, payload, subs, timeout=10.0):
    """Publish until every subscription got it once (remote interest is cached ~3 s),
    then fence: a copy of an earlier round may still be on its way (it waited for a
    lookup), so every subscription reads up to a last message published after all of
    them; one publisher's messages on a topic arrive in order, so nothing older follows."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        await publisher.publish(topic, payload)
        await publisher.flush()
        try:
            for s in subs:
                await s.next(0.5)
            break
        except asyncio.TimeoutError:
            if loop.time() > deadline:
                raise AssertionError(f"{topic} never reached all subscribers")
            for s in subs:  # drop partial deliveries of this round and try again
                s.drain()
    fence = payload + b"-fence"
    await publisher.publish(topic, fence)
    await publisher.flush()
    for s in subs:
        while (await s.next(5)).payload != fence:
            pass


async def test_fan_out_to_50_subscribers_across_5_nodes(tmp_path, routing):
    nodes = await mesh(tmp_path, 5, routing)
    clients, subs = [], []
    try:
        for i in range(50):
            node = nodes[i % 5]
            c = await connect(addr(node), realm="test")
            clients.append(c)
            subs.append(c.subscribe("fleet.status" if i % 2 else "fleet.>"))
        for c in clients:
            await c.flush()
        pub = await connect(addr(nodes[2]), realm="test")
        clients.append(pub)
        await wait_delivery(pub, "fleet.status", b"warm", subs, timeout=20)
        for i in range(20):
            await pub.publish("fleet.status", str(i).encode())
        for s in subs:  # every subscription gets every message once, in order
            got = [(await s.next(5)).payload for _ in range(20)]
            assert got == [str(i).encode() for i in range(20)]
        await pub.flush()
        await asyncio.sleep(0.2)  # nothing more may arrive (no duplicates): bounded look
        assert all(s.pending() == 0 for s in subs)
    finally:
        await stop_all(nodes, clients)


async def test_wildcards_route_across_nodes(tmp_path, routing):
    nodes = await mesh(tmp_path, 3, routing)
    a = await connect(addr(nodes[1]), realm="test")
    b = await connect(addr(nodes[2]), realm="test")
    pub = await connect(addr(nodes[0]), realm="test")
    try:
        star, rest, exact = a.subscribe("home.*.temp"), b.subscribe("home.>"), b.subscribe("x.y")
        await a.flush()
        await b.flush()
        await wait_delivery(pub, "home.kitchen.temp", b"21", [star, rest], timeout=15)
        await pub.publish("home.garage.door", b"open")
        assert (await rest.next(5)).topic == "home.garage.door"
        await pub.flush()
        assert star.pending() == 0 and exact.pending() == 0
    finally:
        await stop_all(nodes, [a, b, pub])


async def test_queue_group_across_nodes_gets_each_message_once(tmp_path, routing):
    nodes = await mesh(tmp_path, 3, routing)
    workers = [await connect(addr(nodes[i]), realm="test") for i in (1, 2, 2)]
    pub = await connect(addr(nodes[0]), realm="test")
    try:
        subs = [w.subscribe("jobs", group="w") for w in workers]
        watch = workers[0].subscribe("jobs")
        for w in workers:
            await w.flush()
        await wait_delivery(pub, "jobs", b"warm", [watch], timeout=15)
        await until(lambda: sum(s.pending() for s in subs) >= 1, what="warm job served")
        for s in subs:
            s.drain()
        for i in range(90):
            await pub.publish("jobs", str(i).encode())
        for _ in range(90):
            await watch.next(5)
        await until(lambda: sum(s.pending() for s in subs) == 90, what="90 jobs")
        got = sorted(int(m.payload) for s in subs for m in s.drain())
        assert got == list(range(90))  # each job exactly once across the group
    finally:
        await stop_all(nodes, workers + [pub])


async def test_unsubscribe_and_subscriber_node_dying_mid_stream(tmp_path, routing):
    nodes = await mesh(tmp_path, 4, routing)
    stay = await connect(addr(nodes[1]), realm="test")
    leave = await connect(addr(nodes[2]), realm="test")
    doomed = await connect(addr(nodes[3]), realm="test")
    pub = await connect(addr(nodes[0]), realm="test")
    try:
        s_stay, s_leave, s_doomed = (stay.subscribe("t"), leave.subscribe("t"),
                                     doomed.subscribe("t"))
        for c in (stay, leave, doomed):
            await c.flush()
        await wait_delivery(pub, "t", b"warm", [s_stay, s_leave, s_doomed], timeout=15)
        await s_leave.unsubscribe()
        await leave.flush()
        await nodes[3].stop()  # the node dies while the stream goes on
        for i in range(50):
            await pub.publish("t", str(i).encode())
        assert [(await s_stay.next(5)).payload for _ in range(50)] == \
            [str(i).encode() for i in range(50)]
        assert s_leave.pending() == 0
        assert nodes[0].pool is not None and nodes[0].status()["pubsub"] is not None
    finally:
        await stop_all(nodes[:3], [stay, leave, pub])
        await doomed.close()


async def test_no_amplification_frames_counted_on_every_link(tmp_path, routing):
    nodes = await mesh(tmp_path, 10, routing)
    clients = []
    try:
        subs = []
        for i in (2, 5, 8):  # subscribers on 3 of the 10 nodes
            c = await connect(addr(nodes[i]), realm="test")
            clients.append(c)
            subs.append(c.subscribe("alerts.>"))
            await c.flush()
        pub = await connect(addr(nodes[0]), realm="test")
        clients.append(pub)
        await wait_delivery(pub, "alerts.fire", b"warm", subs, timeout=20)
        before = {n.node_id: (sum(n.pubsub.routed_to.values()),
                              sum(n.pubsub.routed_from.values())) for n in nodes}
        for i in range(100):
            await pub.publish("alerts.fire", b"x")
        for s in subs:
            for _ in range(100):
                await s.next(5)
        await pub.flush()
        out = {n.node_id: sum(n.pubsub.routed_to.values()) - before[n.node_id][0] for n in nodes}
        inn = {n.node_id: sum(n.pubsub.routed_from.values()) - before[n.node_id][1] for n in nodes}
        # the publisher's node sent exactly one frame per publish per subscriber node...
        assert out[nodes[0].node_id] == 300
        # ...each subscriber node received exactly its 100, and nobody else sent anything
        assert all(v == 0 for k, v in out.items() if k != nodes[0].node_id)
        assert [inn[nodes[i].node_id] for i in (2, 5, 8)] == [100, 100, 100]
        assert sum(inn.values()) == 300
        assert all(s.pending() == 0 for s in subs)  # no duplicate deliveries
    finally:
        await stop_all(nodes, clients)


async def test_rpc_across_nodes_failover_and_no_responders(tmp_path, routing):
    nodes = await mesh(tmp_path, 4, routing)
    p1 = await connect(addr(nodes[1]), realm="test")
    p2 = await connect(addr(nodes[2]), realm="test")
    caller = await connect(addr(nodes[3]), realm="test")
    try:
        p1.register("who", lambda a: b"p1")
        p2.register("who", lambda a: b"p2")
        await p1.flush()
        await p2.flush()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        seen = set()
        while seen != {b"p1", b"p2"}:  # discovery finds both; calls spread over them
            try:
                seen.add(await caller.call("who", timeout=2))
            except CallError as exc:
                assert exc.code is ErrorCode.NO_RESPONDERS  # not advertised yet
            assert loop.time() < deadline, seen
        await nodes[1].stop()  # a provider's node dies: idempotent calls go to the other
        results = [await caller.call("who", timeout=3, idempotent=True) for _ in range(10)]
        assert set(results) == {b"p2"}
        t0 = loop.time()
        with pytest.raises(CallError) as info:
            await caller.call("nobody.serves.this", timeout=5)
        assert info.value.code is ErrorCode.NO_RESPONDERS and loop.time() - t0 < 3
    finally:
        await stop_all([nodes[0]] + nodes[2:], [p2, caller])
        await p1.close()
