"""Routing from two sources: the merge of cluster and DHT interest, and providers from
the cluster first (ClusterInterest and ClusterProviders with stand-ins for the cluster
and the DHT; the real thing runs in tests/integration/test_cluster_routing.py)."""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace

from macula.pubsub.interest import ClusterInterest
from macula.pubsub.router import PubSubRouter, RemotePattern
from macula.rpc.discovery import ClusterProviders
from macula.rpc.local import LocalProcedures

A, B, C = b"A" * 32, b"B" * 32, b"C" * 32
T = RemotePattern("t.>", None, 1)
X = RemotePattern("x", None, 1)


class FakeCluster:
    def __init__(self) -> None:
        self.subs: dict[bytes, tuple] = {}
        self.procs: dict[str, list[bytes]] = {}
        self.synced_: set[bytes] = set()
        self.addresses: dict[bytes, tuple[str, int]] = {}
        self.pushed: list = []
        self.settings = SimpleNamespace(max_members=8)
        self._subs_fns, self._state_fns = [], []

    def remote_subscriptions(self):
        return dict(self.subs)

    def on_subscriptions_changed(self, fn):
        self._subs_fns.append(fn)

    def on_state_changed(self, fn):
        self._state_fns.append(fn)

    def synced(self):
        return set(self.synced_)

    def member_address(self, node_id):
        return self.addresses.get(node_id)

    def providers(self, procedure):
        return list(self.procs.get(procedure, ()))

    def set_local_subscriptions(self, patterns):
        self.pushed.append(list(patterns))

    def set_local_procedures(self, names):
        self.pushed.append(set(names))

    # what the service would report
    def change(self, changes):
        for node_id, patterns in changes.items():
            if patterns:
                self.subs[node_id] = patterns
            else:
                self.subs.pop(node_id, None)
        for fn in self._subs_fns:
            fn(changes)

    def sync(self, node_id):
        self.synced_.add(node_id)
        for fn in self._state_fns:
            fn("nodes")


class FakeDhtInterest:
    def __init__(self) -> None:
        self.view: dict = {}
        self.on_view = None
        self.stats = {"lookups": 0}
        self.loop = None
        self.changed = 0

    def bind(self, on_view):
        self.on_view = on_view   # what ClusterInterest's factory does with a real one
        return self

    def answer(self, view):
        self.view = view
        self.on_view(view)

    def local_changed(self):
        self.changed += 1


def interest():
    router = PubSubRouter(max_subscriptions=100, max_per_owner=10, rng=random.Random(1))
    cluster, dht = FakeCluster(), FakeDhtInterest()
    return ClusterInterest(None, router, cluster, dht.bind), router, cluster, dht


def test_cluster_interest_survives_a_dht_answer_that_does_not_name_the_node():
    ci, router, cluster, dht = interest()
    cluster.change({A: (T,)})
    assert router.plan("t.1").remote == (A,)
    dht.answer({B: (T,)})                      # the DHT knows only B
    assert set(router.plan("t.1").remote) == {A, B}
    dht.answer({})                             # B's record went: B goes, A stays
    assert router.plan("t.1").remote == (A,)
    cluster.change({A: ()})
    assert router.remote_nodes() == []


def test_a_node_the_cluster_has_not_synced_is_the_union_of_both_sources():
    ci, router, cluster, dht = interest()
    cluster.change({A: (T,)})
    dht.answer({A: (X,)})
    assert set(router.plan("x").remote) == {A} and set(router.plan("t.1").remote) == {A}


def test_for_a_synced_member_the_cluster_is_the_whole_truth():
    ci, router, cluster, dht = interest()
    cluster.sync(A)
    cluster.change({A: (T,)})
    dht.answer({A: (T, X)})                    # a stale record still names x
    assert router.plan("x").remote == () and router.plan("t.1").remote == (A,)
    cluster.change({A: ()})                    # unsubscribed: gone though the DHT says t.>
    assert A not in router.remote_nodes()
    assert ci.direct_nodes() == {A}


def test_a_member_that_becomes_synced_drops_its_stale_dht_interest():
    ci, router, cluster, dht = interest()
    dht.answer({A: (X,)})
    assert router.plan("x").remote == (A,)
    cluster.sync(A)                            # its state arrived: it has no subscriptions
    assert router.plan("x").remote == ()


async def test_local_changes_go_to_the_dht_and_to_the_cluster_once_per_burst():
    ci, router, cluster, dht = interest()
    dht.loop = asyncio.get_running_loop()
    router.subscribe(b"c", 1, "t.>")
    ci.local_changed()
    router.subscribe(b"c", 2, "x")
    ci.local_changed()
    assert dht.changed == 2 and cluster.pushed == []
    passed = dht.loop.create_future()          # the loop pass after the burst
    dht.loop.call_soon(passed.set_result, None)
    await passed
    assert cluster.pushed == [[RemotePattern("t.>", None, 1), RemotePattern("x", None, 1)]]


class FakeDhtProviders:
    def __init__(self) -> None:
        self.found: dict[str, list[bytes]] = {}
        self.known: dict[str, list[bytes]] = {}
        self.stats = {"discoveries": 0}
        self.changes: list = []

    def cached(self, procedure):
        return self.known.get(procedure)

    async def discover(self, procedure):
        self.stats["discoveries"] += 1
        self.known[procedure] = list(self.found.get(procedure, []))
        return self.known[procedure]

    def local_changed(self, procedure, served):
        self.changes.append((procedure, served))


def providers(local=()):
    procs = LocalProcedures()
    for name in local:
        procs.register(A, name)
    cluster, dht = FakeCluster(), FakeDhtProviders()
    host = SimpleNamespace(reach=SimpleNamespace(backing_off=lambda node_id: False))
    return ClusterProviders(host, procs, dht, cluster), cluster, dht


async def test_providers_come_from_the_cluster_first_without_discovery():
    p, cluster, dht = providers()
    cluster.procs["echo"] = [A]
    dht.found["echo"] = [C]
    assert p.cached("echo") == [A] and await p.discover("echo") == [A]
    assert dht.stats["discoveries"] == 0


async def test_without_member_providers_the_dht_answers_minus_synced_members():
    p, cluster, dht = providers()
    cluster.synced_ = {A}
    dht.found["echo"] = [A, C]                 # A unregistered; its record lingers
    assert p.cached("echo") is None            # unknown: the caller will discover
    assert await p.discover("echo") == [C]
    assert p.cached("echo") == [C] and dht.stats["discoveries"] == 1


def test_local_procedures_go_to_the_dht_and_the_cluster_whole():
    p, cluster, dht = providers(local={"a", "b"})
    p.local_changed("b", True)
    assert dht.changes == [("b", True)] and cluster.pushed == [{"a", "b"}]
