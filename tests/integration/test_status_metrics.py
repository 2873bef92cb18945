"""The operator face on real nodes: `macula status` through the control socket, and the
Prometheus endpoint scraped over HTTP on loopback."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import socket
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import addr, node_config, start_node, until
from macula.cli.main import main as cli_main
from macula.cli.status import render_status
from macula.client import connect
from macula.config import replace
from macula.control.client import request
from macula.node import Node


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def operated_config(tmp: Path, name: str, metrics: str, **kw):
    cfg = node_config(tmp / name, name, **kw)
    return replace(cfg, node={"runtime_dir": str(tmp / f"{name}-run")},
                   metrics={"listen": metrics})


async def http(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


async def scrape(port: int) -> dict[tuple[str, tuple], float]:
    code, headers, body = await http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert code == 200 and headers["Content-Type"].startswith("text/plain; version=")
    assert int(headers["Content-Length"]) == len(body)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}


@pytest.fixture
async def operated(tmp_path):
    """Node A with its control socket and metrics endpoint, node B seeded to it, and a
    light client on A that subscribed and published."""
    port = free_tcp_port()
    a = Node(operated_config(tmp_path, "alpha", f"127.0.0.1:{port}"), control=True)
    await a.start()
    b = await start_node(tmp_path, "beta", seeds=(addr(a),))
    client = await connect(addr(a), realm="test", name="probe")
    try:
        sub = client.subscribe("t.>")
        await client.flush()
        for i in range(5):
            await client.publish("t.x", str(i).encode())
        for _ in range(5):
            await sub.next(2)
        await until(lambda: all(s.rtt is not None for s in a.pool.peers() + a.pool.clients())
                    and len(a.pool.peers()) == 1, timeout=10, what="RTT of beta and the client")
        yield a, b, client, port
    finally:
        await client.close()
        await b.stop()
        await a.stop()


async def test_status_through_control_socket(operated, tmp_path):
    a, b, _, port = operated
    st = await asyncio.to_thread(request, a.runtime_dir, "status")
    assert (st["node_id"], st["realm"], st["name"]) == (a.node_id.hex(), "test", "alpha")
    assert 0 < st["uptime_s"] < 60
    peers = {p["name"]: p for p in st["peers"]}
    assert set(peers) == {"beta", "probe"}
    assert peers["beta"]["node_id"] == b.node_id.hex() and peers["beta"]["role"] == "node"
    assert peers["probe"]["role"] == "client" and st["sessions"] == {"node": 1, "client": 1}
    assert all(0 < p["rtt_ms"] < 1000 for p in st["peers"])
    assert st["memory"]["budget_mib"] == a.cfg.limits.agent_memory_mib == 256
    assert 10 < st["memory"]["rss_mib"] < 256
    assert st["memory"]["budget_used"] == pytest.approx(st["memory"]["rss_mib"] / 256, abs=0.01)
    assert st["limits"] == dataclasses.asdict(a.cfg.limits)
    assert st["metrics"] == f"http://127.0.0.1:{port}/metrics"
    assert st["pubsub"]["published"] == 5 and st["pubsub"]["delivered"] == 5
    # beta dialled alpha: beta's status says where alpha saw it come from
    seen = {p["name"]: p["sees_us_at"] for p in b.status()["peers"]}
    assert seen["alpha"] == f"127.0.0.1:{b.listen_address[1]}"
    assert peers["beta"]["sees_us_at"] is None   # alpha did not dial it

    text = render_status(st)
    assert f"node     alpha ({a.node_id.hex()[:16]}) realm 'test'" in text
    assert "of the agent's 256 MiB budget" in text
    assert f"metrics  http://127.0.0.1:{port}/metrics" in text
    assert "peers    2 (1 client, 1 node)" in text
    assert "beta" in text and "max_peers=64" not in text  # limits only with --limits
    assert "max_peers=64" in render_status(st, limits=True)


async def test_status_cli_json(operated, tmp_path, capsys):
    a, *_ = operated
    conf = tmp_path / "cli.toml"
    conf.write_text(f'[node]\nruntime_dir = "{a.runtime_dir}"\n')
    assert await asyncio.to_thread(cli_main, ["status", "--json", "--config", str(conf)]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["node_id"] == a.node_id.hex() and len(st["peers"]) == 2


async def test_metrics_over_http(operated):
    a, b, client, port = operated
    m = await scrape(port)
    assert m[("macula_peers", ())] == 1 and m[("macula_clients", ())] == 1
    assert m[("macula_sessions", (("role", "node"),))] == 1
    assert m[("macula_sessions", (("role", "client"),))] == 1
    rtts = {dict(k[1])["name"]: v for k, v in m.items() if k[0] == "macula_peer_rtt_seconds"}
    assert set(rtts) == {"beta", "probe"} and all(0 < v < 1 for v in rtts.values())
    assert ("macula_peer_rtt_seconds", (("name", "beta"), ("peer", b.node_id.hex()),
                                        ("role", "node"))) in m
    assert m[("macula_frames_received_total", ())] >= 5   # the publishes at least
    assert m[("macula_frames_sent_total", ())] >= 5       # the deliveries at least
    assert m[("macula_frames_dropped_total", ())] == 0
    assert m[("macula_pubsub_published_total", ())] == 5
    assert m[("macula_pubsub_delivered_total", ())] == 5
    assert m[("macula_pubsub_subscriptions", ())] == 1
    assert m[("macula_rpc_calls_total", ())] == 0 and ("macula_rpc_in_flight", ()) in m
    assert m[("macula_endpoint_datagrams_in_total", ())] > 0
    assert 10 << 20 < m[("macula_memory_rss_bytes", ())] < 256 << 20
    assert m[("macula_memory_budget_bytes", ())] == 256 << 20
    assert m[("macula_limit", (("limit", "max_peers"),))] == 64
    assert m[("process_resident_memory_bytes", ())] > 0
    assert 0 < m[("macula_uptime_seconds", ())] < 60
    info = next(k for k in m if k[0] == "macula_node_info")
    assert dict(info[1])["node_id"] == a.node_id.hex() and dict(info[1])["realm"] == "test"

    # Counters hold when sessions go away: beta's frames stay counted after it leaves.
    before = m[("macula_frames_received_total", ())]
    await b.stop()
    await until(lambda: not a.pool.peers(), timeout=10, what="beta gone")
    after = await scrape(port)
    assert after[("macula_peers", ())] == 0
    assert after[("macula_frames_received_total", ())] >= before
    assert not any(k[0] == "macula_peer_rtt_seconds" and dict(k[1])["name"] == "beta"
                   for k in after)


async def test_metrics_http_errors_are_answered(operated):
    *_, port = operated
    assert (await http(port, b"GET /nope HTTP/1.1\r\n\r\n"))[0] == 404
    code, headers, _ = await http(port, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    assert code == 405 and headers["Allow"] == "GET, HEAD"
    assert (await http(port, b"garbage\r\n\r\n"))[0] == 400
    code, headers, body = await http(port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
    assert code == 200 and body == b"" and int(headers["Content-Length"]) > 0
    assert (await http(port, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 10000 + b"\r\n\r\n"))[0] == 431
    # A client that never finishes its request is dropped; the endpoint still answers.
    _, idle = await asyncio.open_connection("127.0.0.1", port)
    assert (await scrape(port))[("macula_peers", ())] == 1
    idle.close()


async def test_metrics_off_when_listen_is_empty(tmp_path):
    node = Node(operated_config(tmp_path, "quiet", ""), control=True)
    await node.start()
    try:
        assert node.status()["metrics"] is None
        assert "metrics  off" in render_status(node.status())
    finally:
        await node.stop()


async def test_metrics_port_taken_does_not_stop_the_node(tmp_path, caplog):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = Node(operated_config(tmp_path, "busy", f"127.0.0.1:{port}"), control=True)
        with caplog.at_level(logging.WARNING, logger="macula.metrics"):
            await node.start()
        try:
            assert node.status()["metrics"] is None
            assert f"cannot listen on 127.0.0.1:{port}" in caplog.text
            st = await asyncio.to_thread(request, node.runtime_dir, "status")
            assert st["name"] == "busy"
        finally:
            await node.stop()
