"""The CLI knows its node (issue 19, point 3): `macula pub | sub | call | serve-echo` with
--config or MACULA_CONFIG attach to the node that config describes (its listen address
and realm), against a real node; --node / --realm given on the command line win."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import start_node

AGENT = Path(__file__).resolve().parents[2] / "agent"
REALM = "cli-realm"  # not the default: reaching the node proves the realm came from the file


def _env(tmp: Path, **extra: str) -> dict:
    return {"PATH": os.environ["PATH"], "PYTHONPATH": str(AGENT), "HOME": str(tmp), **extra}


async def _macula(env: dict, *argv: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "macula", *argv, env=env, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode, out.decode(), err.decode()


async def _started(env: dict, ready: str, *argv: str) -> asyncio.subprocess.Process:
    """A long-running command, once it printed ``ready`` on stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "macula", *argv, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    seen = []
    try:
        while True:
            line = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
            seen.append(line)
            if not line:
                raise AssertionError(f"{argv} ended before {ready!r}: {''.join(seen)}")
            if ready in line:
                return proc
    except BaseException:
        proc.kill()
        await proc.wait()
        raise


@pytest.fixture
async def node_conf(tmp_path):
    node = await start_node(tmp_path, "cfgnode", realm=REALM)
    conf = tmp_path / "agent.toml"
    conf.write_text(f'[node]\nrealm = "{REALM}"\n'
                    f'[network]\nlisten_host = "0.0.0.0"\nlisten_port = {node.listen_address[1]}\n')
    yield conf
    await node.stop()


async def test_serve_echo_and_call_find_the_node_from_the_config(node_conf, tmp_path):
    server = await _started(_env(tmp_path), "serving 'echo' on cfgnode",
                            "serve-echo", "--config", str(node_conf))
    try:
        rc, out, err = await _macula(_env(tmp_path, MACULA_CONFIG=str(node_conf)),
                                     "call", "echo", "hi there")
        assert (rc, out) == (0, "hi there\n"), err
    finally:
        server.terminate()
        assert await asyncio.wait_for(server.wait(), 30) == 0


async def test_sub_and_pub_find_the_node_from_the_config(node_conf, tmp_path):
    sub = await _started(_env(tmp_path, MACULA_CONFIG=str(node_conf)), "subscribed to cfg.>",
                         "sub", "cfg.>", "--count", "2", "--timeout", "30")
    try:
        rc, _, err = await _macula(_env(tmp_path), "pub", "-c", str(node_conf), "cfg.kitchen",
                                   "21.5", "--count", "2")
        assert rc == 0 and "published 2 message(s)" in err, err
        out = await asyncio.wait_for(sub.stdout.read(), 30)
        assert await asyncio.wait_for(sub.wait(), 30) == 0
    finally:
        if sub.returncode is None:
            sub.kill()
            await sub.wait()
    assert out.decode().splitlines() == ["cfg.kitchen 21.5", "cfg.kitchen 21.5"]


async def test_realm_on_the_command_line_wins_over_the_config(node_conf, tmp_path):
    rc, _, err = await _macula(_env(tmp_path, MACULA_CONFIG=str(node_conf)),
                               "pub", "--realm", "elsewhere", "t", "m")
    assert rc == 2 and "201 REALM_MISMATCH" in err and "'elsewhere'" in err, err
    assert len(err.strip().splitlines()) == 1, err


async def test_without_a_config_the_defaults_miss_this_node(node_conf, tmp_path):
    """The node is not at 127.0.0.1:9443 / realm 'default': only the config finds it."""
    port = node_conf.read_text().split("listen_port = ")[1].split()[0]
    rc, _, err = await _macula(_env(tmp_path), "pub", "--node", f"127.0.0.1:{port}", "t", "m")
    assert rc == 2 and "REALM_MISMATCH" in err, err
