"""In-process subscribers, publishers (pubsub/local.py) and callers on a real node: the sinks and
sources the HTTP gateway and deployed apps will use, held by back-pressure like sessions."""

from __future__ import annotations

import asyncio

import pytest

from helpers import addr, start_node, until
from macula.client import connect
from macula.errors import Overloaded
from macula.pubsub.topics import TopicError


@pytest.fixture
async def node(tmp_path):
    n = await start_node(tmp_path, "gw", publish_hold=2.0,
                         limits={"subscriber_queue_bytes": 64 << 10})
    yield n
    await n.stop()


async def test_in_process_subscriber_sees_client_and_local_publishes(node):
    sub = node.pubsub.subscribe_local("home.>")
    pub = node.pubsub.publisher()
    async with await connect(addr(node), realm="test") as c:
        await c.publish("home.kitchen.temp", b"21.5")
        msg = await sub.next(2)
        assert (msg.topic, msg.payload) == ("home.kitchen.temp", b"21.5")
        client_sub = c.subscribe("home.*")
        await c.flush()
        await pub.publish("home.door", b"open")
        assert (await sub.next(2)).payload == b"open"
        assert (await client_sub.next(2)).payload == b"open"
    sub.close()
    await pub.publish("home.door", b"closed")
    with pytest.raises(EOFError):
        await sub.next(0.1)
    assert node.pubsub.router.subscription_count() == 0


async def test_unread_in_process_subscriber_holds_an_in_process_publisher(node):
    sub = node.pubsub.subscribe_local("flood")
    pub = node.pubsub.publisher()
    payload = b"x" * 1024
    await pub.publish("flood", payload)  # the topic's (empty) remote interest is known
    await until(lambda: node.pubsub.core.waiting("flood") is None, what="lookup done")
    assert sub.get_nowait().payload == payload and not pub.paused
    sent = 0
    while not pub.paused and sent < 1000:  # a quarter of 64 KiB: about 16 messages
        await pub.publish("flood", payload)
        sent += 1
    assert pub.paused and 10 <= sent <= 20 and sub.dropped == 0
    assert len(node.pubsub.gate) == 1
    # the reader catches up: below an eighth the publisher is released
    for _ in range(sent - 4):
        assert sub.get_nowait().payload == payload
    assert not pub.paused and len(node.pubsub.gate) == 0
    pub.close()


async def test_stuck_in_process_subscriber_holds_once_then_drops_its_oldest(tmp_path):
    node = await start_node(tmp_path, "gw", publish_hold=0.2,
                            limits={"subscriber_queue_bytes": 64 << 10})
    try:
        sub = node.pubsub.subscribe_local("flood")
        pub = node.pubsub.publisher()
        loop = asyncio.get_running_loop()
        await pub.publish("flood", b"")
        await until(lambda: node.pubsub.core.waiting("flood") is None, what="lookup done")
        t0 = loop.time()
        for i in range(500):  # 500 KiB into a 64 KiB subscriber that never reads
            await pub.publish("flood", i.to_bytes(4, "big") * 256)
        assert loop.time() - t0 < 2 and pub.pauses == 1   # held once, for publish_hold
        assert sub.queued_bytes <= 64 << 10 and sub.dropped > 0
        newest = [sub.get_nowait() for _ in range(len(sub))][-1]
        assert newest.payload[:4] == (499).to_bytes(4, "big")  # oldest dropped, not newest
    finally:
        await node.stop()


async def test_bad_pattern_and_bounds_are_refused(node):
    with pytest.raises(TopicError):
        node.pubsub.subscribe_local("bad..pattern")
    pub = node.pubsub.publisher()
    with pytest.raises(TopicError):
        await pub.publish("bad.>.topic", b"")
    node.pubsub.router.max_subscriptions = 1
    node.pubsub.subscribe_local("a")
    with pytest.raises(Overloaded):
        node.pubsub.subscribe_local("b")


async def test_in_process_call_reaches_a_client_provider_and_gets_its_errors(node):
    from macula.errors import ErrorCode, MaculaError
    async with await connect(addr(node), realm="test") as c:
        c.register("math.double", lambda args: str(2 * int(args)).encode())
        await c.flush()
        assert await node.rpc.call("math.double", b"21", timeout=2) == b"42"
        with pytest.raises(MaculaError) as err:
            await node.rpc.call("nobody.serves", b"", timeout=2)
        assert err.value.code is ErrorCode.NO_RESPONDERS
