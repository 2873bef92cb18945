"""DHT: discovery latency on a 20-node loopback mesh (real QUIC), the simulator's lookup
success and rounds (1,000 nodes with --quick, 10,000 in the full run), and bmuller's
`kademlia` package (PyPI) at the same node count over UDP on loopback, side by side.

Both real meshes run in one process each (20 nodes on one event loop), bootstrap
through one node, store one value on one node and look it up from every other node
repeatedly after a warm-up; every lookup is a full iterative FIND_VALUE over the network
(kademlia's Server.get() would answer from local storage: we time its crawl instead).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
from pathlib import Path

from benchlib import median, percentile

NODES = 20


async def macula_mesh(rounds: int) -> tuple[list[float], int, int]:
    from macula.config import load_config, replace
    from macula.node import Node

    tmp = Path(tempfile.mkdtemp(prefix="macula-bench-dht-"))
    base = load_config(system_file=False, env={})

    def make(i: int, seeds: tuple[str, ...]) -> Node:
        return Node(replace(base, node={"name": f"d{i}", "realm": "bench",
                                        "state_dir": str(tmp / f"d{i}")},
                            network={"listen_host": "127.0.0.1", "listen_port": 0,
                                     "seeds": seeds}), control=False)

    seed = make(0, ())
    await seed.start()
    others = [make(i, (f"127.0.0.1:{seed.listen_address[1]}",)) for i in range(1, NODES)]
    await asyncio.gather(*(n.start() for n in others))
    nodes = [seed] + others
    try:
        await asyncio.gather(*(n.dht.joined() for n in others))
        await nodes[7].dht.advertise("bench-service", {"v": 1}, 600)
        latencies, ok, total = [], 0, 0
        for r in range(rounds + 1):  # round 0 warms sessions up and is not counted
            for n in nodes:
                if n is nodes[7]:
                    continue
                t0 = time.perf_counter()
                found = await n.dht.discover("bench-service")
                if r:
                    latencies.append((time.perf_counter() - t0) * 1000)
                    total += 1
                    ok += bool(found)
        return latencies, ok, total
    finally:
        await asyncio.gather(*(n.stop() for n in reversed(nodes)))


async def network_get(server, key: str):
    """kademlia's Server.get() minus its local-storage shortcut: the iterative crawl."""
    from kademlia.crawling import ValueSpiderCrawl
    from kademlia.node import Node as KNode
    from kademlia.utils import digest

    node = KNode(digest(key))
    nearest = server.protocol.router.find_neighbors(node)
    return await ValueSpiderCrawl(server.protocol, node, nearest, server.ksize,
                                  server.alpha).find()


async def kademlia_mesh(rounds: int) -> tuple[list[float], int, int]:
    from benchlib import free_port
    from kademlia.network import Server

    logging.getLogger("kademlia").setLevel(logging.ERROR)
    servers = []
    for _ in range(NODES):
        s = Server()
        await s.listen(free_port(2), interface="127.0.0.1")
        servers.append(s)
    try:
        first = ("127.0.0.1", servers[0].protocol.transport.get_extra_info("sockname")[1])
        await asyncio.gather(*(s.bootstrap([first]) for s in servers[1:]))
        await servers[7].set("bench-service", "127.0.0.1:9443")
        latencies, ok, total = [], 0, 0
        for r in range(rounds + 1):
            for s in servers:
                if s is servers[7]:
                    continue
                t0 = time.perf_counter()
                value = await network_get(s, "bench-service")
                if r:
                    latencies.append((time.perf_counter() - t0) * 1000)
                    total += 1
                    ok += value is not None
        return latencies, ok, total
    finally:
        for s in servers:
            s.stop()


def main(argv: list[str]) -> dict:
    ap = argparse.ArgumentParser(prog="bench/run dht")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sim-nodes", type=int)
    args = ap.parse_args(argv)
    rounds = 3 if args.quick else 10
    sim_nodes = args.sim_nodes or (1000 if args.quick else 10_000)

    print(f"dht: {NODES}-node loopback meshes, {rounds} lookups per node after a warm-up")
    lat, ok, total = asyncio.run(macula_mesh(rounds))
    print(f"  macula   discover (QUIC): p50 {median(lat):6.2f} ms  p99 {percentile(lat, 99):6.2f} ms"
          f"  success {ok}/{total}")
    klat, kok, ktotal = asyncio.run(kademlia_mesh(rounds))
    print(f"  kademlia get (UDP):       p50 {median(klat):6.2f} ms  p99 {percentile(klat, 99):6.2f} ms"
          f"  success {kok}/{ktotal}")
    ratio = median(klat) / median(lat) if lat and median(lat) else 0.0
    print(f"  kademlia p50 / macula p50: {ratio:.2f} (above 1: macula is faster)")

    from dht_sim import report, run_sim

    print(f"simulator: {sim_nodes} nodes, 10 % churn, 1,000 lookups")
    sim = run_sim(nodes=sim_nodes, lookups=1000, values=100)
    for line in report(sim):
        print("  " + line)
    return {
        "sim_nodes": sim["sim_nodes"], "sim_success_rate": sim["sim_success_rate"],
        "sim_rounds_p50": sim["sim_rounds_p50"], "sim_rounds_p99": sim["sim_rounds_p99"],
        "sim_msgs_per_lookup_p50": sim["sim_msgs_per_lookup_p50"],
        "sim_value_survival": sim["sim_value_survival"], "sim_wall_s": sim["sim_wall_s"],
        "discover_p50_ms": round(median(lat), 3), "discover_p99_ms": round(percentile(lat, 99), 3),
        "discover_success_rate": round(ok / max(1, total), 4),
        "kademlia_pkg_lookup_p50_ms": round(median(klat), 3),
        "kademlia_pkg_lookup_p99_ms": round(percentile(klat, 99), 3),
        "kademlia_pkg_success_rate": round(kok / max(1, ktotal), 4),
        "ratio_kademlia_p50_over_macula_p50": round(ratio, 3),
    }
