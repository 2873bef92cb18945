"""Status that tells the truth (issue 19, point 4), on real nodes: a seed still being
dialled is `dialling`, not `connected`; one whose port is closed is `unreachable: ...`;
one that answers with a refusal (another realm) is `refused: ...`, logged once as a
WARNING and redialled only slowly; the text status lists the cluster's members by name
and keeps the limits behind --limits."""

from __future__ import annotations

import asyncio
import logging
import socket

from helpers import addr, free_udp_port, start_node, until
from macula.cli.status import render_status
from macula.transport.pool import REFUSED_RETRY

FAST_CLUSTER = {"name": "home", "probe_interval": 0.5, "probe_timeout": 0.25,
                "suspicion_mult": 4}


def _seed_line(text: str, seed: str) -> str:
    return next(ln for ln in text.splitlines() if ln.startswith(f"seed     {seed}"))


async def test_a_seed_that_has_not_answered_yet_is_dialling_not_connected(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # takes datagrams, never answers: the dial hangs
        seed = f"127.0.0.1:{silent.getsockname()[1]}"
        node = await start_node(tmp_path, "a", seeds=(seed,), connect=5.0)
        try:
            await until(lambda: node.pool.stats.dials >= 1, 5.0, "the first dial")
            st = node.status()
            assert st["seeds"] == {seed: "dialling"}
            assert _seed_line(render_status(st), seed) == f"seed     {seed}  dialling"
        finally:
            await node.stop()


async def test_a_seed_with_a_closed_port_is_unreachable(tmp_path):
    seed = f"127.0.0.1:{free_udp_port()}"
    node = await start_node(tmp_path, "a", seeds=(seed,))
    try:
        await until(lambda: node.status()["seeds"][seed] != "dialling", 10.0, "a failed dial")
        state = node.status()["seeds"][seed]
        assert state.startswith("unreachable: "), state
    finally:
        await node.stop()


async def test_a_seed_of_another_realm_is_refused_warned_once_and_retried_slowly(tmp_path,
                                                                                   caplog):
    other = await start_node(tmp_path, "other", realm="elsewhere")
    seed = addr(other)
    with caplog.at_level(logging.INFO, logger="macula.transport"):
        node = await start_node(tmp_path, "a", seeds=(seed,))
        try:
            await until(lambda: node.status()["seeds"][seed] != "dialling", 10.0, "the refusal")
            state = node.status()["seeds"][seed]
            assert state.startswith("refused: ") and "realm" in state, state
            assert _seed_line(render_status(node.status()), seed).endswith(state)
            warnings = [r.getMessage() for r in caplog.records
                        if r.levelno == logging.WARNING and seed.split(":")[1] in r.getMessage()]
            assert len(warnings) == 1 and "refused us" in warnings[0], warnings
            # the next dial of a refusing seed is a minute away, not the 0.5 s backoff cap
            w = node.pool._wanted[("127.0.0.1", other.listen_address[1])]
            assert w.next_attempt - node.pool.clock.now() > REFUSED_RETRY - 5
        finally:
            await node.stop()
            await other.stop()


async def test_a_seed_that_answers_is_connected(tmp_path):
    seed_node = await start_node(tmp_path, "s")
    node = await start_node(tmp_path, "a", seeds=(addr(seed_node),))
    try:
        await until(lambda: node.status()["seeds"][addr(seed_node)] == "connected", 10.0,
                    "connected")
    finally:
        await node.stop()
        await seed_node.stop()


async def test_text_status_lists_the_cluster_by_name_and_limits_only_when_asked(tmp_path,
                                                                                 caplog):
    with caplog.at_level(logging.INFO, logger="macula.cluster"):
        a = await start_node(tmp_path, "alpha", cluster=FAST_CLUSTER)
        b = await start_node(tmp_path, "beta", seeds=(addr(a),), cluster=FAST_CLUSTER)
        try:
            await until(lambda: a.status()["cluster"]["members"] == 2, 15.0, "2 members")
            st = a.status()
            roster = st["cluster"]["roster"]
            assert [m["name"] for m in roster] == ["alpha", "beta"]
            assert {m["state"] for m in roster} == {"alive"}
            text = render_status(st)
            assert "cluster  'home': 2 of 2 member(s) alive (at most 10)" in text
            lines = text.splitlines()
            at = lines.index("cluster  'home': 2 of 2 member(s) alive (at most 10)")
            assert lines[at + 1].split()[0] == "alpha" and lines[at + 1].endswith("(this node)")
            assert lines[at + 2].split()[0] == "beta"
            assert "limits" not in text and "max_peers=" in render_status(st, limits=True)
            joined = [r.getMessage() for r in caplog.records if "joined" in r.getMessage()]
            assert joined and all("member ? (" not in j for j in joined), joined
        finally:
            await b.stop()
            await a.stop()


async def test_status_of_a_node_without_a_cluster_says_so(tmp_path):
    node = await start_node(tmp_path, "solo")
    try:
        assert "cluster  none (a cluster of one" in render_status(node.status())
    finally:
        await node.stop()


async def test_macula_mesh_lists_the_cluster_and_the_dht_with_rtt_and_role(tmp_path):
    from macula.cli.dht import render_mesh

    a = await start_node(tmp_path, "alpha", cluster=FAST_CLUSTER, control=True)
    b = await start_node(tmp_path, "beta", seeds=(addr(a),), cluster=FAST_CLUSTER)
    c = await start_node(tmp_path, "gamma", seeds=(addr(a),), dht={"mode": "client"})
    try:
        await until(lambda: a.status()["cluster"]["members"] == 2, 15.0, "2 members")
        await until(lambda: len(a.pool.peers()) == 2, 10.0, "gamma connected")
        await until(lambda: all(s.rtt is not None for s in a.pool.peers()), 10.0,
                    "an RTT from the keepalive PINGs")

        async def mesh_of(node) -> dict:
            return await node.operations.commands["mesh"]({"cmd": "mesh"})

        m = await mesh_of(a)
        by_name = {n["name"]: n for n in m["nodes"]}
        assert [n["name"] for n in m["nodes"]][0] == "alpha" and by_name["alpha"]["self"]
        assert by_name["beta"]["cluster"] == "alive" and by_name["beta"]["connected"]
        assert by_name["beta"]["rtt_ms"] is not None and by_name["beta"]["role"] == "node"
        assert by_name["gamma"]["role"] == "dht-client" and by_name["gamma"]["cluster"] is None
        text = render_mesh(m)
        assert text.startswith("realm 'test', cluster 'home': 3 node(s) known here")
        assert any(ln.split()[0] == "gamma" and "dht-client" in ln for ln in text.splitlines())
        # from the standalone node too: it knows beta only through the DHT
        await until(lambda: any(ct.node_id == b.node_id for ct in c.dht.core.table), 15.0,
                    "gamma's DHT table has beta")
        seen = {n["name"] or n["node_id"][:12]: n for n in (await mesh_of(c))["nodes"]}
        beta = next(n for n in seen.values() if n["node_id"] == b.node_id.hex())
        assert beta["in_dht_table"] and beta["address"] == addr(b)
        # and through the control socket, as `macula mesh --json` asks
        from macula.control.client import request
        over_socket = await asyncio.to_thread(request, a.runtime_dir, "mesh", timeout=5.0)
        assert {n["node_id"] for n in over_socket["nodes"]} >= {a.node_id.hex(), b.node_id.hex(),
                                                               c.node_id.hex()}
    finally:
        await c.stop()
        await b.stop()
        await a.stop()
