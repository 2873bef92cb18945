"""SWIM + Lifeguard membership driven over the test network."""

from __future__ import annotations

import random

import pytest

from macula.errors import StateError
from macula.membership import (
    MemberFailed, MemberJoined, MemberLeft, MemberRecovered, MemberSuspected, State, SwimCore,
)
from macula.membership.dissemination import Broadcasts, Suspicion, retransmit_limit
from macula.wire.messages import SwimAck, SwimPing, SwimPingReq
from test_gossip_harness import Net, node_id


def make_cluster(n: int, seed: int, loss: float = 0.0, **options) -> tuple[Net, list[bytes]]:
    net = Net(seed, delay=(0.002, 0.03), loss=loss)
    ids = [node_id(i) for i in range(n)]
    for i, nid in enumerate(ids):
        net.add(nid, SwimCore(nid, (f"10.0.{i // 250}.{i % 250}", 4433), random.Random(seed * 1000 + i), **options))
    for nid in ids[1:]:           # everyone dials the seed, a little apart
        net.connect(nid, ids[0])
        net.run_for(0.05)
    return net, ids


def full_views(net: Net, ids: list[bytes], live: set[bytes]) -> bool:
    return all(set(net.cores[nid].members()) == live - {nid} for nid in live)


def events_of(net: Net, kind: type, about: bytes | None = None) -> list[tuple[float, bytes]]:
    return [(t, nid) for nid, evs in net.events.items() for t, e in evs
            if isinstance(e, kind) and (about is None or e.node_id == about)]


def run_until_true(net: Net, condition, limit: float, step: float = 0.25) -> float:
    start = net.now
    while not condition():
        assert net.now - start < limit, f"not within {limit} s"
        net.run_for(step)
    return net.now - start


@pytest.mark.parametrize("n", [10, 40])
def test_nodes_joining_through_one_seed_all_see_each_other(n: int) -> None:
    net, ids = make_cluster(n, seed=n)
    took = run_until_true(net, lambda: full_views(net, ids, set(ids)), limit=20)
    print(f"{n} nodes: full membership {took:.2f} s after the last join")
    assert not events_of(net, MemberFailed) and not events_of(net, MemberSuspected)
    assert all(net.cores[nid].members()[ids[3]] == ("10.0.0.3", 4433) for nid in ids if nid != ids[3])


def test_a_vanished_node_is_detected_by_everyone_after_the_suspicion_timeout() -> None:
    net, ids = make_cluster(20, seed=2)
    run_until_true(net, lambda: full_views(net, ids, set(ids)), limit=20)
    victim = ids[7]
    net.down.add(victim)
    start = net.now
    live = set(ids) - {victim}
    took = run_until_true(net, lambda: full_views(net, ids, live), limit=45)
    failed = {nid for _, nid in events_of(net, MemberFailed, victim)}
    assert failed == live
    first = min(t for t, _ in events_of(net, MemberFailed, victim)) - start
    # min timeout 4 * log10(20) = 5.2 s, max 6x that; confirmations from other probers shorten it
    print(f"victim declared dead after {first:.1f} s; everyone knew after {took:.1f} s")
    assert 5.2 <= first <= 31.2 + 2
    assert {e for _, e in events_of(net, MemberFailed)} == live   # nobody else


def test_indirect_probes_keep_a_node_behind_one_broken_link_alive() -> None:
    net, ids = make_cluster(8, seed=3)
    run_until_true(net, lambda: full_views(net, ids, set(ids)), limit=20)
    a, b = ids[1], ids[2]
    net.cut_link(a, b)
    net.run_for(60.0)
    assert not events_of(net, MemberFailed)
    assert (a, b) not in [(nid, e.node_id) for nid, evs in net.events.items() for _, e in evs
                          if isinstance(e, MemberSuspected)]
    assert net.cores[a].stats.indirect_probes > 0 and full_views(net, ids, set(ids))


def test_a_clean_leave_is_known_everywhere_at_once_without_a_failure() -> None:
    net, ids = make_cluster(15, seed=4)
    run_until_true(net, lambda: full_views(net, ids, set(ids)), limit=20)
    leaver = ids[5]
    net.cores[leaver].leave(net.now)
    net.drain(leaver)
    net.run_for(0.05)             # one message delay (at most 30 ms here)
    net.down.add(leaver)
    assert full_views(net, ids, set(ids) - {leaver})
    assert {nid for _, nid in events_of(net, MemberLeft, leaver)} == set(ids) - {leaver}
    assert not events_of(net, MemberFailed) and not events_of(net, MemberSuspected, leaver)
    net.run_for(31.0)   # tombstones are forgotten after dead_retention
    assert all(net.cores[nid].state_of(leaver) is None for nid in ids if nid != leaver)


def test_a_restarted_node_is_readmitted() -> None:
    net, ids = make_cluster(10, seed=5)
    run_until_true(net, lambda: full_views(net, ids, set(ids)), limit=20)
    node = ids[4]
    net.down.add(node)
    run_until_true(net, lambda: full_views(net, ids, set(ids) - {node}), limit=45)
    # it comes back with a fresh core (incarnation 0) and dials the seed
    net.add(node, SwimCore(node, ("10.0.0.4", 4433), random.Random(99)))
    net.down.discard(node)
    net.connect(node, ids[0])
    took = run_until_true(net, lambda: full_views(net, ids, set(ids)), limit=20)
    print(f"readmitted everywhere after {took:.1f} s")
    assert {nid for t, nid in events_of(net, MemberJoined, node) if t > net.now - took - 1} == set(ids) - {node}
    assert net.cores[node].incarnation >= 1   # it had to outbid its death


def test_both_sides_of_a_healed_partition_find_each_other_again() -> None:
    net, ids = make_cluster(10, seed=6)
    run_until_true(net, lambda: full_views(net, ids, set(ids)), limit=20)
    left, right = ids[:5], ids[5:]
    for a in left:
        for b in right:
            net.cut_link(a, b)
    run_until_true(net, lambda: full_views(net, left, set(left)) and full_views(net, right, set(right)), limit=60)
    net.cut.clear()
    took = run_until_true(net, lambda: full_views(net, ids, set(ids)), limit=120, step=1.0)
    print(f"partition healed: full membership again after {took:.0f} s (no new sessions needed)")


def test_a_member_held_dead_hears_so_from_whoever_it_talks_to_and_refutes_at_once() -> None:
    net, ids = make_cluster(4, seed=12)
    run_until_true(net, lambda: full_views(net, ids, set(ids)), limit=20)
    ghost, other = ids[3], ids[1]
    net.down.add(ghost)
    run_until_true(net, lambda: net.cores[other].state_of(ghost) == State.DEAD, limit=60)
    net.down.discard(ghost)
    # any message from it (here: what the cluster edge reports for a gossip message)
    # gets its tombstone straight back, whatever the broadcast queue still holds
    net.cores[other].heard_from(ghost, net.now)
    reply = [m for d, m in net.cores[other].messages_to_send() if d == ghost]
    assert [u[:2] for m in reply for u in m.updates] == [(ghost, State.DEAD)]
    net.deliver(other, ghost, reply[0])
    assert net.cores[ghost].incarnation >= 1 and net.cores[ghost].stats.refutations == 1
    net.run_for(0.1)
    assert net.cores[other].state_of(ghost) == State.ALIVE


def test_old_news_of_a_death_is_answered_with_the_newer_incarnation_once() -> None:
    net, ids = make_cluster(3, seed=14)
    run_until_true(net, lambda: full_views(net, ids, set(ids)), limit=20)
    a, b = ids[0], ids[1]
    net.cores[b].incarnation = 2             # b refuted twice while a was not listening
    dead = (b, int(State.DEAD), 1, None, None)
    net.cores[a].handle_message(ids[2], SwimAck(0, (dead,)), net.now)
    net.cores[a].messages_to_send()
    assert net.cores[a].state_of(b) == State.DEAD
    net.cores[a].heard_from(b, net.now)
    net.cores[a].heard_from(b, net.now)      # its ack would do this: told once per period
    told = [m for d, m in net.cores[a].messages_to_send() if d == b]
    assert len(told) == 1 and [u[:3] for u in told[0].updates] == [dead[:3]]
    net.cores[b].handle_message(a, told[0], net.now)   # old news: b answers, does not refute
    answer = [m for d, m in net.cores[b].messages_to_send() if d == a and isinstance(m, SwimPing)]
    assert net.cores[b].incarnation == 2 and answer[0].updates[0][:3] == (b, int(State.ALIVE), 2)
    net.deliver(b, a, answer[0])
    assert net.cores[a].state_of(b) == State.ALIVE


def test_a_stranger_that_keeps_talking_to_us_is_asked_for_its_table() -> None:
    a = SwimCore(node_id(0), ("10.0.0.0", 4433), random.Random(1))
    a.heard_from(node_id(7), 0.0)       # its membership news may be on its way: wait
    a.heard_from(node_id(7), 4.0)
    assert not a.messages_to_send()
    a.heard_from(node_id(7), 5.0)       # five probe periods on, still a stranger: ask
    [(dest, msg)] = a.messages_to_send()
    assert dest == node_id(7) and msg.sync and msg.updates[0][0] == node_id(0)
    a.heard_from(node_id(8), 0.0)
    a.heard_from(node_id(8), 6.0)       # one ask per probe period
    assert not a.messages_to_send()
    a.handle_timer(7.0)
    a.messages_to_send()
    a.heard_from(node_id(8), 7.0)
    assert [d for d, m in a.messages_to_send() if m.sync] == [node_id(8)]
    a.heard_from(node_id(0), 8.0)       # itself: nothing
    assert not a.messages_to_send()


def test_a_join_whose_first_messages_are_lost_is_retried_until_it_answers() -> None:
    net = Net(13, delay=(0.002, 0.03))
    a, b = node_id(0), node_id(1)
    net.add(a, SwimCore(a, ("10.0.0.0", 4433), random.Random(1)))
    net.add(b, SwimCore(b, ("10.0.0.1", 4433), random.Random(2)))
    net.cut_link(a, b)
    net.connect(b, a)             # both sync pings are lost
    net.run_for(2.0)
    assert not net.cores[a].members() and not net.cores[b].members()
    net.heal_link(a, b)
    took = run_until_true(net, lambda: full_views(net, [a, b], {a, b}), limit=5, step=0.1)
    print(f"join retried: members {took:.1f} s after the link healed")


def test_local_health_rises_when_this_node_cannot_reach_anyone_and_slows_its_probing() -> None:
    net, ids = make_cluster(6, seed=7)
    run_until_true(net, lambda: full_views(net, ids, set(ids)), limit=20)
    lonely = net.cores[ids[0]]
    assert lonely.health == 0
    for other in ids[1:]:
        net.cut_link(ids[0], other)
    net.run_for(3.0)
    assert lonely.health >= 2
    probes_before = lonely.stats.probes
    net.run_for(20.0)
    assert lonely.health == lonely.awareness_max - 1
    assert lonely.stats.probes - probes_before <= 20 / 4   # period stretched by health + 1
    net.cut.clear()
    run_until_true(net, lambda: full_views(net, ids, set(ids)) and lonely.health == 0, limit=120, step=1.0)


def test_a_suspect_that_answers_refutes_and_recovers() -> None:
    net, ids = make_cluster(5, seed=8)
    run_until_true(net, lambda: full_views(net, ids, set(ids)), limit=20)
    accused = ids[3]
    core = net.cores[ids[1]]
    core.handle_message(ids[2], SwimPing(1, ((accused, int(State.SUSPECT), 0, None, ids[2]),)), net.now)
    net.drain(ids[1])
    assert core.state_of(accused) == State.SUSPECT
    run_until_true(net, lambda: core.state_of(accused) == State.ALIVE, limit=10)
    assert net.cores[accused].incarnation == 1 and net.cores[accused].stats.refutations >= 1
    assert [nid for _, nid in events_of(net, MemberRecovered, accused)]
    assert not events_of(net, MemberFailed)


@pytest.mark.parametrize("loss", [0.05, 0.10])
def test_no_false_failures_under_message_loss(loss: float) -> None:
    net, ids = make_cluster(20, seed=9, loss=loss)
    run_until_true(net, lambda: full_views(net, ids, set(ids)), limit=40)
    net.run_for(120.0)
    suspected = len(events_of(net, MemberSuspected))
    print(f"loss {loss:.0%}: {suspected} suspicions raised and refuted, 0 failures in 120 s")
    assert not events_of(net, MemberFailed)


def test_under_heavy_loss_a_falsely_failed_node_refutes_and_is_readmitted() -> None:
    net, ids = make_cluster(20, seed=9, loss=0.15)
    run_until_true(net, lambda: full_views(net, ids, set(ids)), limit=40)
    net.run_for(120.0)
    # 15% loss each way is past the design point: this seed sees false failures
    failed = {e.node_id for evs in net.events.values() for _, e in evs if isinstance(e, MemberFailed)}
    for core in net.cores.values():   # the live count and the tombstone index kept up
        table = core.table()
        assert core._active_count() == 1 + len(core.members())
        assert list(core._tombstones) == sorted(core._tombstones, key=core._tombstones.get)
        assert set(core._tombstones) == {n for n, st in table.items() if st in (State.DEAD, State.LEFT)}
    net.loss = 0.0
    took = run_until_true(net, lambda: full_views(net, ids, set(ids)), limit=60)
    print(f"loss 15%: {len(failed)} node(s) falsely failed, all readmitted {took:.1f} s after loss stopped")


# ---- parts and bounds -------------------------------------------------------------------
def test_suspicion_timeout_shrinks_with_confirmations_to_the_minimum() -> None:
    s = Suspicion(start=100.0, suspector=b"a", min_timeout=5.0, max_timeout=30.0, expected=3)
    assert s.deadline == 130.0
    assert s.confirm(b"a") is False and s.deadline == 130.0
    assert s.confirm(b"b") and 105.0 < s.deadline < 130.0
    s.confirm(b"c")
    s.confirm(b"d")
    assert s.deadline == 105.0
    s.confirm(b"e")
    assert s.deadline == 105.0
    assert Suspicion(0.0, b"a", 5.0, 30.0, expected=0).deadline == 5.0


def test_broadcasts_send_least_sent_first_retire_after_the_limit_and_stay_bounded() -> None:
    q = Broadcasts(max_items=3)
    for i in range(3):
        q.add((bytes([i]) * 32, 0, 0, None, None))
    assert len(q.take(2, limit=2)) == 2
    third = q.take(1, limit=2)
    assert third[0][0] == bytes([0]) * 32   # the one not yet sent goes first
    q.take(3, limit=2)
    assert len(q) == 0
    for i in range(5):
        q.add((bytes([i]) * 32, 0, 0, None, None))
    assert len(q) == 3
    assert retransmit_limit(4, 9) == 4 and retransmit_limit(4, 100) == 12


def test_piggyback_members_relays_and_events_are_bounded() -> None:
    core = SwimCore(node_id(0), None, random.Random(1), max_piggyback=4, max_members=5, max_relays=2,
                    max_events=3)
    now = 1.0
    updates = tuple((node_id(i), 0, 0, None, None) for i in range(1, 10))
    core.handle_message(node_id(1), SwimPing(1, updates), now)
    assert len(core.members()) == 5 and core.stats.members_refused == 4
    assert all(len(m.updates) <= 4 for _, m in core.messages_to_send())
    assert core.stats.events_dropped == 2
    for seq in range(3):
        core.handle_message(node_id(1), SwimPingReq(seq, node_id(2)), now)
    assert core.stats.relays_refused == 1


def test_malformed_updates_are_rejected_and_bad_parameters_refused() -> None:
    core = SwimCore(node_id(0), None, random.Random(1))
    core.handle_message(node_id(1), SwimAck(1, ((node_id(2), 9, 0, None, None),)), 0.0)
    assert core.stats.rejected == 1 and not core.members()
    with pytest.raises(StateError):
        SwimCore(node_id(0), None, random.Random(1), probe_timeout=2.0)
    with pytest.raises(StateError):
        SwimCore(node_id(0), None, random.Random(1), max_piggyback=65)
