"""The SDK reconnects (issue 19, point 1): real nodes are killed (SIGKILL: a crash) or
stopped and started again under a running client, which notices within a few seconds
though idle, tells the application, reconnects, subscribes and registers again, sends
what it buffered, and raises ConnectionLost (never SessionRefused) for what cannot wait."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import NodeProcess, addr, node_config, start_node, until
from macula.client import CallError, CallLost, ConnectionLost, connect
from macula.errors import ErrorCode, SessionRefused
from macula.node import Node

AGENT = Path(__file__).resolve().parents[2] / "agent"


class Watch:
    """The client's callbacks, as events a test waits on."""

    def __init__(self) -> None:
        self.lost: list[ConnectionLost] = []
        self.back: list[str] = []
        self.down = asyncio.Event()
        self.up = asyncio.Event()

    def on_disconnect(self, err: ConnectionLost) -> None:
        self.lost.append(err)
        self.up.clear()
        self.down.set()

    def on_reconnect(self, address: str) -> None:
        self.back.append(address)
        self.down.clear()
        self.up.set()

    def options(self) -> dict:
        return {"on_disconnect": self.on_disconnect, "on_reconnect": self.on_reconnect,
                "reconnect_base": 0.05, "reconnect_cap": 0.5}


async def _listening(node: NodeProcess) -> None:
    """`macula run` binds its QUIC port before its control socket: the socket means ready."""
    await until(lambda: (node.runtime_dir / "control.sock").exists() or node.proc.poll() is not None,
                30.0, f"{node.name} listening")
    assert node.proc.poll() is None, f"{node.name} exited {node.proc.returncode}"


async def _restart_in_process(tmp: Path, name: str, port: int, **kw) -> Node:
    node = Node(node_config(tmp / name, name, port=port, **kw))  # same state: same identity
    await node.start()
    return node


async def test_idle_client_survives_a_node_crash_and_restart(tmp_path):
    node = NodeProcess(tmp_path, "crashy")
    restarted = None
    watch = Watch()
    client = other = None
    try:
        await _listening(node)
        client = await connect(node.address, realm="test", **watch.options())
        inbox = client.subscribe("room.>")
        client.register("who", lambda _: b"the client")
        await client.flush()
        await client.publish("room.before", b"1")
        assert (await inbox.next(5)).payload == b"1"

        loop = asyncio.get_running_loop()
        node.kill()  # a crash: no GOAWAY; the client is idle from here
        t0 = loop.time()
        await asyncio.wait_for(watch.down.wait(), 6.0)
        assert loop.time() - t0 < 5.0  # noticed within a few seconds, with nothing sent
        lost = watch.lost[0]
        assert isinstance(lost, ConnectionLost) and not isinstance(lost, SessionRefused)
        assert lost.message.startswith(f"connection to node {node.address} lost: ")
        assert not client.connected

        # while it is down: publishes are buffered, a call that cannot wait fails as lost
        await client.publish("room.during", b"2")
        with pytest.raises(CallLost) as info:
            await client.call("who", timeout=0.2)
        assert isinstance(info.value, ConnectionLost) and isinstance(info.value, CallError)
        assert "not back within 0.2 s" in info.value.message

        restarted = NodeProcess(tmp_path, "crashy", port=node.port)
        await asyncio.wait_for(watch.up.wait(), 30.0)
        assert watch.back == [node.address] and client.connected
        # the buffered publish went out after the subscription was made again
        assert (await inbox.next(5)).payload == b"2"
        await client.publish("room.after", b"3")
        assert (await inbox.next(5)).payload == b"3"
        # the procedure was registered again: another client reaches it through the node
        other = await connect(node.address, realm="test", reconnect=False)
        assert await other.call("who", timeout=5) == b"the client"
        assert (client.disconnects, client.reconnects) == (1, 1)
    finally:
        for c in (client, other):
            if c is not None:
                await c.close()
        node.kill()
        if restarted is not None:
            restarted.kill()


async def test_graceful_stop_then_start_restores_subscriptions_in_order(tmp_path):
    node = await start_node(tmp_path, "n")
    port = node.listen_address[1]
    watch = Watch()
    client = await connect(addr(node), realm="test", **watch.options())
    try:
        inbox = client.subscribe("seq.>")
        await client.flush()
        await node.stop()  # GOAWAY: the client hears at once
        await asyncio.wait_for(watch.down.wait(), 5.0)
        assert watch.lost[0].code is ErrorCode.GOING_AWAY
        for i in range(200):  # buffered, in order
            await client.publish(f"seq.{i}", str(i))
        node = await _restart_in_process(tmp_path, "n", port)
        await asyncio.wait_for(watch.up.wait(), 10.0)
        for i in range(200, 220):  # made while the buffer may still be draining: behind it
            await client.publish(f"seq.{i}", str(i))
        got = [(await inbox.next(5)).payload for _ in range(220)]
        assert got == [str(i).encode() for i in range(220)]
        await client.flush()
        assert inbox.pending() == 0  # each once: no duplicate subscription on the node
    finally:
        await client.close()
        await node.stop()


async def test_the_publish_buffer_is_bounded_and_then_raises_connection_lost(tmp_path):
    node = await start_node(tmp_path, "n")
    watch = Watch()
    client = await connect(addr(node), realm="test", publish_buffer_bytes=2000,
                           **watch.options())
    try:
        await node.stop()
        await asyncio.wait_for(watch.down.wait(), 5.0)
        sent = 0
        with pytest.raises(ConnectionLost) as info:
            for _ in range(100):  # bounded: the buffer holds far fewer
                await client.publish("t.x", b"x" * 100)
                sent += 1
        assert sent == 2000 // (3 + 100 + 64)  # topic + payload + per-message overhead
        assert "publish buffer of 2000 bytes is full" in info.value.message
        assert not isinstance(info.value, SessionRefused)
    finally:
        await client.close()


async def test_the_client_moves_to_its_next_address_when_its_node_goes(tmp_path):
    a = await start_node(tmp_path, "a")
    b = await start_node(tmp_path, "b", seeds=(addr(a),))
    watch = Watch()
    client = await connect([addr(a), addr(b)], realm="test", **watch.options())
    publisher = None
    try:
        assert client.node_name == "a"
        inbox = client.subscribe("move.>")
        await client.flush()
        await a.stop()
        await asyncio.wait_for(watch.up.wait(), 10.0)
        assert watch.back == [addr(b)] and client.node_name == "b"
        publisher = await connect(addr(b), realm="test", reconnect=False)
        await client.flush()  # the subscription is on b now
        await publisher.publish("move.here", b"on b")
        assert (await inbox.next(5)).payload == b"on b"
    finally:
        for c in (client, publisher):
            if c is not None:
                await c.close()
        await b.stop()


async def test_a_call_in_flight_when_the_link_goes_fails_as_lost(tmp_path):
    node = await start_node(tmp_path, "n")
    release = asyncio.Event()
    provider = await connect(addr(node), realm="test", reconnect=False)
    caller = await connect(addr(node), realm="test", reconnect_base=0.05)

    async def hold(_args: bytes) -> bytes:
        await release.wait()
        return b"late"

    try:
        provider.register("hold", hold)
        await provider.flush()
        call = asyncio.ensure_future(caller.call("hold", timeout=10.0))
        await until(lambda: node.rpc.table.calls_to(provider._pool.node_id) or call.done(),
                    5.0, "the call reached the provider")
        await node.stop()
        with pytest.raises(CallLost) as info:
            await asyncio.wait_for(call, 5.0)
        assert "may or may not have run" in info.value.message
    finally:
        release.set()
        await provider.close()
        await caller.close()


async def test_without_reconnect_or_after_the_last_attempt_the_client_is_closed(tmp_path):
    node = await start_node(tmp_path, "n")
    once = await connect(addr(node), realm="test", reconnect=False)
    bounded = await connect(addr(node), realm="test", max_reconnect_attempts=2,
                            reconnect_base=0.05, reconnect_cap=0.1, timeout=0.5)
    try:
        subs = [once.subscribe("x"), bounded.subscribe("x")]
        await once.flush()
        await bounded.flush()
        await node.stop()
        await asyncio.wait_for(once.closed.wait(), 5.0)
        await asyncio.wait_for(bounded.closed.wait(), 10.0)  # two dials, then it gives up
        for c, sub in zip((once, bounded), subs):
            with pytest.raises(StopAsyncIteration):
                await sub.next(1.0)  # the subscription ended
            with pytest.raises(ConnectionLost):
                await c.publish("x", b"nobody")
        assert bounded.disconnects == 1 and bounded.reconnects == 0
    finally:
        await once.close()
        await bounded.close()


async def test_macula_sub_says_disconnected_and_reconnected(tmp_path):
    node = await start_node(tmp_path, "n")
    port = node.listen_address[1]
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(AGENT), "HOME": str(tmp_path)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "macula", "sub", "live.>", "--node", addr(node), "--realm",
        "test", "--timeout", "60", env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    async def line(ready: str) -> str:
        while True:
            text = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
            assert text, f"macula sub ended before {ready!r}"
            if ready in text:
                return text.strip()

    publisher = None
    try:
        await line("subscribed to live.>")
        await node.stop()
        said = await line("disconnected")
        assert said.startswith(f"disconnected: connection to node {addr(node)} lost: ")
        assert said.endswith("; reconnecting")
        node = await _restart_in_process(tmp_path, "n", port)
        assert await line("reconnected") == f"reconnected to {addr(node)}"
        publisher = await connect(addr(node), realm="test", reconnect=False)
        await publisher.publish("live.x", b"after")  # the sub resubscribed before it said so
        out = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
        assert out == "live.x after\n"
    finally:
        if publisher is not None:
            await publisher.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await node.stop()


async def test_reconnecting_to_a_node_that_missed_the_loss_replaces_the_old_session(tmp_path):
    """The client lost its link but the node did not notice (a one-sided loss): its
    reconnection replaces the old session on the node, whose subscriptions and procedures
    go with it, so the ones the client makes again are not refused as duplicates."""
    node = await start_node(tmp_path, "n")
    watch = Watch()
    client = await connect(addr(node), realm="test", **watch.options())
    other = await connect(addr(node), realm="test", reconnect=False)
    try:
        inbox = client.subscribe("one.>")
        client.register("one.proc", lambda _: b"served")
        await client.flush()
        old = node.pool.get(client._pool.node_id)
        client.session._on_link_closed(0, "cut on this side only")  # nothing reaches the node
        await asyncio.wait_for(watch.up.wait(), 10.0)
        await client.flush()
        assert node.pool.get(client._pool.node_id) is not old
        assert not inbox.closed  # its SUBSCRIBE was not refused as "id already in use"
        await other.publish("one.x", b"once")
        assert (await inbox.next(5)).payload == b"once"
        await other.flush()
        await client.flush()
        assert inbox.pending() == 0  # delivered once: the old subscription is gone
        assert await other.call("one.proc", timeout=5) == b"served"
        assert list(node.rpc.local.providers("one.proc")) == [client._pool.node_id]
    finally:
        await client.close()
        await other.close()
        await node.stop()
