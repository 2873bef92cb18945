"""The simulator: clock and timers, links (latency, loss, partitions), churn, codec."""

import hashlib

import pytest

from macula.sim import Sim, SimError
from macula.wire.messages import FindNode, Ping, Pong

A, B, C = (hashlib.sha256(bytes([i])).digest() for i in range(3))


class Echo:
    """A minimal core: answers PING with PONG, can ping peers, keeps one timer."""

    def __init__(self, timer: float | None = None) -> None:
        self.out: list = []
        self.got: list = []
        self.events: list = []
        self.timer = timer
        self.fired: list = []
        self.unreachable: list = []

    def handle_message(self, sender, msg, now):
        self.got.append((sender, msg, now))
        if type(msg) is Ping:
            self.out.append((sender, Pong(msg.seq)))
        else:
            self.events.append(("pong", msg.seq, now))

    def handle_timer(self, now):
        self.fired.append(now)
        self.timer = None

    def get_timer(self):
        return self.timer

    def messages_to_send(self):
        out, self.out = self.out, []
        return out

    def next_event(self):
        return self.events.pop(0) if self.events else None

    def handle_unreachable(self, node_id, now):
        self.unreachable.append((node_id, now))

    def ping(self, dest, seq):
        self.out.append((dest, Ping(seq)))


def pair(seed: int = 1, **kw) -> tuple[Sim, Echo, Echo]:
    sim = Sim(seed, **kw)
    a, b = Echo(), Echo()
    sim.add(A, a)
    sim.add(B, b)
    return sim, a, b


def test_messages_arrive_after_the_link_latency_and_events_come_out():
    seen = []
    sim = Sim(1, latency=lambda rng: 0.25, on_event=lambda n, e, t: seen.append((n, e, t)))
    a, b = Echo(), Echo()
    sim.add(A, a)
    sim.add(B, b)
    sim.call(A, lambda h, now: h.ping(B, 7))
    sim.run(10.0)
    assert b.got == [(A, Ping(7), 0.25)]              # the sender as it registered
    assert a.got == [(B, Pong(7), 0.5)]
    assert seen == [(A, ("pong", 7, 0.5), 0.5)]
    assert sim.now == 10.0 and sim.stats.delivered == 2


def test_timers_fire_at_their_time():
    sim = Sim(1)
    host = Echo(timer=3.5)
    sim.add(A, host)
    sim.run(3.4)
    assert host.fired == []
    sim.run(3.5)
    assert host.fired == [3.5]
    host.timer = 9.0
    sim.call(A, lambda h, now: None)                  # the sim learns the new timer
    sim.run(20.0)
    assert host.fired == [3.5, 9.0]


def test_same_seed_same_run_and_the_codec_changes_nothing():
    def run(seed: int, codec: float):
        sim, a, b = pair(seed, loss=0.3, codec=codec)
        for i in range(200):
            sim.at(i * 0.01, lambda i=i: sim.call(A, lambda h, now: h.ping(B, i)))
        sim.run(100.0)
        return [(m.seq, round(t, 9)) for _, m, t in a.got], sim.stats

    first, stats = run(3, 1.0)
    assert stats.encoded == stats.sent - stats.lost and stats.encoded_bytes > 0
    assert run(3, 1.0)[0] == first
    plain, plain_stats = run(3, 0.0)
    assert plain == first and plain_stats.encoded == 0
    assert run(4, 1.0)[0] != first


def test_loss_drops_about_its_share():
    sim, a, b = pair(loss=0.2, codec=0.0)
    for i in range(2000):
        sim.call(A, lambda h, now: h.ping(B, i))
    sim.run(10.0)
    assert 1500 <= len(b.got) <= 1700
    assert sim.stats.lost == (2000 - len(b.got)) + (len(b.got) - len(a.got))  # pings, pongs


def test_partitions_drop_traffic_between_groups_until_healed():
    sim = Sim(1, codec=0.0)
    hosts = {n: Echo() for n in (A, B, C)}
    for n, h in hosts.items():
        sim.add(n, h)
    sim.partition([A], [B])                  # C is in neither: a third group
    for dest in (B, C):
        sim.call(A, lambda h, now: h.ping(dest, 1))
    sim.run(5.0)
    assert hosts[B].got == [] and hosts[C].got == [] and sim.stats.partitioned == 2
    sim.heal()
    sim.call(A, lambda h, now: h.ping(B, 2))
    sim.run(10.0)
    assert [m.seq for _, m, _ in hosts[B].got] == [2]


def test_churn_kills_drop_traffic_and_report_unreachable_if_asked():
    sim, a, b = pair(unreachable_delay=3.0)
    sim.call(A, lambda h, now: h.ping(B, 1))
    sim.run(0.0)                                        # sent
    sim.kill(B)                                         # dies with the ping in flight
    sim.run(5.0)
    assert b.got == [] and a.unreachable == []          # in flight: just lost
    sim.call(A, lambda h, now: h.ping(B, 2))
    sim.run(20.0)
    assert a.unreachable == [(B, 8.0)] and sim.stats.to_dead == 1
    fresh = Echo()
    sim.add(B, fresh)                                   # restarted with the same ID
    sim.call(A, lambda h, now: h.ping(B, 3))
    sim.run(30.0)
    assert [m.seq for _, m, _ in fresh.got] == [3]
    with pytest.raises(ValueError):
        sim.add(B, Echo())


def test_a_message_that_breaks_its_schema_stops_the_run():
    sim, a, b = pair()
    sim.call(A, lambda h, now: h.out.append((B, FindNode(1, b"too short"))))
    with pytest.raises(SimError):
        sim.run(1.0)


def test_the_event_queue_is_bounded():
    sim, a, b = pair(max_queue=10, codec=0.0)
    with pytest.raises(SimError):
        for i in range(20):
            sim.at(1.0, lambda: None)


def test_a_timer_that_never_moves_stops_the_run():
    class Stuck(Echo):
        def handle_timer(self, now):
            self.fired.append(now)     # forgets to move its timer

    sim = Sim(1)
    sim.add(A, Stuck(timer=1.0))
    with pytest.raises(SimError):
        sim.run(5.0)
