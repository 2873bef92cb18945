"""Errors for user input are not bugs (issue 19, point 5): a bad service or procedure name,
a bad ttl or metadata, from the CLI, the control socket or the SDK, answers the code of
what is wrong (BAD_FIELD, BAD_TOPIC, ...), never INTERNAL (900, "a bug: report it")."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import addr, start_node, until
from macula.client import CallError, connect
from macula.errors import ErrorCode, MaculaError
from macula.wire.messages import Call, Register

AGENT = Path(__file__).resolve().parents[2] / "agent"

BAD_NAMES = ["bad name!", "a" * 65, "-leading-dash", "sp ace", "ünïcode", ".dot"]


async def _control(node, **req) -> dict:
    reader, writer = await asyncio.open_unix_connection(str(node.runtime_dir / "control.sock"))
    try:
        writer.write(json.dumps(req).encode() + b"\n")
        return json.loads(await asyncio.wait_for(reader.readline(), 10.0))
    finally:
        writer.close()


@pytest.fixture
async def node(tmp_path):
    n = await start_node(tmp_path, "n", control=True)
    yield n
    await n.stop()


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_discover_and_advertise_of_a_bad_service_name_answer_bad_field(node, name):
    for cmd in ("discover", "advertise", "withdraw"):
        reply = await _control(node, cmd=cmd, service=name)
        assert reply["ok"] is False and reply["code"] == int(ErrorCode.BAD_FIELD), (cmd, reply)
        assert "service name" in reply["error"], reply


@pytest.mark.parametrize("req", [
    {"cmd": "discover"}, {"cmd": "discover", "service": 7}, {"cmd": "discover", "service": ""},
    {"cmd": "advertise", "service": "svc", "ttl": 0},
    {"cmd": "advertise", "service": "svc", "ttl": -5},
    {"cmd": "advertise", "service": "svc", "ttl": "300"},
    {"cmd": "advertise", "service": "svc", "ttl": True},
    {"cmd": "advertise", "service": "svc", "metadata": []},
    {"cmd": "advertise", "service": "svc", "metadata": {"k" * 100: "v"}},
    {"cmd": "advertise", "service": "svc", "metadata": {"k": "v" * 9000}},
])
async def test_bad_control_arguments_answer_bad_field_not_internal(node, req):
    reply = await _control(node, **req)
    assert reply["ok"] is False and reply["code"] == int(ErrorCode.BAD_FIELD), reply


async def test_macula_discover_with_a_bad_name_prints_one_line_with_bad_field(node, tmp_path):
    conf = tmp_path / "cli.toml"
    conf.write_text(f'[node]\nruntime_dir = "{node.runtime_dir}"\n')
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(AGENT), "HOME": str(tmp_path)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "macula", "discover", "bad name!", "--config", str(conf),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2, err
    assert err.decode().splitlines() == [
        "macula: error 106 BAD_FIELD: bad service name: 'bad name!' does not match "
        "[A-Za-z0-9][A-Za-z0-9._-]{0,63}"]
    assert out == b""


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_sdk_refuses_a_bad_procedure_name_at_once_with_bad_field(node, name):
    async with await connect(addr(node), realm="test") as c:
        with pytest.raises(MaculaError) as reg:
            c.register(name, lambda a: a)
        assert reg.value.code is ErrorCode.BAD_FIELD and "procedure" in reg.value.message
        with pytest.raises(CallError) as info:
            await asyncio.wait_for(c.call(name, b"x", timeout=5.0), 1.0)
        assert info.value.code is ErrorCode.BAD_FIELD


async def test_node_refuses_a_bad_procedure_name_from_a_client_that_skips_the_check(node):
    """Another SDK may not check: the node answers BAD_FIELD to the call at once instead of
    failing to look the name up, and does not take the registration."""
    async with await connect(addr(node), realm="test") as c:
        c.session.send_reliable(Register("bad proc!"))
        await c.flush()
        assert "bad proc!" not in node.rpc.local_procedures()
        fut = asyncio.get_running_loop().create_future()
        c._calls[999] = fut  # the client's reply routing, for a CALL it did not check
        c.session.send_reliable(Call(999, "bad proc!", b"", 5000, False))
        with pytest.raises(CallError) as info:
            await asyncio.wait_for(fut, 1.0)
        del c._calls[999]
        assert info.value.code is ErrorCode.BAD_FIELD
        # and a good name still registers and is served
        c.register("good.name", lambda a: a)
        await c.flush()
        await until(lambda: "good.name" in node.rpc.local_procedures(), 2.0, "registration")
        assert await c.call("good.name", b"hi") == b"hi"
