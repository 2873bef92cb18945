"""One node per control socket (issue 19, point 2): a second node given the runtime_dir of
a live one refuses to start with one line naming node.runtime_dir, and leaves the first
node reachable; a node never removes a control socket it did not bind; a socket left by
a crash is replaced."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import node_config
from macula.config import replace
from macula.control.client import ControlError, request
from macula.errors import ConfigError, ErrorCode
from macula.node import Node

AGENT = Path(__file__).resolve().parents[2] / "agent"


def _config(tmp: Path, name: str, runtime_dir: Path):
    cfg = node_config(tmp / name, name, control=True)
    return replace(cfg, node={"runtime_dir": str(runtime_dir)}, metrics={"listen": ""})


async def _status(runtime_dir: Path) -> dict:
    return await asyncio.to_thread(request, runtime_dir, "status", timeout=5.0)


async def test_second_node_on_a_live_socket_refuses_and_the_first_stays_reachable(tmp_path):
    run = tmp_path / "run"
    first = Node(_config(tmp_path, "first", run), control=True)
    await first.start()
    try:
        second = Node(_config(tmp_path, "second", run), control=True)
        try:
            with pytest.raises(ConfigError) as info:
                await second.start()
        finally:
            await second.stop()
        msg = info.value.message
        assert msg.startswith(f"node.runtime_dir = {str(run)!r}: another node is running")
        assert "\n" not in msg
        # the refused node removed nothing: the first still answers on its socket
        assert (await _status(run))["name"] == "first"
    finally:
        await first.stop()
    assert not (run / "control.sock").exists()  # the first removed its own on the way out


async def test_a_node_does_not_remove_a_socket_another_node_now_owns(tmp_path):
    run = tmp_path / "run"
    first = Node(_config(tmp_path, "first", run), control=True)
    await first.start()
    second = None
    try:
        (run / "control.sock").unlink()  # an operator removes it under the running node
        second = Node(_config(tmp_path, "second", run), control=True)
        await second.start()  # nothing answers at the path: the second binds it
        await first.stop()
        first = None
        # the first node's stop left the second's socket alone
        assert (await _status(run))["name"] == "second"
    finally:
        if first is not None:
            await first.stop()
        if second is not None:
            await second.stop()


async def test_a_socket_left_by_a_crash_is_replaced(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(run / "control.sock"))  # bound, never listening: what a crash leaves
    stale.close()
    node = Node(_config(tmp_path, "n", run), control=True)
    await node.start()
    try:
        assert (await _status(run))["name"] == "n"
    finally:
        await node.stop()
    with pytest.raises(ControlError) as info:
        await _status(run)
    assert info.value.code is ErrorCode.NOT_CONNECTED


async def test_a_file_that_is_not_a_socket_is_not_removed(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "control.sock").write_text("not a socket")
    node = Node(_config(tmp_path, "n", run), control=True)
    try:
        with pytest.raises(ConfigError) as info:
            await node.start()
    finally:
        await node.stop()
    assert info.value.message.startswith(f"node.runtime_dir = {str(run)!r}: ")
    assert "is not a socket" in info.value.message
    assert (run / "control.sock").read_text() == "not a socket"


async def test_macula_run_on_a_live_socket_exits_78_with_one_line(tmp_path):
    run = tmp_path / "run"
    first = Node(_config(tmp_path, "first", run), control=True)
    await first.start()
    try:
        conf = tmp_path / "second.toml"
        conf.write_text(f'[node]\nname = "second"\nstate_dir = "{tmp_path / "second"}"\n'
                        f'runtime_dir = "{run}"\n'
                        '[network]\nlisten_host = "127.0.0.1"\nlisten_port = 0\n'
                        '[metrics]\nlisten = ""\n')
        env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(AGENT), "HOME": str(tmp_path)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "macula", "run", "--config", str(conf), env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            if proc.returncode is None:  # it started after all: do not leave it running
                proc.kill()
                await proc.wait()
        stderr = err.decode()
        assert proc.returncode == 78, stderr
        lines = [ln for ln in stderr.splitlines() if "node.runtime_dir" in ln]
        assert len(lines) == 1 and "another node is running" in lines[0], stderr
        assert "Traceback" not in stderr, stderr
        assert (await _status(run))["name"] == "first"
    finally:
        await first.stop()
