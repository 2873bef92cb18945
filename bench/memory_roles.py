"""Load generators for the memory benchmark, each run as its own process so the node
under test is measured alone:

    python -m memory_roles peers HUB STATE_DIR N
        N nodes in this process, each seeded with HUB; prints {"ready": N} once every one
        has a session with the hub, then holds them until SIGTERM.
    python -m memory_roles churn HUB STATE_DIR SECONDS NODES CLIENTS
        Until SECONDS pass, in cycles: NODES nodes join the hub and CLIENTS light clients
        attach, subscribe (a pattern of their own and a shared one), advertise a procedure,
        publish and call each other's procedures through the hub; then all leave again,
        taking their subscriptions and procedures with them. Nodes reuse a fixed set of
        identities, as the devices of a street would. Prints a summary line at the end.

Every wait is bounded; a cycle that cannot finish in time raises and ends the process.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path

from macula.client import connect
from macula.config import load_config, replace
from macula.node import Node

REALM = "memory"
JOIN_TIMEOUT = 30.0


def say(**fields) -> None:
    print(json.dumps(fields), flush=True)


def node_config(state: Path, name: str, hub: str):
    cfg = load_config(system_file=False, env={})
    return replace(cfg, node={"name": name, "realm": REALM, "state_dir": str(state / name),
                              "log_level": "warning"},
                   network={"listen_host": "127.0.0.1", "listen_port": 0, "seeds": (hub,)})


async def joined(nodes: list[Node], timeout: float = JOIN_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not all(n.pool.peers() for n in nodes):
        if time.monotonic() > deadline:
            missing = sum(1 for n in nodes if not n.pool.peers())
            raise TimeoutError(f"{missing} of {len(nodes)} nodes did not join in {timeout} s")
        await asyncio.sleep(0.05)


async def peers(hub: str, state: Path, n: int) -> None:
    nodes = [Node(node_config(state, f"peer-{i}", hub), control=False) for i in range(n)]
    for node in nodes:
        await node.start()
    await joined(nodes, JOIN_TIMEOUT + n * 0.05)
    say(ready=n)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await asyncio.gather(*(node.stop() for node in nodes))


async def churn(hub: str, state: Path, seconds: float, n_nodes: int, n_clients: int) -> None:
    counts = dict(cycles=0, joins=0, clients=0, published=0, calls=0)
    deadline = time.monotonic() + seconds
    identities = 3 * n_nodes   # a fixed set of devices, a third of them present per cycle
    progress = [time.monotonic()]

    async def watchdog() -> None:  # a cycle stuck for a minute: show where every task waits
        while True:
            await asyncio.sleep(10)
            if time.monotonic() - progress[0] > 60:
                print(f"churn: cycle {counts['cycles']} stuck for 60 s; tasks:", file=sys.stderr)
                for task in asyncio.all_tasks():
                    task.print_stack(limit=8, file=sys.stderr)
                progress[0] = time.monotonic()

    dog = asyncio.get_running_loop().create_task(watchdog())
    while time.monotonic() < deadline:
        progress[0] = time.monotonic()
        cycle = counts["cycles"]
        first = (cycle * n_nodes) % identities
        nodes = [Node(node_config(state, f"churn-{(first + i) % identities}", hub), control=False)
                 for i in range(n_nodes)]
        clients = []
        try:
            for node in nodes:
                await node.start()
            await joined(nodes)
            clients = [await connect(hub, realm=REALM, name=f"churn-client-{i}")
                       for i in range(n_clients)]
            subs = []
            for i, c in enumerate(clients):
                subs.append(c.subscribe(f"churn.{cycle}.{i}.>"))
                subs.append(c.subscribe("churn.all"))
                c.register(f"svc.{cycle}.{i}", lambda args: args)
                await c.flush()
            for i, c in enumerate(clients):
                await c.publish(f"churn.{cycle}.{i}.x", b"x" * 64)
                await c.publish("churn.all", b"y" * 64)
                counts["published"] += 2
            for sub in subs:
                await sub.next(JOIN_TIMEOUT)
            for i, c in enumerate(clients):
                peer = (i + 1) % len(clients)
                await c.call(f"svc.{cycle}.{peer}", b"ping", timeout=JOIN_TIMEOUT)
                counts["calls"] += 1
        finally:
            await asyncio.gather(*(c.close() for c in clients))
            await asyncio.gather(*(n.stop() for n in nodes))
        counts["cycles"] += 1
        counts["joins"] += n_nodes
        counts["clients"] += n_clients
    dog.cancel()
    say(**counts)


def main() -> None:
    role, hub, state = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    if role == "peers":
        asyncio.run(peers(hub, state, int(sys.argv[4])))
    elif role == "churn":
        asyncio.run(churn(hub, state, float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])))
    else:
        raise SystemExit(f"unknown role {role}")


if __name__ == "__main__":
    main()
