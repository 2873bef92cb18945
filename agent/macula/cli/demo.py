"""`macula demo`: N real nodes on loopback QUIC joined through a seed, the live mesh
printed, and light clients on different nodes exchanging pub/sub messages and RPCs
across it (routed through the DHT, as on a real street mesh)."""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from macula.client import CallError, Client, connect
from macula.config import load_config, replace
from macula.host import PeerEvent, PeerUp
from macula.node import Node

ROOMS = ("kitchen", "garage", "attic")


def _row(node: Node) -> str:
    st = node.status()
    peers = ", ".join(f"{p['name']}({p['rtt_ms']:.2f}ms)" if p["rtt_ms"] is not None
                      else p["name"] for p in sorted(st["peers"], key=lambda p: p["name"])
                      if p["role"] == "node")
    clients = sum(1 for p in st["peers"] if p["role"] == "client")
    dht = st["dht"]
    return (f"  {st['name']:<8} {st['node_id'][:12]}  {st['listen']:<21} dht {dht['contacts']:>2} "
            f"contacts {dht['records']:>2} records  clients {clients}  peers: {peers}")


class Traffic:
    """A sensor publishing on one node, a dashboard subscribed on another, a calculator
    serving RPC on a third and a caller on a fourth."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.published = self.received = self.calls_ok = self.calls_failed = 0
        self.latencies: list[float] = []
        self.tasks: list[asyncio.Task] = []
        self.clients: list[Client] = []

    def log(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.2f}s] {text}")

    async def start(self, nodes: list[Node], realm: str) -> None:
        pick = lambda i: nodes[i % len(nodes)]  # noqa: E731 - spread clients over the nodes
        addr = lambda n: f"127.0.0.1:{n.listen_address[1]}"  # noqa: E731
        sensor_node, dash_node, calc_node, caller_node = pick(1), pick(-1), pick(2), pick(3)
        sensor = await connect(addr(sensor_node), realm=realm, name="sensor")
        dashboard = await connect(addr(dash_node), realm=realm, name="dashboard")
        calculator = await connect(addr(calc_node), realm=realm, name="calculator")
        caller = await connect(addr(caller_node), realm=realm, name="caller")
        self.clients = [sensor, dashboard, calculator, caller]
        calculator.register("demo.add", lambda args: str(sum(map(int, args.split()))).encode())
        sub = dashboard.subscribe("demo.sensors.>")
        await dashboard.flush()
        await calculator.flush()
        await self._until_gossiped(sensor_node, dash_node, caller_node, calc_node)
        self.log(f"sensor on {sensor_node.name} publishes demo.sensors.<room>.temp; dashboard on "
                 f"{dash_node.name} subscribes demo.sensors.>; calculator on {calc_node.name} "
                 f"serves demo.add; caller on {caller_node.name} calls it")
        self.tasks = [asyncio.ensure_future(x) for x in (
            self._publish(sensor), self._watch(sub, dash_node.name), self._call(caller))]

    async def _until_gossiped(self, sensor_node: Node, dash_node: Node, caller_node: Node,
                              calc_node: Node) -> None:
        """Inside one cluster the subscription and the provider spread by gossip: wait
        (bounded) until the publishing and calling nodes know them, and say how long."""
        def same(a: Node, b: Node) -> bool:
            return a is not b and a.cfg.cluster.name == b.cfg.cluster.name

        def known() -> bool:
            return ((not same(sensor_node, dash_node)
                     or dash_node.node_id in sensor_node.cluster.remote_subscriptions())
                    and (not same(caller_node, calc_node)
                         or calc_node.node_id in caller_node.cluster.providers("demo.add")))

        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while not known() and loop.time() - t0 < 3.0:
            await asyncio.sleep(0.01)
        if known():
            self.log(f"subscription and provider known across the cluster after "
                     f"{(loop.time() - t0) * 1000:.0f} ms of gossip")

    async def _publish(self, sensor: Client) -> None:
        i = 0
        while True:
            room = ROOMS[i % len(ROOMS)]
            await sensor.publish(f"demo.sensors.{room}.temp", f"{20 + i % 7}.{i % 10}")
            self.published += 1
            i += 1
            await asyncio.sleep(0.25)

    async def _watch(self, sub, where: str) -> None:
        async for msg in sub:
            self.received += 1
            if self.received <= 3 or self.received % 10 == 0:
                self.log(f"dashboard on {where} got {msg.topic} = {msg.payload.decode()} "
                         f"({self.received} so far)")

    async def _call(self, caller: Client) -> None:
        i = 0
        while True:
            t0 = time.perf_counter()
            try:
                result = await caller.call("demo.add", f"{i} {i * 2}", timeout=2.0)
                ms = (time.perf_counter() - t0) * 1000
                self.calls_ok += 1
                self.latencies.append(ms)
                if self.calls_ok <= 3 or self.calls_ok % 10 == 0:
                    self.log(f"caller: demo.add({i}, {i * 2}) = {result.decode()} in {ms:.2f} ms")
            except CallError as exc:
                self.calls_failed += 1
                if self.calls_failed <= 2:
                    self.log(f"caller: demo.add failed: {exc.code.name} (the provider is still "
                             f"being discovered)")
            i += 1
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        for c in self.clients:
            await c.close()


async def run_demo(nodes: int, duration: float, realm: str = "demo") -> int:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="macula-demo-") as tmp:
        base = load_config(system_file=False, env={})

        def make(i: int, seeds: tuple[str, ...]) -> Node:
            cfg = replace(base, node={"name": f"node-{i}", "realm": realm,
                                      "state_dir": str(Path(tmp) / f"node-{i}")},
                          network={"listen_host": "127.0.0.1", "listen_port": 0, "seeds": seeds},
                          timeouts={"keepalive": 1.0, "shutdown": 1.0},
                          # homes of up to 10 nodes: state by gossip inside, the DHT between
                          cluster={"name": f"home-{i // 10}"})
            return Node(cfg, control=False)

        traffic = Traffic(started)

        def show(event: PeerEvent) -> None:
            peer = event.session.peer
            if peer.role == "node":
                traffic.log(f"{peer.name} {'joined' if type(event) is PeerUp else 'left'} the seed")

        seed = make(0, ())
        await seed.start()
        seed.operations.watch_peers(show)
        seed_addr = f"127.0.0.1:{seed.listen_address[1]}"
        print(f"seed node-0 listening on {seed_addr}, realm {realm!r}; starting {nodes - 1} more")
        others = [make(i, (seed_addr,)) for i in range(1, nodes)]
        await asyncio.gather(*(n.start() for n in others))
        everyone = [seed] + others
        try:
            if nodes > 1:
                await asyncio.gather(*(n.dht.joined() for n in others))
            await traffic.start(everyone, realm)
            deadline = started + duration
            next_table = time.monotonic()
            while time.monotonic() < deadline:
                if time.monotonic() >= next_table:
                    next_table += 3.0
                    print(f"--- mesh at {time.monotonic() - started:5.1f}s "
                          f"(name, id, address, DHT, clients, node peers with RTT) ---")
                    for n in everyone:
                        print(_row(n))
                await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
            joined = all(n.status()["peers"] for n in everyone) if nodes > 1 else True
        finally:
            await traffic.stop()
            await asyncio.gather(*(n.stop() for n in reversed(everyone)))
    p50 = statistics.median(traffic.latencies) if traffic.latencies else float("nan")
    print(f"demo finished after {time.monotonic() - started:.1f}s: {nodes} nodes, "
          f"{'every node joined the mesh' if joined else 'some nodes never joined'}; "
          f"pub/sub {traffic.received}/{traffic.published} delivered across nodes; "
          f"RPC {traffic.calls_ok} ok, {traffic.calls_failed} failed, p50 {p50:.2f} ms")
    flowed = traffic.received > 0 and traffic.calls_ok > 0
    return 0 if joined and (flowed or duration < 3) else 1
