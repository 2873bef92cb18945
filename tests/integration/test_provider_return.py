"""Advertise and recovery (issue 19, point 6): after a provider's node and its service
restart, callers on another node reach it again within about a gossip round (in a named
cluster) or a lookup (DHT only), not after seconds of NO_RESPONDERS; `macula withdraw`
removes a record `macula advertise` made."""

from __future__ import annotations

import asyncio

import pytest

from helpers import addr, node_config, start_node, until
from macula.client import CallError, connect
from macula.errors import ErrorCode
from macula.node import Node

CLUSTER = {"name": "home", "probe_interval": 0.5, "probe_timeout": 0.25, "suspicion_mult": 4}


async def _callable_after(caller, procedure: str, limit: float) -> float:
    """Seconds until ``procedure`` answers, calling every 50 ms (bounded by ``limit``)."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while True:
        try:
            assert await caller.call(procedure, b"", timeout=1.0) == b"back"
            return loop.time() - t0
        except CallError as exc:
            assert exc.code in (ErrorCode.NO_RESPONDERS, ErrorCode.CALL_TIMEOUT), exc
        if loop.time() - t0 > limit:
            raise AssertionError(f"{procedure} not callable within {limit} s")
        await asyncio.sleep(0.05)  # the call rate of a retrying caller, not a wait for state


@pytest.mark.parametrize("cluster", [CLUSTER, None], ids=["cluster", "dht"])
async def test_a_returning_provider_is_callable_again_at_once(tmp_path, cluster):
    a = await start_node(tmp_path, "a", cluster=cluster)
    b = await start_node(tmp_path, "b", seeds=(addr(a),), cluster=cluster)
    port = b.listen_address[1]
    provider = await connect(addr(b), realm="test", reconnect_base=0.05, reconnect_cap=0.2)
    caller = await connect(addr(a), realm="test", reconnect=False)
    try:
        provider.register("svc.back", lambda _: b"back")
        await provider.flush()
        assert await _callable_after(caller, "svc.back", 10.0) < 10.0
        await b.stop()
        with pytest.raises(CallError):  # gone: the caller learns it
            await caller.call("svc.back", b"", timeout=1.0)
        b = Node(node_config(tmp_path / "b", "b", seeds=(addr(a),), port=port,
                             cluster=cluster or {}))
        await b.start()
        await until(lambda: provider.connected and "svc.back" in b.rpc.local_procedures(),
                    10.0, "the provider back on b")
        took = await _callable_after(caller, "svc.back", 10.0)
        assert took < 2.0, f"callable {took:.2f} s after the provider returned"
    finally:
        await provider.close()
        await caller.close()
        await b.stop()
        await a.stop()


async def test_macula_withdraw_deletes_what_advertise_published(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    agent = Path(__file__).resolve().parents[2] / "agent"
    a = await start_node(tmp_path, "a", control=True)
    b = await start_node(tmp_path, "b", seeds=(addr(a),))
    conf = tmp_path / "a.toml"
    conf.write_text(f'[node]\nruntime_dir = "{a.runtime_dir}"\n')
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(agent), "HOME": str(tmp_path)}

    async def macula(*argv: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "macula", *argv, "--config", str(conf), env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode, out.decode(), err.decode()

    try:
        await until(lambda: len(b.dht.core.table) >= 1 and len(a.dht.core.table) >= 1, 10.0,
                    "a and b know each other")
        rc, out, err = await macula("advertise", "printer", "--meta", "room=hall")
        assert rc == 0 and out.startswith("advertised 'printer' on "), err
        found = await b.dht.discover("printer")
        assert [p.node_id for p in found] == [a.node_id] and found[0].metadata == {"room": "hall"}

        rc, out, err = await macula("withdraw", "printer")
        assert rc == 0 and out.startswith("withdrew 'printer': record deleted on "), err
        assert await b.dht.discover("printer") == ()
        assert "printer" not in a.dht.registry.advertised()  # not republished either

        rc, out, err = await macula("withdraw", "never-advertised")
        assert rc == 1 and "'never-advertised' was not advertised by this node" in err
        rc, _, err = await macula("withdraw", "bad name!")
        assert rc == 2 and "error 106 BAD_FIELD: bad service name" in err
    finally:
        await b.stop()
        await a.stop()


def test_advertise_ttl_help_says_what_the_ttl_is():
    from macula.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    ttl = next(a for a in sub.choices["advertise"]._actions if a.dest == "ttl")
    assert "seconds" in ttl.help and "republishes it while it runs" in ttl.help
