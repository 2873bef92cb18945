"""The cluster state mapping (pure): own entries, views, repair, cleanup, bounds, bad input."""

from __future__ import annotations

import msgpack
import pytest

from macula.cluster.state import (
    NODES, PROCEDURES, SUBSCRIPTIONS, ClusterState, parse_subscription, subscription_element,
)
from macula.crdt import HLC, LWWRegister, ORMap, ORSet
from macula.errors import StateError
from macula.pubsub.router import RemotePattern

A, B, C = (bytes([i]) * 32 for i in (1, 2, 3))
WALL = 1_700_000_000_000


def boot(node_id: bytes, n: int = 0, cap: int = 100) -> ClusterState:
    return ClusterState(node_id, node_id + bytes([n]) * 8, max_entries_per_node=cap)


def publish(state: ClusterState, wall: int = WALL) -> dict[str, ORMap]:
    """Apply every fix; returns the deltas by name (as gossip would ship them)."""
    deltas = {}
    for name in (NODES, PROCEDURES, SUBSCRIPTIONS):
        mutate = state.fix(name, wall)
        if mutate is not None:
            deltas[name] = mutate(state.replicas[name])
    return deltas


def ship(deltas: dict[str, ORMap], *to: ClusterState) -> None:
    for state in to:
        for name, delta in deltas.items():
            state.replicas[name].merge(delta)


def sync(*states: ClusterState) -> None:
    """Full anti-entropy between the given replicas."""
    for name in (NODES, PROCEDURES, SUBSCRIPTIONS):
        for a in states:
            for b in states:
                a.replicas[name].merge(b.replicas[name].copy())


def test_what_a_node_publishes_is_what_others_route_by() -> None:
    a, b = boot(A), boot(B)
    a.want_metadata({"name": "a", "load": 0.5})
    a.want_procedures({"svc.x", "svc.y"})
    a.want_subscriptions([RemotePattern("s.*", None, 1), RemotePattern("q.>", "workers", 2),
                          RemotePattern("q.>", "workers", 1)])   # same group: counts add up
    ship(publish(a), b)
    subs, providers = b.views({A})
    assert providers == {"svc.x": (A,), "svc.y": (A,)}
    assert subs == {A: (RemotePattern("q.>", "workers", 3), RemotePattern("s.*", None, 1))}
    assert b.metadata(A) == {"name": "a", "load": 0.5}
    assert publish(a) == {}                     # nothing left to fix
    assert b.views(set()) == ({}, {})           # not a live member: in no view
    assert a.views({A, B}) == ({}, {})          # a node's own entries are not "remote"


def test_changes_replace_the_previous_set() -> None:
    a, b = boot(A), boot(B)
    a.want_procedures({"p1", "p2"})
    a.want_subscriptions([RemotePattern("t.*", "g", 1)])
    ship(publish(a), b)
    a.want_procedures({"p2", "p3"})
    a.want_subscriptions([RemotePattern("t.*", "g", 4)])
    ship(publish(a), b)
    subs, providers = b.views({A})
    assert providers == {"p2": (A,), "p3": (A,)}
    assert subs == {A: (RemotePattern("t.*", "g", 4),)}
    assert set(b.replicas[PROCEDURES]) == {"p2", "p3"}   # an empty set leaves no key behind


def test_own_entries_removed_elsewhere_are_restored_after_the_merge() -> None:
    a, b = boot(A), boot(B)
    a.want_metadata({"name": "a"})
    a.want_procedures({"p"})
    a.want_subscriptions([RemotePattern("t", None, 1)])
    ship(publish(a), b)
    # b thought a was gone for good (e.g. a partition longer than gc_grace)
    for name in (NODES, PROCEDURES, SUBSCRIPTIONS):
        b.replicas[name].merge(b.removal(name, A)(b.replicas[name]))
    assert b.views({A}) == ({}, {}) and b.metadata(A) is None
    sync(a, b)
    assert a.replicas[PROCEDURES].get("p") is None       # the removal reached a too
    ship(publish(a), b)                                   # a repairs its own entries
    assert b.views({A}) == ({A: (RemotePattern("t", None, 1),)}, {"p": (A,)})
    assert b.metadata(A) == {"name": "a"}


def test_a_new_boot_drops_what_its_previous_boot_published() -> None:
    old, b = boot(A, 1), boot(B)
    old.want_procedures({"gone", "kept"})
    old.want_metadata({"name": "a", "boot": 1})
    ship(publish(old, wall=WALL + 60_000), b)   # the old boot's clock was a minute ahead
    new = boot(A, 2)                            # same node, fresh replica and clock
    new.want_procedures({"kept"})
    new.want_metadata({"name": "a", "boot": 2})
    sync(new, b)                                # the new boot pulls the cluster state
    ship(publish(new, wall=WALL), b)
    assert b.views({A})[1] == {"kept": (A,)}
    assert b.metadata(A) == {"name": "a", "boot": 2}    # the hybrid clock passed the old write


def test_removal_deletes_only_that_owner_and_never_this_node() -> None:
    a, b, c = boot(A), boot(B), boot(C)
    for s in (a, b):
        s.want_procedures({"shared"})
        s.want_subscriptions([RemotePattern("t", None, 1)])
        s.want_metadata({"name": "x"})
        ship(publish(s), c)
    assert c.owners() == {A, B}
    for name in (NODES, PROCEDURES, SUBSCRIPTIONS):
        assert c.removal(name, C) is None
        c.replicas[name].merge(c.removal(name, A)(c.replicas[name]))
    assert c.owners() == {B}
    assert c.views({A, B}) == ({B: (RemotePattern("t", None, 1),)}, {"shared": (B,)})


def test_own_entries_are_capped_procedures_first() -> None:
    a, b = boot(A, cap=3), boot(B)
    a.want_procedures({"p1", "p2"})
    a.want_subscriptions([RemotePattern(f"t{i}", None, 1) for i in range(3)])
    assert a.local_refused == 2
    ship(publish(a), b)
    subs, providers = b.views({A})
    assert set(providers) == {"p1", "p2"} and subs == {A: (RemotePattern("t0", None, 1),)}


def test_another_nodes_entries_beyond_the_cap_are_not_routed_to() -> None:
    a, b = boot(A, cap=1000), boot(B, cap=3)
    a.want_procedures({f"p{i}" for i in range(5)})
    ship(publish(a), b)
    _, providers = b.views({A})
    assert sorted(providers) == ["p0", "p1", "p2"] and b.over_cap == 2


def test_malformed_entries_from_peers_are_skipped_and_counted() -> None:
    b = boot(B)
    garbage = ORMap(ORSet)
    for element in ("not-an-id", b"short", 7, A):
        garbage.update(b"peer", "proc", lambda s, e=element: s.add(b"peer", e))
    subs = ORMap(ORSet)
    bad = [A + b"\xc1", A + msgpack.packb([5, 1]), A + msgpack.packb(["g", 0]),
           A + msgpack.packb(["g" * 65, 1]), A + msgpack.packb([None]), "str", A,
           A + msgpack.packb(["g", 2])]
    for element in bad:
        subs.update(b"peer", "t.*", lambda s, e=element: s.add(b"peer", e))
    nodes = ORMap(LWWRegister)
    clock = HLC(b"peer")
    for key, value in (("not-hex", {"name": "x"}), ("abcd", {"name": "y"}), (A.hex(), "not a map")):
        nodes.update(b"peer", key, lambda r, v=value: r.set(v, clock, WALL))
    b.replicas[PROCEDURES].merge(garbage)
    b.replicas[SUBSCRIPTIONS].merge(subs)
    b.replicas[NODES].merge(nodes)
    views = b.views({A})
    assert views == ({A: (RemotePattern("t.*", "g", 2),)}, {"proc": (A,)})
    assert b.malformed == 3 + 7
    assert b.owners() == {A}
    assert b.metadata(A) is None           # a value that is not a map reads as none


def test_subscription_elements_round_trip_and_refuse_garbage() -> None:
    element = subscription_element(A, "group", 12)
    assert parse_subscription(element) == (A, "group", 12)
    assert parse_subscription(subscription_element(A, None, 1)) == (A, None, 1)
    assert parse_subscription(A) is None and parse_subscription(42) is None


def test_metadata_must_be_plain_and_bounded() -> None:
    a = boot(A)
    with pytest.raises(StateError):
        a.want_metadata({"blob": b"x" * 9000})
    with pytest.raises(StateError):
        a.want_metadata({"obj": object()})
    with pytest.raises(StateError):
        ClusterState(b"short", b"r", max_entries_per_node=1)
