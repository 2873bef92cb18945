"""A closed realm on real QUIC: nodes with a credential from the realm's authority join,
a node without one (or with another realm's, or an expired one) is refused with
CREDENTIAL_INVALID before TOFU pins it; an open realm is unchanged."""

from __future__ import annotations

import time

import pytest

from helpers import node_config, until
from macula.config import replace
from macula.errors import ConfigError, ErrorCode
from macula.identity.keys import ephemeral_identity, load_or_create_identity
from macula.identity.realm import issue
from macula.identity.tofu import TOFU_FILE
from macula.node import Node

AUTHORITY = ephemeral_identity()


def closed_config(tmp, name, *, credential=True, seeds=(), authority=AUTHORITY, realm="test",
                  expires=3600, issued=None):
    state = tmp / name
    node_id = load_or_create_identity(state).node_id
    cfg = node_config(state, name, realm="test", seeds=seeds)
    path = ""
    if credential:
        now = int(time.time())
        blob = issue(authority.sign, authority.public_key, realm, node_id, ("node",),
                     issued=issued or now - 10, expires=now + expires)
        (tmp / f"{name}.credential").write_bytes(blob)
        path = str(tmp / f"{name}.credential")
    return replace(cfg, node={"name": name, "realm": "test", "state_dir": str(state),
                              "realm_authorities": (AUTHORITY.public_key.hex(),),
                              "realm_credential": path})


def addr(node):
    return f"127.0.0.1:{node.listen_address[1]}"


async def test_admitted_nodes_join_and_status_says_closed(tmp_path):
    a = Node(closed_config(tmp_path, "a"), control=False)
    await a.start()
    b = Node(closed_config(tmp_path, "b", seeds=(addr(a),)), control=False)
    await b.start()
    try:
        await until(lambda: a.pool.get(b.node_id) is not None, what="b joined a")
        assert a.status()["realm_mode"] == "closed"
        assert b.pool.get(a.node_id) is not None
    finally:
        await b.stop()
        await a.stop()


@pytest.mark.parametrize("case", ["none", "other authority", "other realm", "expired"])
async def test_a_node_without_a_valid_credential_is_refused(tmp_path, case):
    a = Node(closed_config(tmp_path, "a"), control=False)
    await a.start()
    stranger = Node(node_config(tmp_path / "s", "s", realm="test"), control=False)  # open realm
    await stranger.start()
    now = int(time.time())
    signer, realm, issued, expires = AUTHORITY, "test", now - 10, now + 3600
    if case == "other authority":
        signer = ephemeral_identity()
    elif case == "other realm":
        realm = "elsewhere"
    elif case == "expired":
        issued, expires = now - 100, now - 5
    if case != "none":  # what it presents in CONNECT (read at each handshake)
        stranger.pool.cfg.credential = issue(signer.sign, signer.public_key, realm,
                                             stranger.node_id, ("node",), issued=issued,
                                             expires=expires)
    try:
        with pytest.raises(Exception) as err:
            await stranger.pool.connect("127.0.0.1", a.listen_address[1], timeout=3)
        assert getattr(err.value, "code", None) is ErrorCode.CREDENTIAL_INVALID, err.value
        assert a.pool.get(stranger.node_id) is None
    finally:
        await stranger.stop()
        await a.stop()
    pins = tmp_path / "a" / TOFU_FILE
    assert not pins.exists() or stranger.node_id.hex() not in pins.read_text()  # never pinned


def test_a_closed_realm_node_without_its_own_credential_does_not_start(tmp_path):
    import asyncio

    node = Node(closed_config(tmp_path, "a", credential=False), control=False)
    with pytest.raises(ConfigError, match="node.realm_credential"):
        asyncio.run(node.start())


async def test_failed_authentications_are_limited_per_source(tmp_path):
    from macula.transport.authlimit import FailedAuth

    a = Node(closed_config(tmp_path, "a"), control=False)
    await a.start()
    a.pool.cfg.failed_auth = FailedAuth(limit=3, window=60.0)
    stranger = Node(node_config(tmp_path / "s", "s", realm="test"), control=False)
    await stranger.start()
    codes = []
    try:
        for _ in range(5):
            with pytest.raises(Exception) as err:
                await stranger.pool.connect("127.0.0.1", a.listen_address[1], timeout=3)
            codes.append(getattr(err.value, "code", None))
    finally:
        await stranger.stop()
    assert codes == [ErrorCode.CREDENTIAL_INVALID] * 3 + [ErrorCode.RATE_LIMITED] * 2
    assert a.status()["auth"] == {"failed": 3, "refused_early": 2}
    await a.stop()


async def test_a_revoked_node_is_refused_though_its_credential_is_valid(tmp_path):
    from macula.identity.realm import issue_revocations

    stranger_id = load_or_create_identity(tmp_path / "s").node_id
    revoked = tmp_path / "revoked"
    revoked.write_bytes(issue_revocations(AUTHORITY.sign, AUTHORITY.public_key, "test",
                                          [stranger_id], serial=1))
    cfg = closed_config(tmp_path, "a")
    a = Node(replace(cfg, node={**_node_section(cfg), "realm_revocations": str(revoked)}),
             control=False)
    await a.start()
    s = Node(closed_config(tmp_path, "s"), control=False)   # a valid credential
    await s.start()
    try:
        with pytest.raises(Exception) as err:
            await s.pool.connect("127.0.0.1", a.listen_address[1], timeout=3)
        assert getattr(err.value, "code", None) is ErrorCode.CREDENTIAL_INVALID
        assert "revoked" in str(err.value)
    finally:
        await s.stop()
        await a.stop()
    own = Node(replace(cfg, node={**_node_section(closed_config(tmp_path, "s")),
                                  "realm_revocations": str(revoked)}), control=False)
    with pytest.raises(ConfigError, match="own id is revoked"):
        await own.start()


def _node_section(cfg) -> dict:
    import dataclasses

    return dataclasses.asdict(cfg.node)
