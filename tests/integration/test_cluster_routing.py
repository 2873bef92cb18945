"""Routing inside a cluster from the cluster state, on real QUIC over loopback.

Publishes and calls between members of one cluster take their routes from the
subscriptions and registrations that gossip replicated, with no DHT lookup; nodes
outside the cluster are still found through the DHT. To prove which source a route
came from, a test holds a node's DHT operations back at a gate: what gets through
while the gate is shut cannot have come from the DHT.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from helpers import addr, start_node, until
from macula.client import CallError, connect
from macula.errors import ErrorCode
from macula.node import Node

FAST = {"name": "home", "probe_interval": 0.5, "probe_timeout": 0.25, "suspicion_mult": 4}


async def start_cluster(tmp: Path, n: int) -> list[Node]:
    """n nodes of one cluster joining through the first; returns once each one holds
    every other's state (its metadata)."""
    nodes = [await start_node(tmp, "n0", cluster=FAST)]
    for i in range(1, n):
        nodes.append(await start_node(tmp, f"n{i}", seeds=(addr(nodes[0]),), cluster=FAST))
    await until(lambda: all(len(x.cluster.synced()) == n - 1 for x in nodes), 20,
                f"{n} nodes synced")
    return nodes


class Gate:
    """Holds calls of an async method back until opened; counts the held ones."""

    def __init__(self, obj, name: str) -> None:
        self.open_ = asyncio.Event()
        self.held = 0
        real = getattr(obj, name)

        async def gated(*args, **kw):
            self.held += 1
            await self.open_.wait()
            return await real(*args, **kw)

        setattr(obj, name, gated)

    def open(self) -> None:
        self.open_.set()


class Changes:
    """Wakes the test when a node's cluster view of subscriptions or providers changes."""

    def __init__(self, node: Node) -> None:
        self.changed = asyncio.Event()
        node.cluster.on_subscriptions_changed(lambda _: self.changed.set())
        node.cluster.on_providers_changed(lambda _: self.changed.set())

    async def until(self, cond, timeout: float = 5.0, what: str = "cluster view") -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not cond():
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), deadline - loop.time())
            except asyncio.TimeoutError:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None


async def stop_all(nodes, clients=(), gates=()):
    for g in gates:
        g.open()
    for c in clients:
        await c.close()
    for n in reversed(nodes):
        await n.stop()


async def eventually(ask, holds, what: str, timeout: float = 10.0) -> None:
    """Ask (a DHT lookup) again until its answer ``holds``, failing after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not holds(await ask()):
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")


async def findable(node: Node, key: bytes, publisher: bytes) -> None:
    """Look ``key`` up from ``node`` until ``publisher``'s record is there."""
    await eventually(lambda: node.dht.find_value(key),
                     lambda found: any(r.publisher == publisher for r in found.records),
                     f"the record of {publisher.hex()[:12]}")


def sub_key(node: Node, prefix: str) -> bytes:
    return node.pubsub.interest.dht._key(prefix)


async def test_publish_to_a_member_goes_out_while_the_dht_lookup_is_held(tmp_path):
    a, b, c = nodes = await start_cluster(tmp_path, 3)
    lookups = Gate(a.dht, "find_value")       # A's DHT can answer nothing
    subscriber = await connect(addr(b), realm="test")
    publisher = await connect(addr(a), realm="test")
    topic = "plant.line1.temp"
    try:
        changes = Changes(a)
        sub = subscriber.subscribe("plant.*.temp")
        await subscriber.flush()
        await changes.until(lambda: b.node_id in a.cluster.remote_subscriptions(),
                            what="B's subscription in A's cluster state")
        assert a.pubsub.router.plan(topic).remote == (b.node_id,)
        for i in range(20):
            await publisher.publish(topic, str(i).encode())
        got = [(await sub.next(5)).payload for _ in range(20)]
        assert got == [str(i).encode() for i in range(20)]        # every one, in order
        # ...while every DHT lookup A started is still held: the route came from the
        # cluster state, and the DHT has taught A nothing
        assert lookups.held >= 1 and not lookups.open_.is_set()
        assert a.pubsub.interest.dht.view == {}
        assert a.pubsub.stats["routed_early"] == 20
        # the lookup ends: what waited for it goes to nobody twice
        lookups.open()
        await until(lambda: a.pubsub.core.waiting(topic) is None, what="lookup done")
        await publisher.publish(topic, b"last")
        assert (await sub.next(5)).payload == b"last" and sub.pending() == 0
        assert a.pubsub.routed_to[b.node_id] == 21 and b.pubsub.stats["routed_in"] == 21
    finally:
        await stop_all(nodes, [subscriber, publisher], [lookups])


async def test_outsiders_still_get_publishes_through_the_dht_in_order(tmp_path):
    a, b, c = nodes = await start_cluster(tmp_path, 3)
    # a node of another cluster: it shares sessions and the DHT, not the cluster state
    d = await start_node(tmp_path, "d", seeds=(addr(a),), cluster={**FAST, "name": "other"})
    nodes.append(d)
    inside = await connect(addr(b), realm="test")
    outside = await connect(addr(d), realm="test")
    publisher = await connect(addr(a), realm="test")
    topic = "fleet.status"
    lookups = None
    try:
        changes = Changes(a)
        s_in, s_out = inside.subscribe(topic), outside.subscribe("fleet.>")
        await inside.flush()
        await outside.flush()
        await changes.until(lambda: b.node_id in a.cluster.remote_subscriptions())
        await findable(c, sub_key(a, "fleet"), d.node_id)    # D's record is in the DHT
        assert d.node_id not in a.cluster.core.live()
        lookups = Gate(a.dht, "find_value")
        for i in range(10):
            await publisher.publish(topic, str(i).encode())
        # B has them all at once; D's wait for the lookup A cannot finish yet
        assert [(await s_in.next(5)).payload for _ in range(10)] == [str(i).encode() for i in range(10)]
        assert s_out.pending() == 0 and a.pubsub.core.waiting(topic) == 10
        lookups.open()
        for i in range(10, 20):
            await publisher.publish(topic, str(i).encode())
        everything = [str(i).encode() for i in range(20)]
        assert [(await s_out.next(5)).payload for _ in range(20)] == everything
        assert [(await s_in.next(5)).payload for _ in range(10)] == everything[10:]
        await publisher.flush()
        await until(lambda: a.pubsub.routed_to[d.node_id] == 20, what="20 frames to D")
        assert s_in.pending() == 0 and s_out.pending() == 0      # nothing twice
        assert a.pubsub.routed_to[b.node_id] == 20
    finally:
        await stop_all(nodes, [inside, outside, publisher], [lookups] if lookups else [])


async def test_unsubscribing_on_a_member_stops_routing_to_it_though_the_dht_still_says_otherwise(tmp_path):
    a, b, c = nodes = await start_cluster(tmp_path, 3)
    withdrawals = Gate(b.dht, "withdraw")      # B's DHT record outlives its unsubscribe
    leaving = await connect(addr(b), realm="test")
    staying = await connect(addr(c), realm="test")
    publisher = await connect(addr(a), realm="test")
    topic = "alerts.fire"
    try:
        changes = Changes(a)
        s_leave, s_stay = leaving.subscribe("alerts.>"), staying.subscribe("alerts.>")
        await leaving.flush()
        await staying.flush()
        await changes.until(lambda: {b.node_id, c.node_id} <= a.cluster.remote_subscriptions().keys())
        await findable(a, sub_key(a, "alerts"), b.node_id)
        await findable(a, sub_key(a, "alerts"), c.node_id)
        await a.pubsub.interest.resolve(topic)
        assert {b.node_id, c.node_id} <= a.pubsub.interest.dht.view.keys()
        await publisher.publish(topic, b"before")
        assert (await s_leave.next(5)).payload == b"before" and (await s_stay.next(5)).payload == b"before"

        await s_leave.unsubscribe()
        await leaving.flush()
        await changes.until(lambda: b.node_id not in a.cluster.remote_subscriptions(),
                            what="B's unsubscribe in A's cluster state")
        assert b.node_id not in a.pubsub.router.remote_nodes()
        await until(lambda: withdrawals.held == 1, what="B withdrawing its record (held)")
        routed, arrived = a.pubsub.routed_to[b.node_id], b.pubsub.stats["routed_in"]
        await publisher.publish(topic, b"after")
        assert (await s_stay.next(5)).payload == b"after"
        # a fresh DHT answer still names B (its withdrawal is held): the cluster wins
        await findable(c, sub_key(a, "alerts"), b.node_id)
        await a.pubsub.interest.dht.resolve(topic, force=True)
        assert b.node_id in a.pubsub.interest.dht.view
        await publisher.publish(topic, b"after the lookup")
        assert (await s_stay.next(5)).payload == b"after the lookup"
        assert a.pubsub.routed_to[b.node_id] == routed and b.pubsub.stats["routed_in"] == arrived
    finally:
        await stop_all(nodes, [leaving, staying, publisher], [withdrawals])


async def test_calls_find_member_providers_in_the_cluster_state(tmp_path):
    a, b, c = nodes = await start_cluster(tmp_path, 3)
    withdrawals = Gate(b.dht, "withdraw_service")   # B's DHT record outlives its unregister
    provider = await connect(addr(b), realm="test")
    caller = await connect(addr(a), realm="test")
    try:
        changes = Changes(a)
        provider.register("svc.echo", lambda args: b"b:" + args)
        await provider.flush()
        await changes.until(lambda: a.cluster.providers("svc.echo") == [b.node_id],
                            what="B's registration in A's cluster state")
        discoveries = a.rpc.providers.stats["discoveries"]
        for i in range(5):
            assert await caller.call("svc.echo", str(i), timeout=5) == b"b:" + str(i).encode()
        assert a.rpc.providers.stats["discoveries"] == discoveries == 0   # no DHT discovery
        assert b.rpc.stats["calls"] == 5

        # B stops serving it: A's cluster state says so, though the DHT still names B
        provider.unregister("svc.echo")
        await provider.flush()
        await changes.until(lambda: a.cluster.providers("svc.echo") == [],
                            what="B's unregistration in A's cluster state")
        await eventually(lambda: c.dht.discover("rpc.svc.echo"),
                         lambda found: b.node_id in {p.node_id for p in found}, "B's DHT record")
        with pytest.raises(CallError) as info:
            await caller.call("svc.echo", b"x", timeout=5)
        assert info.value.code is ErrorCode.NO_RESPONDERS
        assert a.rpc.providers.stats["discoveries"] == 1      # asked the DHT: no member serves it
        assert b.rpc.stats["calls"] == 5                      # B was not asked
        assert withdrawals.held == 1
    finally:
        await stop_all(nodes, [provider, caller], [withdrawals])


async def test_a_standalone_node_and_a_dht_client_node_still_route(tmp_path):
    """No other member: everything waits for the DHT as before. A dht-client node in
    the cluster routes through the cluster state like any member."""
    alone = await start_node(tmp_path, "alone", cluster=FAST)
    nodes = [alone]
    sub_client = await connect(addr(alone), realm="test")
    clients = [sub_client]
    try:
        s = sub_client.subscribe("x.y")
        await sub_client.flush()
        await sub_client.publish("x.y", b"1")
        assert (await s.next(5)).payload == b"1"
        await until(lambda: alone.pubsub.core.waiting("x.y") is None, what="lookup done")
        assert alone.cluster.synced() == set() and alone.pubsub.stats["routed_early"] == 0

        light = await start_node(tmp_path, "light", seeds=(addr(alone),), cluster=FAST,
                                 dht={"mode": "client"})
        nodes.append(light)
        await until(lambda: light.cluster.synced() == {alone.node_id}
                    and alone.cluster.synced() == {light.node_id}, 10, "both synced")
        pub = await connect(addr(light), realm="test")
        clients.append(pub)
        changes = Changes(light)
        await changes.until(lambda: alone.node_id in light.cluster.remote_subscriptions())
        lookups = Gate(light.dht, "find_value")
        try:
            await pub.publish("x.y", b"2")
            assert (await s.next(5)).payload == b"2" and not lookups.open_.is_set()
        finally:
            lookups.open()
        caller_on_alone = await connect(addr(alone), realm="test")
        clients.append(caller_on_alone)
        pub.register("light.time", lambda _: b"now")
        await pub.flush()
        await Changes(alone).until(lambda: alone.cluster.providers("light.time") == [light.node_id])
        assert await caller_on_alone.call("light.time", timeout=5) == b"now"
        assert alone.rpc.providers.stats["discoveries"] == 0
    finally:
        await stop_all(nodes, clients)
