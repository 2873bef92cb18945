"""End-to-end back-pressure on real QUIC: a subscriber that stops reading for a while
holds the publisher back (PUBSUB_FLOW), on one node and across two, and nothing is
lost; the node's queues stay inside their bounds meanwhile."""

from __future__ import annotations

import asyncio

from helpers import addr, start_node, until
from macula.client import connect

QUEUE = 1 << 20     # per-subscriber queue: publishers held past 256 KiB
N = 4000            # 4 MB of 1 KiB messages: four times the queue


def stop_reading(client) -> tuple:
    endpoint = client._pool.endpoint
    fd = endpoint._sock.fileno()
    endpoint.loop.remove_reader(fd)
    return endpoint, fd


def start_reading(endpoint, fd) -> None:
    endpoint.loop.add_reader(fd, endpoint._on_readable)


async def publish_all(pub, topic: str) -> None:
    for i in range(N):
        await pub.publish(topic, i.to_bytes(4, "big") + b"x" * 1020)
    await pub.flush(30)


async def check_all_in_order(sub) -> None:
    for i in range(N):
        msg = await sub.next(20)
        assert int.from_bytes(msg.payload[:4], "big") == i


async def test_a_paused_subscriber_holds_the_publisher_and_loses_nothing(tmp_path):
    node = await start_node(tmp_path, "gw", publish_hold=30.0,
                            limits={"subscriber_queue_bytes": QUEUE, "send_buffer_bytes": 64 << 10})
    try:
        pub = await connect(addr(node), realm="test")
        slow = await connect(addr(node), realm="test")
        sub = slow.subscribe("flow.one", queue=N)
        await slow.flush()
        reading = stop_reading(slow)
        publishing = asyncio.ensure_future(publish_all(pub, "flow.one"))
        boxes = node.pubsub._outboxes
        await until(lambda: slow._pool.node_id in boxes and boxes[slow._pool.node_id].holds
                    and not pub._may_publish.is_set(), 10, "the publisher held by the queue")
        outbox = boxes[slow._pool.node_id]
        assert QUEUE // 4 < outbox.queued_bytes <= QUEUE
        assert not publishing.done()                 # the publisher waits
        start_reading(*reading)
        await check_all_in_order(sub)
        await asyncio.wait_for(publishing, 30)
        assert outbox.dropped == 0 and node.pubsub.status()["dropped"] == 0
        assert sub.dropped == 0 and len(node.pubsub.gate) == 0
        await pub.close()
        await slow.close()
    finally:
        await node.stop()


async def test_back_pressure_travels_back_across_two_nodes(tmp_path):
    limits = {"subscriber_queue_bytes": QUEUE, "send_buffer_bytes": 64 << 10}
    a = await start_node(tmp_path, "a", publish_hold=30.0, limits=limits)
    b = await start_node(tmp_path, "b", publish_hold=30.0, limits=limits, seeds=(addr(a),))
    try:
        await until(lambda: a.dht.core.stats()["contacts"] >= 1 and
                    b.dht.core.stats()["contacts"] >= 1, 10, "DHT")
        slow = await connect(addr(b), realm="test")
        sub = slow.subscribe("flow.two", queue=N)
        await slow.flush()
        pub = await connect(addr(a), realm="test")
        # the route exists before the flood (a's DHT lookup found b's subscription)
        for _ in range(100):
            await pub.publish("flow.two", b"warm")
            await pub.flush()
            try:
                await sub.next(0.2)
                break
            except asyncio.TimeoutError:
                continue
        sub.drain()
        reading = stop_reading(slow)
        publishing = asyncio.ensure_future(publish_all(pub, "flow.two"))
        toward_b = None

        def paused() -> bool:
            nonlocal toward_b
            toward_b = a.pubsub._outboxes.get(b.node_id)
            return toward_b is not None and toward_b.paused and pub.held >= 1

        await until(paused, 10, "a's queue toward b paused by b, and the publisher held")
        assert not publishing.done()
        assert toward_b.queued_bytes <= QUEUE
        start_reading(*reading)
        await check_all_in_order(sub)
        await asyncio.wait_for(publishing, 30)
        assert a.pubsub.status()["dropped"] == 0 and b.pubsub.status()["dropped"] == 0
        assert sub.dropped == 0
        await pub.close()
        await slow.close()
    finally:
        await b.stop()
        await a.stop()
