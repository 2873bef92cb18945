"""The DHT on real QUIC over loopback: bootstrap, discovery, churn, a restarted seed."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

from helpers import NodeProcess, addr, peer_names, start_node, until


async def test_twenty_nodes_discover_survive_churn_and_a_restarted_seed(tmp_path):
    s1 = await start_node(tmp_path, "seed1")
    s2 = await start_node(tmp_path, "seed2", seeds=(addr(s1),))
    seeds = (addr(s1), addr(s2))
    port1 = s1.listen_address[1]
    doomed = [NodeProcess(tmp_path, f"k{i}", seeds) for i in range(5)]  # killed later
    nodes = [await start_node(tmp_path, f"n{i:02}", seeds=seeds, shutdown=5.0) for i in range(13)]
    alive = [s1, s2] + nodes
    try:
        await until(lambda: {p.name for p in doomed} <= peer_names(s1) | peer_names(s2),
                    timeout=20, what="node processes joined")
        # every node bootstrapped: it knows more contacts than its two seeds
        await until(lambda: all(n.dht.core.stats()["contacts"] >= 3 for n in alive),
                    timeout=20, what="routing tables filled")
        done = await nodes[5].dht.advertise("printer", {"room": "office"}, 300)
        assert done.stored >= 3
        # every node finds it
        found = await asyncio.gather(*(n.dht.discover("printer") for n in alive))
        assert all(len(f) == 1 and f[0].node_id == nodes[5].node_id for f in found)
        assert found[0][0].metadata == {"room": "office"}
        # 5 node processes are killed (SIGKILL: no GOAWAY, no withdrawal)
        for p in doomed:
            p.kill()
        found = await asyncio.gather(*(n.dht.discover("printer") for n in alive))
        assert all(f and f[0].node_id == nodes[5].node_id for f in found)
        # a seed restarts on the same port: a node joining meanwhile uses the other seed
        await s1.stop()
        alive.remove(s1)
        late = await start_node(tmp_path, "late", seeds=seeds)
        alive.append(late)
        assert [p.node_id for p in await late.dht.discover("printer")] == [nodes[5].node_id]
        s1b = await start_node(tmp_path, "seed1", port=port1)
        alive.append(s1b)
        await until(lambda: s1b.dht.core.stats()["contacts"] >= 2, timeout=15,
                    what="restarted seed rejoined")
        assert [p.node_id for p in await s1b.dht.discover("printer")] == [nodes[5].node_id]
        # a clean stop withdraws the record everywhere
        await nodes[5].stop()
        alive.remove(nodes[5])
        assert await alive[0].dht.discover("printer") == ()
    finally:
        for p in doomed:
            p.kill()
        for n in alive:
            await n.stop()


async def test_client_mode_node_looks_up_but_holds_nothing(tmp_path):
    a = await start_node(tmp_path, "a")
    b = await start_node(tmp_path, "b", seeds=(addr(a),))
    weak = await start_node(tmp_path, "weak", seeds=(addr(a),), dht={"mode": "client"})
    try:
        await until(lambda: weak.dht.core.stats()["contacts"] >= 1, what="weak bootstrapped")
        await b.dht.advertise("svc", {}, 60)
        assert [p.node_id for p in await weak.dht.discover("svc")] == [b.node_id]
        await weak.dht.advertise("weak-svc", {}, 60)
        assert [p.node_id for p in await a.dht.discover("weak-svc")] == [weak.node_id]
        assert weak.dht.core.records.count == 0          # stores nothing for others
        assert weak.node_id.hex() not in {c.node_id.hex() for c in a.dht.core.table}
    finally:
        for n in (weak, b, a):
            await n.stop()


async def test_cli_discover_and_dht_against_a_running_node(tmp_path):
    a = await start_node(tmp_path, "a", control=True)
    b = await start_node(tmp_path, "b", seeds=(addr(a),))
    try:
        await until(lambda: a.dht.core.stats()["contacts"] >= 1, what="a knows b")
        await b.dht.advertise("camera", {"fps": "25"}, 60)
        cfg = tmp_path / "a.toml"
        cfg.write_text(f'[node]\nname = "a"\nstate_dir = "{tmp_path / "a"}"\n'
                       f'runtime_dir = "{a.runtime_dir}"\n')
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

        def cli(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "macula", *args, "-c", str(cfg)],
                                  capture_output=True, text=True, env=env, timeout=30)

        # the CLI talks to the node through its Unix socket: run it off the event loop
        out = await asyncio.to_thread(cli, "discover", "camera", "--json")
        assert out.returncode == 0, out.stderr
        assert [p["node_id"] for p in json.loads(out.stdout)] == [b.node_id.hex()]
        table = await asyncio.to_thread(cli, "dht", "--json")
        assert table.returncode == 0 and json.loads(table.stdout)["contacts"] >= 1
        missing = await asyncio.to_thread(cli, "discover", "nothing-here")
        assert missing.returncode == 1 and "no live provider" in missing.stderr
        assert oct((a.runtime_dir / "control.sock").stat().st_mode & 0o777) == "0o660"
    finally:
        await b.stop()
        await a.stop()
