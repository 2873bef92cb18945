"""The pub/sub core (sans-IO): deliveries, waiting for interest, ordering, holds."""

from __future__ import annotations

import random

from macula.interest import RemotePattern
from macula.pubsub.core import Hold, NeedInterest, PubSubCore, Release
from macula.pubsub.router import PubSubRouter
from macula.transport.outbox import ByteBudget
from macula.wire.messages import Deliver, PubsubRoute

ME, B, C = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32


class View:
    def __init__(self) -> None:
        self.known: set[str] = set()
        self.direct: set[bytes] = set()
        self.changes = 0

    def ready(self, topic): return topic in self.known
    def direct_nodes(self): return self.direct
    def local_changed(self): self.changes += 1


def make(queue_bytes=64 << 10, budget=1 << 20):
    router = PubSubRouter(max_subscriptions=100, max_per_owner=10, rng=random.Random(1))
    view = View()
    return PubSubCore(ME, router, view, ByteBudget(budget), queue_bytes=queue_bytes), router, view


def events(core):
    out = []
    while (e := core.next_event()) is not None:
        out.append(e)
    return out


def test_local_subscriber_gets_publish_and_owner_is_opaque():
    core, router, view = make()
    sink = object()
    core.subscribe(sink, 7, "a.*", None)
    assert view.changes == 1
    view.known.add("a.b")
    core.publish("a.b", b"x", source="pub")
    assert core.messages_to_send() == [(sink, Deliver(7, "a.b", b"x", None, None), "pub")]
    core.drop_owner(sink)
    core.publish("a.b", b"y")
    assert not core.messages_to_send() and view.changes == 2


def test_publishes_wait_for_interest_in_order_and_direct_nodes_go_at_once():
    core, router, view = make()
    router.set_remote(B, [RemotePattern("t", None, 1)])
    router.set_remote(C, [RemotePattern("t", None, 1)])
    view.direct = {B}
    for i in range(3):
        core.publish("t", bytes([i]))
    assert events(core) == [NeedInterest("t")]  # one lookup for the whole burst
    now = core.messages_to_send()
    assert [(d, m.payload) for d, m, _ in now] == [(B, b"\x00"), (B, b"\x01"), (B, b"\x02")]
    assert core.waiting("t") == 3
    view.known.add("t")
    core.interest_known("t")
    later = core.messages_to_send()
    assert [(d, m.payload) for d, m, _ in later] == [(C, b"\x00"), (C, b"\x01"), (C, b"\x02")]
    assert all(type(m) is PubsubRoute and m.origin == ME for _, m, _ in later)
    assert core.waiting("t") is None and core.budget.used == 0
    assert core.routed_to == {B: 3, C: 3}


def test_queue_group_member_is_picked_once_across_the_wait():
    core, router, view = make()
    router.set_remote(B, [RemotePattern("job", "w", 1)])
    router.set_remote(C, [RemotePattern("job", "w", 1)])
    view.direct = {B}
    for i in range(40):
        core.publish("job", b"%d" % i)
    view.known.add("job")
    core.interest_known("job")
    served = [m.payload for _, m, _ in core.messages_to_send()]
    assert sorted(served, key=int) == [b"%d" % i for i in range(40)]  # each exactly once


def test_a_flood_into_a_waiting_topic_holds_its_publisher_then_drops_oldest():
    core, router, view = make(queue_bytes=4096)
    router.set_remote(C, [RemotePattern("t", None, 1)])
    for i in range(20):
        core.publish("t", bytes([i]) * 200, source="p")
    evs = events(core)
    assert evs[0] == NeedInterest("t") and evs[1:] == [Hold("p")]  # held once
    assert core.stats["waiting_dropped"] > 0 and core.budget.used <= 4096
    view.known.add("t")
    core.interest_known("t")
    sent = [m.payload[0] for _, m, _ in core.messages_to_send()]
    assert sent == sorted(sent) and sent[-1] == 19  # the newest kept, in order
    assert events(core) == [Release("p")]


def test_routed_publish_goes_to_local_subscribers_only():
    core, router, view = make()
    router.set_remote(C, [RemotePattern("t", None, 1)])
    core.subscribe(b"client", 1, "t", None)
    core.handle_route(B, PubsubRoute(B, "t", b"x", True, (), None, None), "sess")
    assert core.messages_to_send() == [(b"client", Deliver(1, "t", b"x", None, None), "sess")]
    core.handle_route(B, PubsubRoute(B, "bad..topic", b"x", True, (), None, None))
    assert not core.messages_to_send() and core.routed_from[B] == 2
