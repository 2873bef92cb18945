"""One real node per process for bench_gossip, driven by JSON lines.

python -m gossip_roles NAME N [SEED_ADDR]: a node of cluster "bench" on 127.0.0.1 with
the detected hardware profile's limits and the default [cluster] settings. It prints
{"port", "node_id"}, then {"members": N - 1} once it sees every other node. Commands on
stdin, one per line:
  change K   write metadata field bench=K; prints {"changed": K, "t": T}
  stats      prints the cluster's byte counters {"sent", "received", "t"}
  quit       leaves the cluster and exits
Whenever it first sees another node's bench=K it prints {"seen": K, "t": T}. T is
time.monotonic(), the same clock in every process of one machine.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time

from macula.config import load_config, replace
from macula.node import Node


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


async def main(name: str, n: int, seed: str | None) -> None:
    cfg = load_config(system_file=False, env={})
    cfg = replace(cfg, node={"name": name, "realm": "bench",
                             "state_dir": tempfile.mkdtemp(prefix="macula-gossip-")},
                  network={"listen_host": "127.0.0.1", "listen_port": 0,
                           "seeds": (seed,) if seed else ()},
                  cluster={"name": "bench"})
    node = Node(cfg, control=False)
    await node.start()
    cluster = node.cluster
    emit(port=node.listen_address[1], node_id=node.node_id.hex())
    reported: dict[bytes, int] = {}

    def check(name: str) -> None:
        if name != "nodes":
            return
        t = time.monotonic()
        for member in cluster.members()[1:]:
            value = (cluster.metadata(member.node_id) or {}).get("bench")
            if value is not None and reported.get(member.node_id) != value:
                reported[member.node_id] = value
                emit(seen=value, t=t)

    cluster.on_state_changed(check)
    while len(cluster.core.live()) < n - 1:
        await asyncio.sleep(0.01)
    emit(members=n - 1)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().split():
        if line[0] == "change":
            t = time.monotonic()
            cluster.update_metadata({"bench": int(line[1])})
            emit(changed=int(line[1]), t=t)
        elif line[0] == "stats":
            st = cluster.status()
            emit(sent=st["bytes_sent"], t=time.monotonic())
        elif line[0] == "quit":
            break
    await node.stop()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None))
