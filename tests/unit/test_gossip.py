"""The gossip core driven over the test network: convergence, bounds, fallbacks."""

from __future__ import annotations

import random

import pytest

from macula.crdt import HLC, LWWRegister, ORMap, ORSet, PNCounter, digest, packed_len
from macula.errors import ErrorCode, StateError
from macula.gossip import GossipCore, InputRejected, ReplicaChanged
from macula.wire.messages import GossipAck, GossipPush, GossipState
from test_gossip_harness import Net, node_id

SMALL = 10 * 1024   # the smallest message bound the core accepts


def make_net(n: int, seed: int, loss: float = 0.0, connect: bool = True, **options) -> tuple[Net, list[bytes]]:
    net = Net(seed, delay=(0.002, 0.03), loss=loss)
    ids = [node_id(i) for i in range(n)]
    for i, nid in enumerate(ids):
        core = net.add(nid, GossipCore(nid + b"/boot-1", random.Random(seed * 1000 + i), **options))
        core.register("services", ORSet())
        core.register("meta", ORMap(LWWRegister))
        core.register("load", PNCounter())
    if connect:
        for i in range(n):
            for j in range(i + 1, n):
                net.connect(ids[i], ids[j])
    return net, ids


def replica_id(nid: bytes) -> bytes:
    return nid + b"/boot-1"


def states(net: Net, ids: list[bytes], name: str) -> list:
    return [net.cores[nid].replica(name) for nid in ids]


def converged(net: Net, ids: list[bytes]) -> bool:
    return all(len({digest(s) for s in states(net, ids, name)}) == 1
               for name in ("services", "meta", "load"))


def random_update(net: Net, ids: list[bytes], rnd: random.Random, clocks: dict) -> None:
    nid = rnd.choice(ids)
    core, rid = net.cores[nid], replica_id(nid)
    choice = rnd.randrange(4)
    if choice == 0:
        core.update("services", lambda s: s.add(rid, f"svc-{rnd.randrange(30)}"), net.now)
    elif choice == 1:
        core.update("services", lambda s: s.remove(f"svc-{rnd.randrange(30)}"), net.now)
    elif choice == 2:
        wall = 1_700_000_000_000 + int(net.now * 1000)
        core.update("meta", lambda m: m.update(rid, f"node-{rnd.randrange(10)}",
                                                lambda r: r.set({"load": rnd.random()}, clocks[nid], wall)), net.now)
    else:
        core.update("load", lambda c: c.increment(rid, rnd.randrange(1, 9)), net.now)


@pytest.mark.parametrize("n, loss", [(10, 0.0), (30, 0.05)])
def test_many_cores_converge_under_delay_and_loss(n: int, loss: float) -> None:
    net, ids = make_net(n, seed=n, loss=loss)
    rnd = random.Random(n)
    clocks = {nid: HLC(nid) for nid in ids}
    for _ in range(200):
        random_update(net, ids, rnd, clocks)
        net.run_for(rnd.uniform(0.0, 0.05))
    net.run_for(5.0)   # well inside the 30 s anti-entropy period: deltas alone did it
    assert converged(net, ids)
    assert states(net, ids, "services")[0].value()   # not trivially empty
    for name in ("GossipPush", "GossipState"):
        assert net.largest[name] <= 64 * 1024


def spread_times(net: Net, ids: list[bytes], origins: list[bytes]) -> list[float]:
    """Seconds until a change made at each origin is seen by every node."""
    times = []
    for n, origin in enumerate(origins):
        start, element = net.now, f"new-{n}"
        net.cores[origin].update("services", lambda s: s.add(replica_id(origin), element), net.now)
        missing = set(ids)
        while missing and net.now - start < 5:
            net.run_for(0.01)
            missing = {nid for nid in missing if element not in net.cores[nid].replica("services")}
        times.append(net.now - start)
        net.run_for(1.5)
    return times


def test_a_change_reaches_3_nodes_at_once_and_50_nodes_within_two_rounds() -> None:
    net, ids = make_net(3, seed=3)
    net.run_for(2.0)
    assert max(spread_times(net, ids, ids * 3)) <= 0.1   # debounce + one hop, no round waited for
    net, ids = make_net(50, seed=3)
    net.run_for(2.0)
    times = spread_times(net, ids, ids[::5])
    print("seconds for a change to reach all 50 nodes:", [f"{t:.2f}" for t in times])
    assert sorted(times)[len(times) // 2] < 1.0 and max(times) < 2.0


def test_a_local_change_goes_out_after_the_debounce_not_the_round() -> None:
    net, (a, b) = make_net(2, seed=5, debounce=0.02, interval=10.0)
    net.run_for(12.0)
    net.keep_trace = True
    start = net.now
    net.cores[a].update("services", lambda s: s.add(replica_id(a), "x"), net.now)
    net.run_for(0.5)
    pushes = [t for t, sender, _, msg in net.trace if sender == a and isinstance(msg, GossipPush)]
    assert pushes and abs(pushes[0] - start - 0.02) < 1e-9
    assert "x" in net.cores[b].replica("services")


def test_pull_on_reconnect_catches_up_without_waiting_for_anti_entropy() -> None:
    net, (a, b) = make_net(2, seed=6, anti_entropy_interval=1000.0)
    net.run_for(1.0)
    net.disconnect(a, b)
    for i in range(30):
        net.cores[a].update("services", lambda s: s.add(replica_id(a), i), net.now)
    net.run_for(3.0)
    assert net.cores[a].log_size() == (0, 0)   # no peers: nothing is kept for anyone
    assert len(net.cores[b].replica("services")) == 0
    net.connect(a, b)
    net.run_for(0.2)
    assert converged(net, [a, b]) and len(net.cores[b].replica("services")) == 30


def test_a_peer_is_added_with_a_pull_a_two_way_sync_or_just_an_announcement() -> None:
    net, (a, b) = make_net(2, seed=7, connect=False, anti_entropy_interval=1000.0)
    for node, element in ((a, "from-a"), (b, "from-b")):
        net.cores[node].update("services", lambda s, e=element, n=node: s.add(replica_id(n), e), net.now)
    net.run_for(2.0)                 # no peers: nothing is kept in the logs
    net.cores[a].peer_connected(b, None, net.now, "none")
    [(_, hello)] = net.cores[a].messages_to_send()
    assert isinstance(hello, GossipPush) and hello.entries == ()
    net.cores[b].peer_connected(a, None, net.now, "none")
    net.drain(b)
    net.run_for(1.0)
    assert net.cores[a].replica("services").value() == {"from-a"}   # announced: nothing moved
    net.cores[a].peer_connected(b, None, net.now, "both")
    net.drain(a)
    net.run_for(1.0)
    assert all(net.cores[n].replica("services").value() == {"from-a", "from-b"} for n in (a, b))


def test_what_a_pull_brings_is_pushed_on_to_other_peers() -> None:
    net, (a, b, c) = make_net(3, seed=8, connect=False, anti_entropy_interval=1000.0)
    net.cores[b].update("services", lambda s: s.add(replica_id(b), "old"), net.now)
    net.run_for(2.0)
    for x, y in ((a, c), (c, a)):     # c gossips with a only
        net.cores[x].peer_connected(y, None, net.now, "none")
        net.drain(x)
    net.run_for(1.0)
    net.connect(a, b)                 # a pulls b's state, which its log never held
    net.run_for(1.0)
    assert net.cores[c].replica("services").value() == {"old"}
    assert net.cores[a].stats.pushes_sent >= 1


def test_anti_entropy_repairs_divergence_and_sends_only_what_differs() -> None:
    net, (a, b) = make_net(2, seed=7, anti_entropy_interval=30.0)
    net.cores[a].update("meta", lambda m: m.update(replica_id(a), "k",
                                                    lambda r: r.set(1, HLC(a), 1000)), net.now)
    net.run_for(2.0)
    # a change that bypasses gossip (as if every delta carrying it had been lost)
    net.cores[b].replica("services").add(replica_id(b), "lost")
    net.keep_trace = True
    net.run_for(65.0)
    assert converged(net, [a, b])
    state_names = {piece[0] for _, _, _, msg in net.trace if isinstance(msg, GossipState) for piece in msg.pieces}
    assert state_names == {"services"}


def test_big_state_travels_in_pieces_under_the_message_bound() -> None:
    net, (a, b) = make_net(2, seed=8, connect=False, max_message_bytes=SMALL)
    big = net.cores[a].replica("services")
    for i in range(3000):
        big.add(replica_id(a), f"service-{i:05d}")
    for i in range(0, 3000, 2):
        big.remove(f"service-{i:05d}")
    assert packed_len(big.to_wire()) > 8 * SMALL
    net.connect(a, b)
    net.run_for(1.0)
    assert net.cores[b].replica("services") == big
    # a big delta (the context of a clear: 1500 separate dots) is split as well
    net.keep_trace = True
    net.cores[a].update("services", lambda s: s.clear(), net.now)
    net.run_for(2.0)
    assert len(net.cores[b].replica("services")) == 0 and converged(net, [a, b])
    assert 0 < max(net.largest.values()) <= SMALL
    assert net.sent["GossipState"] > 8
    assert sum(len(m.entries) for _, _, _, m in net.trace if isinstance(m, GossipPush)) >= 2


def test_log_is_bounded_and_a_peer_too_far_behind_gets_full_state() -> None:
    net, (a, b, c) = make_net(3, seed=9, max_message_bytes=SMALL, max_log_bytes=2 * SMALL,
                              anti_entropy_interval=1000.0)
    net.run_for(1.0)
    net.cut_link(a, c)
    net.cut_link(b, c)
    for i in range(600):
        net.cores[a].update("services", lambda s: s.add(replica_id(a), f"element-{i}"), net.now)
        net.run_for(0.01)
        assert net.cores[a].log_size()[1] <= 2 * SMALL
    assert net.cores[a].stats.full_state_fallbacks >= 1
    net.heal_link(a, c)
    net.heal_link(b, c)
    net.run_for(5.0)
    assert converged(net, [a, b, c]) and len(net.cores[c].replica("services")) == 600
    assert net.cores[a].log_size() == (0, 0)


def test_removing_a_member_that_lags_lets_the_log_compact() -> None:
    net, (a, b, c, d) = make_net(4, seed=10, anti_entropy_interval=1000.0)
    net.run_for(1.0)
    net.down.add(d)                       # d stops answering but is still connected
    for i in range(20):
        net.cores[a].update("load", lambda x: x.increment(replica_id(a)), net.now)
        net.run_for(0.1)
    net.run_for(5.0)
    entries, size = net.cores[a].log_size()
    assert entries > 0                    # kept for d, which never acked
    for nid in (a, b, c):
        net.disconnect(nid, d)            # membership declared d dead: sessions close
    assert net.cores[a].log_size() == (0, 0)
    print(f"log held for the silent member: {entries} entries, {size} bytes; after removal: 0")
    assert converged(net, [a, b, c])


def test_state_and_log_stay_flat_over_many_add_remove_cycles() -> None:
    net, ids = make_net(3, seed=11)
    rnd = random.Random(11)
    sizes = []
    for cycle in range(3000):
        adder, remover = rnd.choice(ids), rnd.choice(ids)
        element = f"svc-{rnd.randrange(10)}"
        net.cores[adder].update("services", lambda s: s.add(replica_id(adder), element), net.now)
        net.cores[remover].update("services", lambda s: s.remove(element), net.now)
        net.run_for(0.01)
        if (cycle + 1) % 1000 == 0:
            net.run_for(3.0)
            assert converged(net, ids)
            state = packed_len(net.cores[ids[0]].replica("services").to_wire())
            logs = [net.cores[nid].log_size() for nid in ids]
            sizes.append((state, logs))
            print(f"after {cycle + 1} cycles: state {state} bytes, logs {logs}")
    assert all(logs == [(0, 0)] * 3 for _, logs in sizes)
    assert max(state for state, _ in sizes) < 1200


def test_malformed_input_is_rejected_acked_and_reported() -> None:
    net, (a, b) = make_net(2, seed=12)
    net.run_for(1.0)
    core = net.cores[a]
    garbage = [
        GossipPush(77, (([[b"r", [1, 1]]], "services", ["not", "a", "set"]),), ()),
        GossipPush(78, (([], "services", [[], []]),), ()),              # no delta ids
        GossipState(79, (("meta", ["orset", [], []]),), (), True),       # a map of another type
        GossipPush(80, (), ("junk",)),
    ]
    for msg in garbage:
        core.handle_message(b, msg, net.now)
    out = core.messages_to_send()
    assert {m.seq for _, m in out if isinstance(m, GossipAck)} == {77, 78, 79, 80}
    events = []
    while (event := core.next_event()) is not None:
        events.append(event)
    assert len(events) == 4 and all(isinstance(e, InputRejected) for e in events)
    assert all(e.code is ErrorCode.BAD_FIELD and e.sender == b for e in events)
    assert core.stats.rejected == 4


def test_events_report_changes_once_per_name_and_rejections_are_bounded() -> None:
    net, (a, b) = make_net(2, seed=13, max_events=2)
    net.run_for(1.0)
    for i in range(5):
        net.cores[a].update("services", lambda s: s.add(replica_id(a), i), net.now)
        net.run_for(0.01)
    core = net.cores[b]
    for seq in range(5):
        core.handle_message(a, GossipPush(seq, (([], "services", []),), ()), net.now)
    assert core.stats.events_dropped == 3
    net.events[b].clear()
    net.cores[a].update("services", lambda s: s.add(replica_id(a), "x"), net.now)
    net.cores[a].update("load", lambda c: c.increment(replica_id(a)), net.now)
    net.run_for(0.5)
    changed = [e for _, e in net.events[b] if isinstance(e, ReplicaChanged)]
    assert sorted(e.name for e in changed) == ["load", "services"]


def test_constructor_and_registration_bounds() -> None:
    with pytest.raises(StateError):
        GossipCore(b"r", random.Random(0), max_message_bytes=1024)
    with pytest.raises(StateError):
        GossipCore(b"r", random.Random(0), max_log_bytes=SMALL, max_message_bytes=2 * SMALL)
    core = GossipCore(b"r", random.Random(0), max_names=1, max_peers=1)
    core.register("one", ORSet())
    with pytest.raises(StateError):
        core.register("two", ORSet())
    with pytest.raises(StateError):
        core.register("one", ORSet())
    with pytest.raises(StateError):
        core.update("missing", lambda s: s, 0.0)
    core.peer_connected(b"p1", None, 0.0)
    core.peer_connected(b"p2", None, 0.0)
    assert core.peers() == [b"p1"] and core.stats.peers_refused == 1


def test_names_a_node_does_not_hold_are_ignored() -> None:
    net, (a, b) = make_net(2, seed=14)
    net.cores[a].register("extra", ORSet())
    net.run_for(1.0)
    net.cores[a].update("extra", lambda s: s.add(replica_id(a), "x"), net.now)
    net.run_for(2.0)
    assert net.cores[a].log_size() == (0, 0) and net.cores[b].stats.rejected == 0
