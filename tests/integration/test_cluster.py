"""The cluster on real QUIC over loopback: convergence, leave, failure, readmission,
the member bound and a healed partition.

Nodes run in this process on real endpoints. To make a node vanish or to partition it,
its endpoint is a DroppingEndpoint: the real endpoint with a switch that drops every
datagram it would send or receive, as a pulled cable would. Timings are printed
(``pytest -s``) and docs/CRDT.md quotes them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Callable

import pytest

import macula.node
from helpers import addr, start_node, until
from macula.crdt import digest
from macula.node import Node
from macula.pubsub.router import RemotePattern
from macula.transport import Endpoint

# Probing twice a second keeps the tests short and is still far from loopback RTTs.
# Failure then takes at least suspicion_mult * probe_interval = 2 s.
FAST = {"name": "home", "probe_interval": 0.5, "probe_timeout": 0.25, "suspicion_mult": 4}
MIN_SUSPICION = FAST["suspicion_mult"] * FAST["probe_interval"]


class DroppingEndpoint(Endpoint):
    """The node's real endpoint, with a switch that drops all its traffic both ways."""

    dropping = False

    def _send_datagrams(self, datagrams: list[tuple[bytes, tuple]]) -> None:
        if not self.dropping:
            super()._send_datagrams(datagrams)

    def _sendto(self, data: bytes, addr: tuple) -> None:
        if not self.dropping:
            super()._sendto(data, addr)

    def _on_readable(self) -> None:
        if not self.dropping:
            super()._on_readable()
            return
        while self._sock is not None:   # read and discard what arrived
            try:
                self._sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue


@pytest.fixture(autouse=True)
def dropping_endpoints(monkeypatch):
    monkeypatch.setattr(macula.node, "Endpoint", DroppingEndpoint)


class Watch:
    """Wakes a waiting test whenever any watched node merges a peer's change, so spread
    times are measured at the moment they happen rather than at a polling tick."""

    def __init__(self, nodes: list[Node]) -> None:
        self.changed = asyncio.Event()
        for node in nodes:
            self.add(node)

    def add(self, node: Node) -> None:
        node.cluster.on_state_changed(lambda name: self.changed.set())

    async def spread(self, nodes: list[Node], change: Callable[[], None],
                     seen: Callable[[Node], bool], timeout: float = 5.0) -> float:
        """Seconds from ``change()`` until ``seen(node)`` holds on every node."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        change()
        while not all(seen(n) for n in nodes):
            self.changed.clear()
            remaining = start + timeout - loop.time()
            if remaining <= 0:
                raise AssertionError(f"not seen on {[n.name for n in nodes if not seen(n)]} "
                                     f"within {timeout} s")
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass
        return loop.time() - start


async def start_cluster(tmp: Path, n: int, **cluster) -> list[Node]:
    """n nodes joining through the first; returns once every one sees all the others."""
    opts = {**FAST, **cluster}
    nodes = [await start_node(tmp, "n0", cluster=opts)]
    for i in range(1, n):
        nodes.append(await start_node(tmp, f"n{i}", seeds=(addr(nodes[0]),), cluster=opts))
    await until(lambda: all(len(x.cluster.core.live()) == n - 1 for x in nodes), 20,
                f"{n} nodes see each other")
    return nodes


def state_of(node: Node, other: Node) -> str | None:
    return next((m.state for m in node.cluster.members() if m.node_id == other.node_id), None)


async def stop_all(nodes: list[Node]) -> None:
    for node in nodes:
        await node.stop()


async def test_a_change_on_one_of_three_nodes_is_seen_on_all(tmp_path):
    nodes = await start_cluster(tmp_path, 3)
    a, b, c = nodes
    watch = Watch(nodes)
    try:
        # every node's metadata arrives with the join (membership news travels apart)
        await until(lambda: all((x.cluster.metadata(y.node_id) or {}).get("name") == y.name
                                for x in nodes for y in nodes), 5, "metadata everywhere")
        took = await watch.spread(nodes, lambda: a.cluster.update_metadata({"role": "sensor"}),
                                  lambda n: n.cluster.metadata(a.node_id).get("role") == "sensor")
        print(f"\n3 nodes: metadata seen on all in {took * 1000:.1f} ms")
        others = [a, c]
        took = await watch.spread(others, lambda: b.cluster.set_local_procedures({"svc.echo", "svc.time"}),
                                  lambda n: n.cluster.providers("svc.time") == [b.node_id])
        print(f"3 nodes: a registration seen on all in {took * 1000:.1f} ms")
        assert a.cluster.providers("svc.echo") == [b.node_id] and b.cluster.providers("svc.echo") == []
        patterns = (RemotePattern("alerts.>", "ops", 1), RemotePattern("sensors.*.temp", None, 2))
        took = await watch.spread([a, b], lambda: c.cluster.set_local_subscriptions(list(patterns)),
                                  lambda n: n.cluster.remote_subscriptions().get(c.node_id) == patterns)
        print(f"3 nodes: a subscription set seen on all in {took * 1000:.1f} ms")
        took = await watch.spread(others, lambda: b.cluster.set_local_procedures({"svc.time"}),
                                  lambda n: n.cluster.providers("svc.echo") == [])
        print(f"3 nodes: an unregistration seen on all in {took * 1000:.1f} ms")
        for name in ("nodes", "procedures", "subscriptions"):
            assert len({digest(n.cluster.core.gossip.replica(name)) for n in nodes}) == 1, name
    finally:
        await stop_all(nodes)


async def test_routing_callbacks_report_what_changed(tmp_path):
    nodes = await start_cluster(tmp_path, 2)
    a, b = nodes
    subs, procs = [], []
    a.cluster.on_subscriptions_changed(subs.append)
    a.cluster.on_providers_changed(procs.append)
    try:
        b.cluster.set_local_subscriptions([RemotePattern("x.*", None, 1)])
        b.cluster.set_local_procedures({"p"})
        await until(lambda: subs and procs, what="callbacks")
        assert subs == [{b.node_id: (RemotePattern("x.*", None, 1),)}] and procs == [{"p": [b.node_id]}]
        await b.stop()
        await until(lambda: len(subs) == 2 and len(procs) == 2, what="callbacks on leave")
        assert subs[1] == {b.node_id: ()} and procs[1] == {"p": []}
    finally:
        await stop_all(nodes)


async def test_a_node_that_leaves_cleanly_disappears_at_once(tmp_path):
    nodes = await start_cluster(tmp_path, 3)
    a, b, c = nodes
    watch = Watch(nodes)
    try:
        await watch.spread([a, b], lambda: c.cluster.set_local_procedures({"svc.c"}),
                           lambda n: n.cluster.providers("svc.c") == [c.node_id])
        loop = asyncio.get_running_loop()
        start = loop.time()
        await c.stop()
        await until(lambda: all(state_of(n, c) == "left" and not n.cluster.providers("svc.c")
                                for n in (a, b)), 2, "c gone")
        took = loop.time() - start
        print(f"\nclean leave: gone from both views {took * 1000:.0f} ms after stop()")
        assert took < MIN_SUSPICION   # not the failure detector
        assert all(n.cluster.status()["membership"]["probes_failed"] == 0 for n in (a, b))
        # a member on duty deleted its entries at once
        await until(lambda: all(c.node_id.hex() not in n.cluster.core.gossip.replica("nodes")
                                for n in (a, b)), 5, "c's entries deleted")
    finally:
        await stop_all([a, b])


async def test_a_vanished_node_fails_after_the_suspicion_timeout_and_is_readmitted(tmp_path):
    nodes = await start_cluster(tmp_path, 3)
    a, b, c = nodes
    watch = Watch(nodes)
    port = c.listen_address[1]
    try:
        await watch.spread([a, b], lambda: c.cluster.set_local_procedures({"svc.old"}),
                           lambda n: n.cluster.providers("svc.old") == [c.node_id])
        loop = asyncio.get_running_loop()
        start = loop.time()
        c.endpoint.dropping = True          # pulled cable: no GOAWAY, no leave
        await until(lambda: all(state_of(n, c) == "dead" for n in (a, b)), 20, "c failed")
        took = loop.time() - start
        print(f"\nvanished: declared failed on both after {took:.2f} s "
              f"(suspicion minimum {MIN_SUSPICION:.1f} s)")
        assert took >= MIN_SUSPICION
        assert a.cluster.providers("svc.old") == [] and b.cluster.providers("svc.old") == []
        await c.stop()                      # its goodbyes are dropped too
        # it comes back: a fresh boot with the same identity and address
        start = loop.time()
        c = await start_node(tmp_path, "n2", port=port, seeds=(addr(a),), cluster=FAST)
        c.cluster.set_local_procedures({"svc.new"})
        await until(lambda: all(state_of(n, c) == "alive" and n.cluster.providers("svc.new") == [c.node_id]
                                for n in (a, b)), 10, "c readmitted")
        print(f"restarted: readmitted with its new registration after {loop.time() - start:.2f} s")
        assert c.cluster.core.swim.incarnation >= 1      # it outbid its death
        # the old boot's registration does not come back: the new boot removed it
        await until(lambda: all(not n.cluster.core.gossip.replica("procedures").get("svc.old")
                                for n in (a, b, c)), 5, "old registration removed")
    finally:
        await stop_all([a, b, c])


async def test_members_beyond_the_bound_and_other_clusters_are_not_admitted(tmp_path):
    bound = {**FAST, "max_members": 3}
    a = await start_node(tmp_path, "a", cluster=bound)
    b = await start_node(tmp_path, "b", seeds=(addr(a),), cluster=bound)
    c = await start_node(tmp_path, "c", seeds=(addr(a),), cluster=bound)
    full = [a, b, c]
    extra = []
    try:
        await until(lambda: all(len(n.cluster.core.live()) == 2 for n in full), 10, "3 members")
        d = await start_node(tmp_path, "d", seeds=(addr(a),), cluster=bound)
        other = await start_node(tmp_path, "e", seeds=(addr(a),), cluster={**FAST, "name": "other"})
        extra += [d, other]
        await until(lambda: d.cluster.core.live(), 10, "d hears of members")
        d.cluster.set_local_procedures({"svc.d"})
        # d's writes reach the members and are dropped there; their tables are full
        await until(lambda: sum(n.cluster.status()["state"]["unadmitted"] for n in full) > 0, 10,
                    "d's gossip refused")
        assert a.cluster.status()["membership"]["members_refused"] > 0
        for n in full:
            assert len(n.cluster.core.live()) == 2 and d.node_id not in n.cluster.core.live()
            assert n.cluster.providers("svc.d") == [] and other.node_id not in n.cluster.core.live()
        # the node of another cluster shares sessions, not the cluster
        assert a.pool.get(other.node_id) is not None
        assert [m.name for m in other.cluster.members()] == ["e"]
    finally:
        await stop_all(extra + full)


@pytest.mark.slow
async def test_ten_nodes_one_partitioned_for_30_s_converge_after_healing(tmp_path):
    # gc_grace below the partition: both sides delete the other side's entries while
    # cut off, and each node must restore its own after the heal
    nodes = await start_cluster(tmp_path, 10, gc_grace=8.0)
    p, major = nodes[-1], nodes[:-1]
    loop = asyncio.get_running_loop()
    try:
        for i, n in enumerate(nodes):
            n.cluster.set_local_procedures({f"svc.{i}"})
            n.cluster.set_local_subscriptions([RemotePattern(f"t.{i}.*", None, 1)])
        await until(lambda: all(len(n.cluster.remote_subscriptions()) == 9 for n in nodes), 10,
                    "everything everywhere")
        start = loop.time()
        p.endpoint.dropping = True
        await until(lambda: all(state_of(n, p) == "dead" for n in major), 30, "p failed")
        print(f"\npartition: the 9 declared p failed after {loop.time() - start:.1f} s")
        # both sides change things while apart
        major[0].cluster.set_local_procedures({"svc.0", "svc.during-major"})
        major[1].cluster.set_local_subscriptions([RemotePattern("t.1.*", None, 3)])
        major[2].cluster.update_metadata({"note": "changed while p was away"})
        p.cluster.set_local_procedures({"svc.9", "svc.during-minor"})
        p.cluster.set_local_subscriptions([RemotePattern("t.9.*", "g", 2)])
        p.cluster.update_metadata({"note": "changed while cut off"})
        await until(lambda: all(n.cluster.providers("svc.during-major") == [major[0].node_id]
                                for n in major[1:]), 5, "majority change spread")
        await asyncio.sleep(start + 30.0 - loop.time())   # the partition's length, not a sync
        p.endpoint.dropping = False
        healed = loop.time()

        def converged() -> bool:
            if not all(len(n.cluster.core.live()) == 9 for n in nodes):
                return False
            for name in ("nodes", "procedures", "subscriptions"):
                if len({digest(n.cluster.core.gossip.replica(name)) for n in nodes}) != 1:
                    return False
            return all(len(n.cluster.remote_subscriptions()) == 9 for n in nodes)

        await until(converged, 60, "convergence after the heal")
        print(f"healed: all 10 converged {loop.time() - healed:.1f} s after the heal")
        ids = [n.node_id for n in nodes]
        for n in nodes:
            for i, owner in enumerate(ids):
                if owner != n.node_id:
                    assert n.cluster.providers(f"svc.{i}") == [owner], (n.name, i)
            meta = {x.name: n.cluster.metadata(x.node_id) for x in nodes}
            assert meta[p.name]["note"] == "changed while cut off"
            assert meta[major[2].name]["note"] == "changed while p was away"
            subs = n.cluster.remote_subscriptions()
            if n is not p:
                assert n.cluster.providers("svc.during-minor") == [p.node_id]
                assert subs[p.node_id] == (RemotePattern("t.9.*", "g", 2),)
            if n is not major[0]:
                assert n.cluster.providers("svc.during-major") == [major[0].node_id]
            if n is not major[1]:
                assert subs[major[1].node_id] == (RemotePattern("t.1.*", None, 3),)
    finally:
        await stop_all(nodes)
