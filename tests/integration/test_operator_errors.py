"""Operator-facing errors on real nodes (hardening issue, items 6 and 7): start-up failures
name their config key, the control socket survives idle and hostile clients, a client
leaving is logged as a client, a bad procedure name fails at once, and the ALPN refusal
code that docs/PROTOCOL.md states."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import addr, node_config, start_node
from macula.client import CallError, connect
from macula.config import replace
from macula.control.client import request
from macula.errors import ConfigError, ErrorCode
from macula.node import Node

AGENT = Path(__file__).resolve().parents[2] / "agent"


async def _start_fails(cfg) -> str:
    node = Node(cfg, control=True)
    try:
        with pytest.raises(ConfigError) as info:
            await node.start()
    finally:
        await node.stop()
    return info.value.message


async def test_udp_port_in_use_names_listen_port(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        cfg = replace(node_config(tmp_path / "a", "a", port=port, control=True),
                      metrics={"listen": ""})
        msg = await _start_fails(cfg)
    assert msg.startswith(f"network.listen_port = {port}: UDP port already in use")


async def test_listen_host_not_on_this_machine_names_listen_host(tmp_path):
    cfg = replace(node_config(tmp_path / "a", "a", control=True),
                  network={"listen_host": "192.0.2.1"}, metrics={"listen": ""})  # TEST-NET-1
    msg = await _start_fails(cfg)
    assert msg == "network.listen_host = '192.0.2.1': not an address of this machine"


async def test_state_dir_that_cannot_be_created_names_state_dir(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    bad = tmp_path / "file" / "state"
    cfg = replace(node_config(tmp_path / "a", "a", control=True),
                  node={"state_dir": str(bad)}, metrics={"listen": ""})
    msg = await _start_fails(cfg)
    assert msg.startswith(f"node.state_dir = {str(bad)!r}: ")


async def test_runtime_dir_that_cannot_be_created_names_runtime_dir(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    cfg = replace(node_config(tmp_path / "a", "a"),
                  node={"runtime_dir": str(tmp_path / "file" / "run")}, metrics={"listen": ""})
    msg = await _start_fails(cfg)
    assert msg.startswith("node.runtime_dir = ")


def test_macula_run_on_a_taken_port_exits_78_with_one_line(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        conf = tmp_path / "agent.toml"
        conf.write_text(f'[node]\nstate_dir = "{tmp_path / "state"}"\n'
                        f'runtime_dir = "{tmp_path / "run"}"\n'
                        f'[network]\nlisten_host = "127.0.0.1"\nlisten_port = {port}\n'
                        '[metrics]\nlisten = ""\n')
        env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(AGENT), "HOME": str(tmp_path)}
        result = subprocess.run([sys.executable, "-m", "macula", "run", "--config", str(conf)],
                                env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 78, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if "network.listen_port" in ln]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr


async def test_metrics_port_taken_logs_one_line_naming_metrics_listen(tmp_path, caplog):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        cfg = replace(node_config(tmp_path / "a", "a", control=True), metrics={"listen": listen})
        node = Node(cfg, control=True)
        with caplog.at_level(logging.WARNING, logger="macula.metrics"):
            await node.start()
        try:
            lines = [r.getMessage() for r in caplog.records if r.name == "macula.metrics"]
            assert len(lines) == 1 and f"metrics.listen = {listen!r}" in lines[0], lines
            assert "\n" not in lines[0]
        finally:
            await node.stop()


# -- control socket -----------------------------------------------------------------------

async def test_idle_control_connections_do_not_lock_out_status(tmp_path):
    from macula.control.server import MAX_CONNECTIONS

    node = await start_node(tmp_path, "ctl", control=True)
    path = str(node.runtime_dir / "control.sock")
    idle = []
    try:
        for _ in range(MAX_CONNECTIONS + 4):
            idle.append(await asyncio.open_unix_connection(path))
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        st = await asyncio.wait_for(asyncio.to_thread(request, node.runtime_dir, "status",
                                                      timeout=2.0), 2.0)
        assert st["name"] == "ctl" and time.monotonic() - t0 < 2.0
    finally:
        for _, w in idle:
            w.close()
        await node.stop()


async def test_idle_control_connection_is_closed_after_the_read_timeout(tmp_path, monkeypatch):
    from macula.control import server

    monkeypatch.setattr(server, "IDLE_TIMEOUT", 0.2)
    node = await start_node(tmp_path, "ctl", control=True)
    try:
        reader, writer = await asyncio.open_unix_connection(str(node.runtime_dir / "control.sock"))
        assert await asyncio.wait_for(reader.read(), 2.0) == b""  # closed by the node
        writer.close()
    finally:
        await node.stop()


async def test_deeply_nested_control_json_gets_an_error_and_the_server_goes_on(tmp_path):
    node = await start_node(tmp_path, "ctl", control=True)
    try:
        reader, writer = await asyncio.open_unix_connection(str(node.runtime_dir / "control.sock"))
        writer.write(b"[" * 30000 + b"]" * 30000 + b"\n")
        reply = json.loads(await asyncio.wait_for(reader.readline(), 5.0))
        assert reply == {"ok": False, "code": int(ErrorCode.BAD_ENCODING),
                         "error": "request nested too deeply"}
        writer.write(b'{"cmd": "status"}\n')  # the same connection is still served
        assert json.loads(await asyncio.wait_for(reader.readline(), 5.0))["ok"] is True
        writer.close()
        st = await asyncio.to_thread(request, node.runtime_dir, "status", timeout=2.0)
        assert st["name"] == "ctl"
    finally:
        await node.stop()


# -- clients ------------------------------------------------------------------------------

async def test_a_client_leaving_is_logged_as_a_client_with_its_reason(tmp_path, caplog):
    node = await start_node(tmp_path, "n")
    try:
        with caplog.at_level(logging.INFO, logger="macula.node"):
            c = await connect(addr(node), realm="test", name="cli")
            await c.close()
            for _ in range(200):
                if "left:" in caplog.text:
                    break
                await asyncio.sleep(0.01)
        left = [r.getMessage() for r in caplog.records if "left:" in r.getMessage()]
        assert len(left) == 1 and left[0].startswith("client left: cli ("), left
        assert left[0].endswith(": client closed the connection"), left
    finally:
        await node.stop()


async def test_call_with_an_empty_procedure_fails_at_once_with_bad_field(tmp_path):
    node = await start_node(tmp_path, "n")
    try:
        async with await connect(addr(node), realm="test") as c:
            t0 = time.monotonic()
            with pytest.raises(CallError) as info:
                await c.call("", b"", timeout=5.0)
            assert info.value.code is ErrorCode.BAD_FIELD
            assert info.value.message.startswith("CALL.procedure: length 0")
            assert time.monotonic() - t0 < 1.0
    finally:
        await node.stop()


# -- ALPN -----------------------------------------------------------------------------------

async def test_wrong_alpn_is_refused_with_0x128_as_protocol_md_says(tmp_path):
    """qh3 refuses a handshake without a common ALPN with TLS alert 40 (handshake_failure),
    i.e. QUIC CRYPTO_ERROR 0x100 + 40 = 0x128, not no_application_protocol (0x178)."""
    from qh3.asyncio import connect as quic_connect
    from qh3.asyncio.protocol import QuicConnectionProtocol
    from qh3.quic.configuration import QuicConfiguration
    from qh3.quic.events import ConnectionTerminated

    codes: list[int] = []

    class Probe(QuicConnectionProtocol):
        def quic_event_received(self, event) -> None:
            if isinstance(event, ConnectionTerminated):
                codes.append(event.error_code)

    node = await start_node(tmp_path, "n")
    try:
        cfg = QuicConfiguration(is_client=True, alpn_protocols=["h3"], verify_mode=ssl.CERT_NONE)
        with pytest.raises(ConnectionError):
            async with quic_connect("127.0.0.1", node.listen_address[1], configuration=cfg,
                                    create_protocol=Probe):
                pass
    finally:
        await node.stop()
    assert codes == [0x128]
    protocol = (Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md").read_text()
    assert "QUIC error 0x128" in protocol and "error 0x178" not in protocol
