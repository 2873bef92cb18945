"""Light clients attached to one node, their home node: pub/sub and RPC through it, on real QUIC."""

from __future__ import annotations

import asyncio

import pytest

from helpers import addr, start_node, until
from macula.client import CallError, connect
from macula.errors import ErrorCode


@pytest.fixture
async def node(tmp_path):
    n = await start_node(tmp_path, "gw")
    yield n
    await n.stop()


async def test_publish_reaches_matching_subscribers_only(node):
    async with await connect(addr(node), realm="test") as a, \
            await connect(addr(node), realm="test") as b:
        exact, star, rest, other = (a.subscribe("home.kitchen.temp"), a.subscribe("home.*.temp"),
                                    b.subscribe("home.>"), b.subscribe("garden.>"))
        await a.flush()
        await b.flush()
        await a.publish("home.kitchen.temp", b"21.5")
        for sub in (exact, star, rest):
            msg = await sub.next(2)
            assert (msg.topic, msg.payload) == ("home.kitchen.temp", b"21.5")
        await a.publish("home.kitchen.humidity", b"40")
        assert (await rest.next(2)).payload == b"40"
        await a.flush()
        assert exact.pending() == star.pending() == other.pending() == 0


async def test_queue_group_gets_each_message_once(node):
    clients = [await connect(addr(node), realm="test") for _ in range(3)]
    try:
        workers = [c.subscribe("jobs.>", group="workers") for c in clients]
        watcher = clients[0].subscribe("jobs.>")
        for c in clients:
            await c.flush()
        for i in range(60):
            await clients[1].publish("jobs.new", str(i).encode())
        got = [await watcher.next(2) for _ in range(60)]
        assert [m.payload for m in got] == [str(i).encode() for i in range(60)]  # in order
        await until(lambda: sum(w.pending() for w in workers) == 60, what="60 group deliveries")
        counts = [w.pending() for w in workers]
        assert sum(counts) == 60 and all(c > 0 for c in counts), counts  # spread, once each
    finally:
        for c in clients:
            await c.close()


async def test_unsubscribe_stops_delivery_and_client_exit_cleans_up(node):
    async with await connect(addr(node), realm="test") as pub:
        sub_client = await connect(addr(node), realm="test")
        s1 = sub_client.subscribe("x.y")
        s2 = sub_client.subscribe("x.*")
        await sub_client.flush()
        assert node.pubsub.router.subscription_count() == 2
        await s1.unsubscribe()
        await sub_client.flush()
        await pub.publish("x.y", b"1")
        assert (await s2.next(2)).payload == b"1"
        assert s1.pending() == 0 and node.pubsub.router.subscription_count() == 1
        await sub_client.close()
        await until(lambda: node.pubsub.router.subscription_count() == 0, what="cleanup")


async def test_bad_pattern_is_refused_without_harm(node):
    async with await connect(addr(node), realm="test") as c:
        sub = c.subscribe("ok.>")
        # bypass the SDK's own check to see the node's answer
        from macula.wire.messages import Subscribe
        c.session.send(Subscribe(999, "bad..pattern"))
        await c.flush()
        assert node.pubsub.router.subscription_count() == 1
        await c.publish("ok.1", b"fine")
        assert (await sub.next(2)).payload == b"fine"


async def test_slow_subscriber_is_bounded_and_does_not_stall_others(tmp_path):
    # a stuck subscriber holds the publisher once (publish_hold), then drops its oldest
    node = await start_node(tmp_path, "gw", publish_hold=0.3,
                            limits={"subscriber_queue_bytes": 64 << 10,
                                    "send_buffer_bytes": 64 << 10})
    try:
        pub = await connect(addr(node), realm="test")
        fast = await connect(addr(node), realm="test")
        slow = await connect(addr(node), realm="test")
        slow_sub = slow.subscribe("flood", queue=16)
        fast_sub = fast.subscribe("flood", queue=100_000)
        await slow.flush()
        await fast.flush()
        # the slow client stops reading its socket altogether
        node_session = node.pool.get(slow._pool.node_id)
        slow._pool.endpoint.loop.remove_reader(slow._pool.endpoint._sock.fileno())
        payload = b"x" * 1024
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for batch in range(100):  # 5 MB in batches a healthy subscriber keeps up with
            for i in range(50):
                await pub.publish("flood", payload)
            await pub.flush()
        outbox = node.pubsub._outboxes[slow._pool.node_id]
        assert pub.held >= 1 and outbox.holds == 1    # held once, for publish_hold only
        assert loop.time() - t0 < 10 and len(node.pubsub.gate) == 0
        await until(lambda: fast_sub.pending() == 5000, timeout=20, what="fast got everything")
        outbox = node.pubsub._outboxes[slow._pool.node_id]
        assert outbox.queued_bytes <= 64 << 10        # the node's queue stayed at its bound
        assert node.pubsub.budget.used == outbox.queued_bytes  # and is accounted node-wide
        assert node_session.link.buffered <= (64 << 10) + 2048
        assert outbox.dropped > 0                     # oldest dropped and counted
        await pub.close()
        await fast.close()
        await slow.close()
    finally:
        await node.stop()


async def test_rpc_call_reply_error_and_no_responders(node):
    async with await connect(addr(node), realm="test") as server, \
            await connect(addr(node), realm="test") as caller:
        server.register("math.double", lambda a: str(2 * int(a)).encode())

        async def boom(_):
            raise ValueError("bad input")

        server.register("math.boom", boom)
        await server.flush()
        assert await caller.call("math.double", b"21") == b"42"
        with pytest.raises(CallError) as info:
            await caller.call("math.boom", b"")
        assert info.value.code is ErrorCode.HANDLER_ERROR and "bad input" in info.value.message
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(CallError) as info:
            await caller.call("math.missing", b"", timeout=5)
        assert info.value.code is ErrorCode.NO_RESPONDERS
        assert loop.time() - t0 < 1.0  # at once, not after the timeout


async def test_rpc_timeout_and_late_reply_dropped(node):
    async with await connect(addr(node), realm="test") as server, \
            await connect(addr(node), realm="test") as caller:
        release = asyncio.Event()

        async def slow(args):
            await release.wait()
            return b"late"

        server.register("slow", slow)
        await server.flush()
        with pytest.raises(CallError) as info:
            await caller.call("slow", b"", timeout=0.2)
        assert info.value.code is ErrorCode.CALL_TIMEOUT
        release.set()
        await server.flush()
        assert len(node.rpc.table) == 0 and node.rpc.stats["timeouts"] == 1
        assert await caller.call("slow", b"", timeout=2) == b"late"


async def test_rpc_spreads_calls_and_fails_over_idempotent_calls(node):
    servers = [await connect(addr(node), realm="test") for _ in range(3)]
    served = {i: 0 for i in range(3)}
    gate = asyncio.Event()

    def make(i):
        async def handler(args):
            served[i] += 1
            if args == b"hold":
                await gate.wait()
            return str(i).encode()
        return handler

    for i, s in enumerate(servers):
        s.register("work", make(i))
        await s.flush()
    async with await connect(addr(node), realm="test") as caller:
        await asyncio.gather(*(caller.call("work", b"") for _ in range(90)))
        assert all(n > 10 for n in served.values()), served  # spread over all three
        # a provider dies holding an idempotent call: another provider answers it
        held = asyncio.ensure_future(caller.call("work", b"hold", idempotent=True, timeout=5))
        await until(lambda: len(node.rpc.table) == 1, what="call in flight")
        holder = next(i for i, s in enumerate(servers)
                      if node.rpc.table.outstanding.get(s._pool.node_id))
        await servers[holder].close()
        gate.set()
        assert int(await held) != holder
        # a non-idempotent call in flight on a dying provider fails clearly
        gate.clear()
        plain = asyncio.ensure_future(caller.call("work", b"hold", timeout=5))
        await until(lambda: len(node.rpc.table) == 1, what="call in flight")
        holder2 = next(i for i, s in enumerate(servers)
                       if node.rpc.table.outstanding.get(s._pool.node_id))
        await servers[holder2].close()
        with pytest.raises(CallError) as info:
            await plain
        assert info.value.code is ErrorCode.NO_RESPONDERS and "went away" in info.value.message
        gate.set()
    for s in servers:
        await s.close()


async def test_rpc_overload_is_refused_at_once(tmp_path):
    node = await start_node(tmp_path, "gw", limits={"max_pending_calls": 4})
    try:
        async with await connect(addr(node), realm="test") as server, \
                await connect(addr(node), realm="test") as caller:
            gate = asyncio.Event()

            async def hold(_):
                await gate.wait()
                return b"ok"

            server.register("hold", hold)
            await server.flush()
            held = [asyncio.ensure_future(caller.call("hold", timeout=5)) for _ in range(4)]
            await until(lambda: len(node.rpc.table) == 4, what="4 in flight")
            with pytest.raises(CallError) as info:
                await caller.call("hold", timeout=5)
            assert info.value.code is ErrorCode.CALL_OVERLOADED
            gate.set()
            assert await asyncio.gather(*held) == [b"ok"] * 4
    finally:
        await node.stop()
