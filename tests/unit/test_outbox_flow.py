"""Outbox back-pressure (transport/outbox.py): congestion above a quarter of the bound
holds the feeding session, draining to an eighth releases it, a hold ends after
max_hold (then drop-oldest), and a peer node can pause the outbox itself."""

from __future__ import annotations

import asyncio

from macula.transport.outbox import ByteBudget, FlowGate, Outbox
from macula.transport.session import State
from macula.wire.messages import PubsubFlow


class FakeSession:
    """A session whose send buffer takes ``room`` bytes until ``free()`` is called."""

    def __init__(self, room: int = 0) -> None:
        self.state = State.ESTABLISHED
        self.room = room
        self.sent: list[bytes] = []
        self.control: list = []
        self._drained = asyncio.Event()

    def send_frame(self, frame: bytes) -> bool:
        if self.state is not State.ESTABLISHED or len(frame) > self.room:
            return False
        self.room -= len(frame)
        self.sent.append(frame)
        return True

    def too_large(self, size: int) -> bool:
        return False

    async def drain(self, need: int = 0) -> None:
        self._drained.clear()
        await self._drained.wait()

    def free(self, room: int) -> None:
        self.room += room
        self._drained.set()

    def send_control(self, msg) -> None:
        self.control.append(msg)

    def __hash__(self) -> int:
        return id(self)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def frames(n: int, size: int = 100) -> list[bytes]:
    return [i.to_bytes(4, "big") + b"x" * (size - 4) for i in range(n)]


async def test_congestion_holds_the_feeder_and_draining_releases_it():
    gate = FlowGate(PubsubFlow, max_hold=5.0)
    sub, pub = FakeSession(room=0), FakeSession()
    box = Outbox(sub, 8000, ByteBudget(1 << 20), gate)      # high 2000 B, low 1000 B
    results = [box.put(f) for f in frames(30)]
    assert results[:20] == [True] * 20 and results[20:] == [False] * 10  # > 2000 B queued
    box.hold(pub)
    box.hold(pub)                                            # once per outbox
    assert pub.control == [PubsubFlow(True, 5000)] and gate.held(pub)
    sub.free(1500)                                           # 15 frames go: 1500 B left
    await settle()
    assert gate.held(pub)                                    # still above low
    sub.free(600)
    await settle()
    assert pub.control[-1] == PubsubFlow(False, 0) and not gate.held(pub)
    sub.free(10_000)
    await settle()
    assert [f[:4] for f in sub.sent] == [i.to_bytes(4, "big") for i in range(30)]
    assert box.dropped == 0 and box.queued_bytes == 0


async def test_two_congested_outboxes_release_the_feeder_when_both_drained():
    gate = FlowGate(PubsubFlow, max_hold=5.0)
    pub = FakeSession()
    subs = [FakeSession(0), FakeSession(0)]
    boxes = [Outbox(s, 4000, ByteBudget(1 << 20), gate) for s in subs]
    for box in boxes:
        for f in frames(20):
            if not box.put(f):
                box.hold(pub)
    assert pub.control == [PubsubFlow(True, 5000)]           # one pause for both
    subs[0].free(1 << 20)
    await settle()
    assert gate.held(pub) and len(pub.control) == 1
    subs[1].free(1 << 20)
    await settle()
    assert pub.control[-1] == PubsubFlow(False, 0) and not gate.held(pub)


async def test_a_stuck_subscriber_holds_once_then_drops_oldest():
    gate = FlowGate(PubsubFlow, max_hold=0.05)
    sub, pub = FakeSession(room=0), FakeSession()
    budget = ByteBudget(1 << 20)
    box = Outbox(sub, 4000, budget, gate)
    for f in frames(20):
        if not box.put(f):
            box.hold(pub)
    assert gate.held(pub)
    loop = asyncio.get_running_loop()
    released = loop.create_future()
    gate_release = gate.release
    gate.release = lambda s: (gate_release(s), released.done() or released.set_result(None))
    await asyncio.wait_for(released, 2.0)                    # max_hold passed
    assert not gate.held(pub) and pub.control[-1] == PubsubFlow(False, 0)
    for f in frames(100):                                    # no new hold: drop oldest
        if not box.put(f):
            box.hold(pub)
    assert not gate.held(pub)
    assert box.queued_bytes <= 4000 and budget.used == box.queued_bytes and box.dropped > 0
    sub.free(1 << 20)                                        # drained: holds again later
    await settle()
    for f in frames(50):
        if not box.put(f):
            box.hold(pub)
    assert not gate.held(pub)                                # room again: nothing to hold


async def test_peer_pause_queues_counts_as_congestion_and_resumes():
    gate = FlowGate(PubsubFlow, max_hold=5.0)
    link, pub = FakeSession(room=1 << 20), FakeSession()
    box = Outbox(link, 8000, ByteBudget(1 << 20), gate)
    box.pause(5.0)
    assert box.paused
    assert box.put(b"a" * 100) is False                     # queued, and congested
    box.hold(pub)
    assert link.sent == [] and gate.held(pub)
    box.resume()
    await settle()
    assert link.sent == [b"a" * 100] and not gate.held(pub) and not box.paused


async def test_peer_pause_ends_by_itself():
    link = FakeSession(room=1 << 20)
    box = Outbox(link, 8000, ByteBudget(1 << 20), FlowGate(PubsubFlow, 5.0))
    box.pause(0.02)
    box.put(b"b" * 10)
    assert link.sent == []
    for _ in range(200):
        if link.sent:
            break
        await asyncio.sleep(0.01)
    assert link.sent == [b"b" * 10] and not box.paused


async def test_closing_releases_holds_and_forgotten_sessions_get_nothing():
    gate = FlowGate(PubsubFlow, max_hold=5.0)
    sub, pub, gone = FakeSession(0), FakeSession(), FakeSession()
    box = Outbox(sub, 4000, ByteBudget(1 << 20), gate)
    for f in frames(20):
        if not box.put(f):
            box.hold(pub)
            box.hold(gone)
    gate.forget(gone)
    sub.state = State.CLOSED
    box.close()
    assert pub.control[-1] == PubsubFlow(False, 0) and gone.control == [PubsubFlow(True, 5000)]
    assert len(gate) == 0 and box.budget.used == 0


async def test_a_peer_paused_outbox_renews_its_holds_instead_of_giving_up():
    gate = FlowGate(PubsubFlow, max_hold=0.04)
    link, pub = FakeSession(room=1 << 20), FakeSession()
    box = Outbox(link, 8000, ByteBudget(1 << 20), gate)
    box.pause(5.0)
    box.put(b"c" * 100)
    box.hold(pub)
    for _ in range(200):
        if len(pub.control) >= 3:
            break
        await asyncio.sleep(0.01)
    assert pub.control[:3] == [PubsubFlow(True, 40)] * 3 and gate.held(pub)  # renewed
    box.resume()
    await settle()
    assert pub.control[-1] == PubsubFlow(False, 0) and link.sent == [b"c" * 100]


async def test_publish_hold_zero_turns_back_pressure_off():
    gate = FlowGate(PubsubFlow, max_hold=0.0)
    sub, pub = FakeSession(room=0), FakeSession()
    box = Outbox(sub, 4000, ByteBudget(1 << 20), gate)
    for f in frames(100):
        if not box.put(f):
            box.hold(pub)
    gate.acquire(pub)
    assert pub.control == [] and len(gate) == 0 and box.dropped == 60
