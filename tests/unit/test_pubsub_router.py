"""The pub/sub routing core: local and remote interest, plans, queue groups, bounds."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from macula.errors import ErrorCode, Overloaded
from macula.pubsub.router import PubSubRouter, RemotePattern
from macula.pubsub.topics import TopicError

A, B, C = b"A" * 32, b"B" * 32, b"C" * 32


def router(**kw) -> PubSubRouter:
    return PubSubRouter(max_subscriptions=kw.get("max_subscriptions", 100),
                        max_per_owner=kw.get("max_per_owner", 10), rng=random.Random(3))


def test_route_local_and_remote_without_duplicates():
    r = router()
    s1 = r.subscribe(b"c1", 1, "home.>")
    s2 = r.subscribe(b"c2", 1, "home.*.temp")
    r.set_remote(A, [RemotePattern("home.kitchen.temp", None, 1), RemotePattern("home.>", None, 3)])
    r.set_remote(B, [RemotePattern("garden.>", None, 1)])
    route = r.route("home.kitchen.temp")
    assert set(route.local) == {s1, s2}
    assert route.remote == {A: (True, ())}  # one entry per node, however many patterns match
    assert r.route("garden.x").remote == {B: (True, ())} and not r.route("garden.x").local


def test_plans_are_cached_and_dropped_when_interest_changes():
    r = router()
    r.subscribe(b"c1", 1, "t.>")
    first = r.plan("t.x")
    assert r.plan("t.x") is first                     # cached
    r.subscribe(b"c2", 2, "t.x")
    assert r.plan("t.x") is not first and len(r.plan("t.x").local) == 2
    cached = r.plan("t.x")
    r.set_remote(A, [RemotePattern("t.*", None, 1)])
    assert r.plan("t.x") is not cached and r.plan("t.x").remote == (A,)
    r.forget_remote(A)
    assert r.plan("t.x").remote == ()


def test_queue_group_members_across_nodes_get_each_message_once_weighted():
    r = router()
    r.subscribe(b"c1", 1, "jobs", group="w")
    r.set_remote(A, [RemotePattern("jobs", "w", 2)])
    r.set_remote(B, [RemotePattern("jobs", "w", 1), RemotePattern("jobs", None, 1)])
    picks = Counter()
    for _ in range(4000):
        route = r.route("jobs")
        local = [s for s in route.local if s.group == "w"]
        remote = [n for n, (_, groups) in route.remote.items() if "w" in groups]
        assert len(local) + len(remote) == 1       # exactly one member of the group
        picks["local" if local else remote[0]] += 1
        assert route.remote[B][0] is True           # B's plain subscriber always gets it
    assert 800 < picks["local"] < 1200 and 1700 < picks[A] < 2300 and 800 < picks[B] < 1200


def test_receiving_node_serves_plain_and_named_groups_only():
    r = router()
    plain = r.subscribe(b"c1", 1, "t")
    g1 = r.subscribe(b"c2", 1, "t", group="g")
    r.subscribe(b"c3", 1, "t", group="other")
    assert r.local_for_route("t", True, ("g",)) == [plain, g1]
    assert r.local_for_route("t", False, ()) == []


def test_bounds_per_owner_and_per_node_and_bad_input():
    r = router(max_subscriptions=3, max_per_owner=2)
    r.subscribe(b"c1", 1, "a")
    r.subscribe(b"c1", 2, "b")
    with pytest.raises(Overloaded):
        r.subscribe(b"c1", 3, "c")
    r.subscribe(b"c2", 1, "c")
    with pytest.raises(Overloaded) as info:
        r.subscribe(b"c3", 1, "d")
    assert info.value.code is ErrorCode.OVERLOADED
    with pytest.raises(TopicError):
        r.subscribe(b"c2", 2, "bad..pattern")
    with pytest.raises(TopicError):
        r.subscribe(b"c2", 1, "dup")                # id in use
    assert r.drop_owner(b"c1") == 2 and r.subscription_count() == 1


def test_bad_remote_patterns_are_skipped_not_trusted():
    r = router()
    r.set_remote(A, [RemotePattern("ok.>", None, 1), RemotePattern("bad..p", None, 1)])
    assert r.route("ok.x").remote == {A: (True, ())}


def test_local_patterns_summarise_members_per_pattern_and_group():
    r = router()
    r.subscribe(b"c1", 1, "t", group="g")
    r.subscribe(b"c2", 1, "t", group="g")
    r.subscribe(b"c3", 1, "t")
    assert set(r.local_patterns()) == {RemotePattern("t", "g", 2), RemotePattern("t", None, 1)}


def test_setting_the_same_remote_interest_keeps_the_cached_plans():
    r = router()
    r.set_remote(A, [RemotePattern("t.>", None, 1)])
    first = r.plan("t.x")
    r.set_remote(A, [RemotePattern("t.>", None, 1)])
    assert r.plan("t.x") is first
    r.set_remote(A, [RemotePattern("t.x", None, 1)])
    assert r.plan("t.x") is not first


def test_route_rest_serves_only_what_the_early_part_left():
    r = router()
    local = r.subscribe(b"c1", 1, "jobs", group="w")
    r.set_remote(A, [RemotePattern("jobs", None, 1), RemotePattern("jobs", "w", 1)])   # routed early
    r.set_remote(B, [RemotePattern("jobs", None, 1), RemotePattern("jobs", "w", 2)])
    r.set_remote(C, [RemotePattern("jobs", "x", 1)])
    # group w was served early: only plain B and group x remain, never A, never local
    rest = r.route_rest("jobs", exclude={A}, settled={"w"})
    assert rest.local == [] and rest.remote == {B: (True, ()), C: (False, ("x",))}
    # w not served yet: picked among the remote members outside the early set (B)
    for _ in range(20):
        assert r.route_rest("jobs", exclude={A}, settled=()).remote[B] == (True, ("w",))
    # nobody outside the early set serves w any more: any member rather than none
    r.set_remote(B, [RemotePattern("jobs", None, 1)])
    picks = Counter()
    for _ in range(200):
        rest = r.route_rest("jobs", exclude={A}, settled={"x"})
        picks["local" if rest.local == [local] else "A" if A in rest.remote else "none"] += 1
        assert B in rest.remote and rest.remote[B][0]
    assert picks["none"] == 0 and picks["local"] > 0 and picks["A"] > 0
