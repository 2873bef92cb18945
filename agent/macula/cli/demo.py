"""`macula demo`: N real nodes on loopback joined through a seed, the live mesh printed."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from macula.config import load_config, replace
from macula.node import Node


def _row(node: Node) -> str:
    st = node.status()
    peers = ", ".join(f"{p['name']}({p['rtt_ms']:.2f}ms)" if p["rtt_ms"] is not None
                      else p["name"] for p in sorted(st["peers"], key=lambda p: p["name"]))
    return f"  {st['name']:<8} {st['node_id'][:12]}  {st['listen']:<21} {len(st['peers']):>3}  {peers}"


async def run_demo(nodes: int, duration: float, realm: str = "demo") -> int:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="macula-demo-") as tmp:
        base = load_config(system_file=False, env={})

        def make(i: int, seeds: tuple[str, ...]) -> Node:
            cfg = replace(base, node={"name": f"node-{i}", "realm": realm,
                                      "state_dir": str(Path(tmp) / f"node-{i}")},
                          network={"listen_host": "127.0.0.1", "listen_port": 0, "seeds": seeds},
                          timeouts={"keepalive": 1.0})
            return Node(cfg, control=False)

        def show(event: str, session) -> None:
            t = time.monotonic() - started
            print(f"[{t:6.2f}s] {session.peer.name} {'joined' if event == 'up' else 'left'}")

        seed = make(0, ())
        await seed.start()
        seed.peer_listeners.append(show)
        seed_addr = f"127.0.0.1:{seed.listen_address[1]}"
        print(f"seed node-0 listening on {seed_addr}, realm {realm!r}; starting {nodes - 1} more")
        others = [make(i, (seed_addr,)) for i in range(1, nodes)]
        await asyncio.gather(*(n.start() for n in others))
        everyone = [seed] + others
        try:
            deadline = started + duration
            while time.monotonic() < deadline:
                await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
                print(f"--- mesh at {time.monotonic() - started:5.1f}s "
                      f"(name, id, address, peers, peer list with RTT) ---")
                for n in everyone:
                    print(_row(n))
            joined = all(n.status()["peers"] for n in everyone) if nodes > 1 else True
        finally:
            await asyncio.gather(*(n.stop() for n in reversed(everyone)))
    print("demo finished: every node joined the mesh" if joined
          else "demo finished: some nodes never joined")
    return 0 if joined else 1
