"""The cluster core (SWIM + gossip + state) driven over the deterministic test network."""

from __future__ import annotations

import random

from macula.cluster import ClusterCore, ProvidersChanged, SubscriptionsChanged
from macula.crdt import digest
from macula.membership import MemberFailed, MemberLeft
from macula.pubsub.router import RemotePattern
from macula.wire.messages import GossipPush, GossipState
from test_gossip_harness import Net, node_id

FAST = {"probe_interval": 0.5, "probe_timeout": 0.25}


def make(n: int, seed: int, loss: float = 0.0, **options) -> tuple[Net, list[bytes]]:
    net = Net(seed, delay=(0.002, 0.03), loss=loss)
    ids = [node_id(i) for i in range(n)]
    for i, nid in enumerate(ids):
        core = ClusterCore(nid, (f"10.0.0.{i}", 4433), nid + b"boot", random.Random(seed * 1000 + i),
                           lambda now: 1_700_000_000_000 + int(now * 1000), **{**FAST, **options})
        core.set_metadata({"name": f"n{i}"}, 0.0)
        net.add(nid, core)
        core.start(0.0)
        net.drain(nid)
    for nid in ids[1:]:   # a session with the seed: both sides see it come up
        net.connect(nid, ids[0])
        net.run_for(0.05)
    run_until(net, lambda: whole(net, ids), 20)
    return net, ids


def whole(net: Net, ids: list[bytes]) -> bool:
    return all(net.cores[n].live() == set(ids) - {n} for n in ids)


def run_until(net: Net, condition, limit: float, step: float = 0.1) -> float:
    start = net.now
    while not condition():
        assert net.now - start < limit, f"not within {limit} s"
        net.run_for(step)
    return net.now - start


def same_state(net: Net, ids: list[bytes]) -> bool:
    return all(len({digest(net.cores[n].gossip.replica(name)) for n in ids}) == 1
               for name in ("nodes", "procedures", "subscriptions"))


def act(net: Net, nid: bytes, fn) -> None:
    fn(net.cores[nid], net.now)
    net.drain(nid)


def test_membership_is_the_gossip_peer_set_and_changes_reach_everyone() -> None:
    net, ids = make(5, seed=1)
    for nid in ids:
        assert set(net.cores[nid].gossip.peers()) == set(ids) - {nid}
    act(net, ids[2], lambda c, now: c.set_local_procedures({"svc"}, now))
    act(net, ids[3], lambda c, now: c.set_local_subscriptions([RemotePattern("a.*", "g", 2)], now))
    took = run_until(net, lambda: all(net.cores[n].providers("svc") == (ids[2],) for n in ids if n != ids[2])
                     and all(ids[3] in net.cores[n].remote_subscriptions() for n in ids if n != ids[3]), 2, 0.01)
    print(f"5 cores: two changes seen everywhere after {took * 1000:.0f} ms")
    events = [e for _, e in net.events[ids[0]] if isinstance(e, (ProvidersChanged, SubscriptionsChanged))]
    assert ProvidersChanged({"svc": (ids[2],)}) in events
    assert SubscriptionsChanged({ids[3]: (RemotePattern("a.*", "g", 2),)}) in events
    assert all(net.cores[n].metadata(ids[4]) == {"name": "n4"} for n in ids)


def test_what_a_node_wrote_before_joining_spreads_at_once() -> None:
    net, ids = make(4, seed=7)
    late = node_id(9)
    core = ClusterCore(late, ("10.0.0.9", 4433), late + b"boot", random.Random(9),
                       lambda now: 1_700_000_000_000 + int(now * 1000), **FAST)
    core.set_metadata({"name": "late"}, net.now)
    core.set_local_procedures({"svc.late"}, net.now)
    net.add(late, core)
    core.start(net.now)
    net.connect(late, ids[3])       # joins through one member; the others hear of it
    took = run_until(net, lambda: all(net.cores[n].metadata(late) == {"name": "late"} for n in ids), 2, 0.01)
    print(f"a joiner's entries reached all 4 members {took * 1000:.0f} ms after its session came up")
    assert took < 0.5     # pushed like any change, not left to anti-entropy (30 s)
    # routing counts live members only: that waits for the membership news
    took = run_until(net, lambda: all(net.cores[n].providers("svc.late") == (late,) for n in ids), 3, 0.01)
    print(f"and it was routable everywhere after {took * 1000:.0f} ms more")


def test_a_failed_member_leaves_every_view_at_once_and_its_entries_go_after_the_grace() -> None:
    net, ids = make(6, seed=2, gc_grace=5.0)
    victim = ids[4]
    act(net, victim, lambda c, now: c.set_local_procedures({"svc.v"}, now))
    run_until(net, lambda: all(net.cores[n].providers("svc.v") for n in ids if n != victim), 2)
    net.down.add(victim)
    run_until(net, lambda: all(victim not in net.cores[n].live() for n in ids if n != victim), 30)
    failed_at = max(t for n in ids for t, e in net.events[n] if isinstance(e, MemberFailed))
    for n in ids:
        if n != victim:
            assert net.cores[n].providers("svc.v") == ()
            changes = [e.changes for t, e in net.events[n] if isinstance(e, ProvidersChanged)]
            assert changes[-1] == {"svc.v": ()}
    # hidden at once, but still in the replicated state until the grace has passed...
    assert all(net.cores[n].gossip.replica("procedures").get("svc.v") for n in ids if n != victim)
    run_until(net, lambda: all(not net.cores[n].gossip.replica("procedures").get("svc.v")
                               for n in ids if n != victim), 20)
    assert net.now - failed_at >= 5.0
    # ...and deleted by the two members closest to it, not by all five
    assert sum(net.cores[n].stats.removals for n in ids if n != victim) == 2


def test_entries_of_a_member_that_left_are_deleted_at_once() -> None:
    net, ids = make(5, seed=3)
    leaver = ids[1]
    act(net, leaver, lambda c, now: c.set_local_subscriptions([RemotePattern("x", None, 1)], now))
    run_until(net, lambda: all(leaver in net.cores[n].remote_subscriptions() for n in ids if n != leaver), 2)
    act(net, leaver, lambda c, now: c.leave(now))
    net.run_for(0.05)
    net.down.add(leaver)
    rest = [n for n in ids if n != leaver]
    assert all(leaver not in net.cores[n].remote_subscriptions() for n in rest)
    assert all(isinstance(e, MemberLeft) for n in rest for _, e in net.events[n][-8:]
               if isinstance(e, (MemberLeft, MemberFailed)) and e.node_id == leaver)
    run_until(net, lambda: all(net.cores[n].state.owners() == set(rest) for n in rest), 2)


def test_a_node_beyond_the_bound_can_read_but_not_write() -> None:
    net, ids = make(3, seed=4, max_members=3)
    late = node_id(9)
    core = ClusterCore(late, ("10.0.0.9", 4433), late + b"boot", random.Random(9),
                       lambda now: 1_700_000_000_000 + int(now * 1000), max_members=3, **FAST)
    core.set_local_procedures({"svc.late"}, net.now)
    net.add(late, core)
    core.start(net.now)
    net.connect(late, ids[0])
    net.run_for(5.0)
    assert all(late not in net.cores[n].live() and not net.cores[n].providers("svc.late") for n in ids)
    assert sum(net.cores[n].stats.unadmitted for n in ids) > 0
    assert net.cores[ids[0]].swim.stats.members_refused > 0
    # it was given the state it asked for, though: reads are served to the cluster
    assert core.metadata(ids[1]) == {"name": "n1"}


def test_malformed_gossip_from_a_member_is_counted_and_changes_nothing() -> None:
    net, ids = make(2, seed=5)
    a, b = ids
    before = digest(net.cores[a].gossip.replica("procedures"))
    for msg in (GossipPush(1, (((("x", 1),), "procedures", "garbage"),)),
                GossipPush(2, ((((b, 9),), "procedures", ["orset", [["k", [[[b, 9]]]]], []]),)),
                GossipState(3, (("subscriptions", [1, 2, 3]),)),
                GossipState(4, (("unknown-name", []),))):
        net.deliver(b, a, msg)
    assert digest(net.cores[a].gossip.replica("procedures")) == before
    assert sum(net.cores[a].stats.rejected.values()) >= 3
    net.run_for(2.0)
    assert whole(net, ids)


def test_one_node_cut_off_then_healed_converges_with_both_sides_changes() -> None:
    net, ids = make(10, seed=6, gc_grace=8.0)
    p, major = ids[-1], ids[:-1]
    for i, n in enumerate(ids):
        act(net, n, lambda c, now, i=i: c.set_local_procedures({f"svc.{i}"}, now))
    run_until(net, lambda: same_state(net, ids), 5)
    for n in major:
        net.cut_link(p, n)
    run_until(net, lambda: all(p not in net.cores[n].live() for n in major), 30)
    act(net, major[0], lambda c, now: c.set_local_procedures({"svc.0", "svc.major"}, now))
    act(net, p, lambda c, now: c.set_local_procedures({"svc.9", "svc.minor"}, now))
    net.run_for(30.0)    # past gc_grace: each side has deleted what the other side owns
    assert not net.cores[major[1]].gossip.replica("procedures").get("svc.9")
    for n in major:
        net.heal_link(p, n)
    took = run_until(net, lambda: whole(net, ids) and same_state(net, ids), 30)
    print(f"10 cores: whole and converged {took:.1f} s after the heal")
    for n in ids:
        core = net.cores[n]
        for i, owner in enumerate(ids):
            assert core.providers(f"svc.{i}") == (() if owner == n else (owner,))
        assert core.providers("svc.minor") == (() if n == p else (p,))
        assert core.providers("svc.major") == (() if n == major[0] else (major[0],))


def test_a_feature_registers_its_own_replicated_map_and_it_is_cleaned_up_with_its_owner() -> None:
    net, ids = make(3, seed=7)
    for nid in ids:
        net.cores[nid].register_map("apps")
    act(net, ids[1], lambda c, now: c.set_local_entries("apps", {"cam": [b"v1"], "log": [b"v2"]},
                                                        now))
    run_until(net, lambda: net.cores[ids[0]].entries("apps") == {ids[1]: {"cam": (b"v1",),
                                                                           "log": (b"v2",)}}, 10)
    assert net.cores[ids[2]].entries("apps") == net.cores[ids[0]].entries("apps")
    assert net.cores[ids[1]].entries("apps") == {}     # one's own entries are not a view
    act(net, ids[1], lambda c, now: c.set_local_entries("apps", {"cam": [b"v3"]}, now))
    run_until(net, lambda: net.cores[ids[0]].entries("apps") == {ids[1]: {"cam": (b"v3",)}}, 10)
    act(net, ids[1], lambda c, now: c.leave(now))
    net.run_for(0.05)
    net.down.add(ids[1])
    rest = (ids[0], ids[2])
    assert all(net.cores[n].entries("apps") == {} for n in rest)   # hidden at once
    # and deleted, not only hidden
    run_until(net, lambda: all(net.cores[n].state.owners() == set(rest) for n in rest), 2)
