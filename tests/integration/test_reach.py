"""The one reach path (transport/reach.py) on real nodes over loopback: what waits for a
dial, the shared dial, the 'this address is another node now' check and the backoff."""

from __future__ import annotations

import asyncio
import os

from helpers import start_node


async def test_what_waits_for_a_dial_goes_in_order_and_the_queue_is_bounded(tmp_path):
    a = await start_node(tmp_path, "a")
    b = await start_node(tmp_path, "b")
    reached: asyncio.Future = asyncio.get_running_loop().create_future()
    others: list = []
    ch = a.reach.channel("test", lambda s, items: reached.set_result((s, items)))
    other = a.reach.channel("other", lambda s, items: others.append(items))
    try:
        n = a.reach.queue_len
        sent = [ch.send(b.node_id, i, b.listen_address) for i in range(n + 3)]
        assert sent == [True] * n + [False] * 3          # bounded, oldest kept
        assert other.send(b.node_id, "x")                # shares the dial, book has it now
        assert a.reach.stats["dials"] <= 1
        session, items = await asyncio.wait_for(reached, 5)
        assert session.peer.node_id == b.node_id and items == list(range(n))
        assert others == [["x"]]
        assert not ch.dialing(b.node_id)
    finally:
        await b.stop()
        await a.stop()


async def test_an_address_that_belongs_to_another_node_fails_and_backs_off(tmp_path):
    a = await start_node(tmp_path, "a")
    b = await start_node(tmp_path, "b")
    failed: asyncio.Future = asyncio.get_running_loop().create_future()
    ch = a.reach.channel("test", lambda s, items: None,
                         lambda node_id, items: failed.set_result((node_id, items)))
    ghost = os.urandom(32)   # the book says ghost listens where b does
    try:
        assert ch.send(ghost, "hello", b.listen_address)
        node_id, items = await asyncio.wait_for(failed, 5)
        assert (node_id, items) == (ghost, ["hello"])
        assert a.reach.stats["wrong_node"] == 1 and a.reach.book.address(ghost) is None
        assert a.reach.backing_off(ghost)
        assert not ch.send(ghost, "again", b.listen_address)   # refused at once
        assert await a.reach.connect(ghost, 1.0) is None
        # the dial reached the address's real owner: its session serves b at once
        session = await a.reach.connect(b.node_id, 5.0)
        assert session is not None and session.peer.node_id == b.node_id
        assert a.reach.book.address(b.node_id) == b.listen_address
    finally:
        await b.stop()
        await a.stop()


async def test_a_stopped_node_cancels_its_services_background_work(tmp_path):
    a = await start_node(tmp_path, "a")
    started = asyncio.Event()

    async def forever():
        started.set()
        await asyncio.Event().wait()

    task = a.host.spawn(forever())
    await asyncio.wait_for(started.wait(), 2)
    await a.stop()
    assert task.cancelled()
