"""Sessions between real nodes on loopback QUIC: both TLS modes, joining, refusals."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace

import pytest

from helpers import CertAuthority, NodeProcess, addr, peer_names, start_node, until
from macula.errors import ErrorCode, SessionRefused
from macula.identity import ephemeral_dev_material, ephemeral_identity
from macula.transport import Endpoint, PeerPool, PoolSettings, SessionConfig
from macula.client import connect


async def test_two_nodes_connect_in_development_mode(tmp_path):
    a = await start_node(tmp_path, "a")
    b = await start_node(tmp_path, "b", seeds=(addr(a),))
    try:
        await until(lambda: peer_names(a) == {"b"} and peer_names(b) == {"a"}, what="a<->b")
        session = b.pool.get(a.node_id)
        assert session.peer.node_id == a.node_id and session.peer.name == "a"
        assert session.peer.listen == a.listen_address
        # the pin was made on first use, on both sides, and written off the loop soon after
        def pinned(node: str, peer: str) -> bool:
            path = tmp_path / node / "known_peers.json"
            return path.exists() and path.read_text().count(f"test/{peer}") == 1

        await until(lambda: pinned("b", "a") and pinned("a", "b"), what="pins on disk")
    finally:
        await b.stop()
        await a.stop()


async def test_two_nodes_connect_in_production_mode(tmp_path):
    ca = CertAuthority(tmp_path / "ca")
    a = await start_node(tmp_path, "a", tls=ca.issue("a"))
    b = await start_node(tmp_path, "b", tls=ca.issue("b"), seeds=(addr(a),))
    try:
        await until(lambda: peer_names(a) == {"b"} and peer_names(b) == {"a"}, what="a<->b")
        assert not (tmp_path / "a" / "known_peers.json").exists()  # no TOFU in production
    finally:
        await b.stop()
        await a.stop()


async def test_production_refuses_certificates_outside_the_ca(tmp_path):
    ca = CertAuthority(tmp_path / "ca")
    other_ca = CertAuthority(tmp_path / "other", "Someone Else")
    a = await start_node(tmp_path, "a", tls=ca.issue("a"))
    try:
        # a dialer whose certificate another CA issued: the acceptor refuses it
        intruder = await start_node(tmp_path, "x", tls={**other_ca.issue("x"), "ca_file": str(ca.ca_file)})
        with pytest.raises(SessionRefused) as info:
            await intruder.pool.connect("127.0.0.1", a.listen_address[1])
        assert info.value.code is ErrorCode.CERT_REJECTED
        await intruder.stop()
        # a dialer that trusts only the other CA refuses a's certificate in the TLS handshake
        wary = await start_node(tmp_path, "w", tls={**ca.issue("w"), "ca_file": str(other_ca.ca_file)})
        with pytest.raises(SessionRefused):
            await wary.pool.connect("127.0.0.1", a.listen_address[1])
        await wary.stop()
        assert peer_names(a) == set()
    finally:
        await a.stop()


async def test_third_node_joins_through_a_seed(tmp_path):
    seed = await start_node(tmp_path, "seed")
    a = await start_node(tmp_path, "a", seeds=(addr(seed),))
    b = await start_node(tmp_path, "b", seeds=(addr(seed),))
    try:
        await until(lambda: peer_names(seed) == {"a", "b"}, what="both joined the seed")
        # the seed knows where b listens, so a can reach b through what the seed told it
        b_info = seed.pool.get(b.node_id).peer
        session = await a.pool.connect(*b_info.listen)
        assert session.peer.node_id == b.node_id
        await until(lambda: "a" in peer_names(b), what="b sees a")
    finally:
        for n in (b, a, seed):
            await n.stop()


async def test_wrong_realm_is_refused_with_a_code_not_a_hang(tmp_path):
    a = await start_node(tmp_path, "a", realm="kitchen")
    b = await start_node(tmp_path, "b", realm="garage")
    try:
        with pytest.raises(SessionRefused) as info:
            await asyncio.wait_for(b.pool.connect("127.0.0.1", a.listen_address[1]), 3)
        assert info.value.code is ErrorCode.REALM_MISMATCH
        assert "garage" in info.value.message and "kitchen" in info.value.message
        assert peer_names(a) == set()
    finally:
        await b.stop()
        await a.stop()


async def test_changed_key_for_a_pinned_name_is_refused(tmp_path):
    a = await start_node(tmp_path, "a")
    b = await start_node(tmp_path, "b", seeds=(addr(a),))
    await until(lambda: peer_names(a) == {"b"}, what="b pinned by a")
    await b.stop()
    await until(lambda: peer_names(a) == set(), what="b gone")
    # "b" reinstalled: same name, fresh state directory, new identity key
    impostor = await start_node(tmp_path / "reinstalled", "b")
    try:
        with pytest.raises(SessionRefused) as info:
            await impostor.pool.connect("127.0.0.1", a.listen_address[1])
        assert info.value.code is ErrorCode.PEER_KEY_CHANGED
        assert "macula keys forget b" in info.value.message
        # the operator forgets the pin; then the new key is accepted and pinned
        a.pool.cfg.trust.store.forget("b")
        session = await impostor.pool.connect("127.0.0.1", a.listen_address[1])
        assert session.peer.node_id == a.node_id
    finally:
        await impostor.stop()
        await a.stop()


async def test_dialer_refuses_a_seed_whose_key_changed(tmp_path):
    port_holder = await start_node(tmp_path, "seed")
    port = port_holder.listen_address[1]
    a = await start_node(tmp_path, "a", seeds=(f"127.0.0.1:{port}",))
    await until(lambda: peer_names(a) == {"seed"}, what="a pinned seed")
    await port_holder.stop()
    await until(lambda: peer_names(a) == set(), what="seed gone")
    fake = await start_node(tmp_path / "fake", "seed", port=port)
    try:
        with pytest.raises(SessionRefused) as info:
            await a.pool.connect("127.0.0.1", port)
        assert info.value.code is ErrorCode.PEER_KEY_CHANGED
    finally:
        await fake.stop()
        await a.stop()


async def _raw_endpoint():
    ident = ephemeral_identity()
    tls = ephemeral_dev_material(ident.node_id)
    ep = Endpoint(tls)
    ep.bind("127.0.0.1", 0)
    return ident, tls, ep


async def test_forged_identity_signature_is_refused(tmp_path):
    a = await start_node(tmp_path, "a")
    ident, tls, ep = await _raw_endpoint()
    victim = ephemeral_identity()
    # claims the victim's node ID and key but cannot sign with the victim's key
    cfg = SessionConfig(ident, tls, "test", "mallory", listen=ep.local_address)
    cfg.credentials = replace(cfg.credentials, identity_sig=ident.sign(b"anything"))
    object.__setattr__(cfg, "identity", victim.__class__(ident.signer, None))
    pool = PeerPool(ep, cfg, PoolSettings())
    try:
        with pytest.raises(SessionRefused) as info:
            await pool.connect("127.0.0.1", a.listen_address[1])
        assert info.value.code is ErrorCode.IDENTITY_INVALID
        # claiming someone else's node ID with our own valid signature fails too
        cfg2 = SessionConfig(ident, tls, "test", "mallory2", listen=ep.local_address)
        cfg2.identity = _Claiming(ident, victim.node_id)
        pool2 = PeerPool(ep, cfg2, PoolSettings())
        with pytest.raises(SessionRefused) as info:
            await pool2.connect("127.0.0.1", a.listen_address[1])
        assert info.value.code is ErrorCode.IDENTITY_INVALID
        assert peer_names(a) == set()
    finally:
        await pool.close()
        await a.stop()


class _Claiming:
    """An identity that signs with its own key but claims another node ID."""

    def __init__(self, real, claimed_id: bytes) -> None:
        self._real, self.node_id = real, claimed_id
        self.public_key = real.public_key

    def sign(self, data: bytes) -> bytes:
        return self._real.sign(data)


async def test_garbage_peer_is_disconnected_while_others_are_served(tmp_path):
    a = await start_node(tmp_path, "a")
    good = await connect(addr(a), realm="test", name="good")
    inbox = good.subscribe("t.x")
    await good.flush()
    _, _, ep = await _raw_endpoint()
    closed = asyncio.Event()
    try:
        # 1) garbage instead of CONNECT
        link = ep.dial("127.0.0.1", a.listen_address[1])
        link.on_handshake = lambda: link.queue(os.urandom(4096))
        link.on_closed = lambda code, reason: closed.set()
        await asyncio.wait_for(closed.wait(), 5)
        assert link.close_code is not None and link.close_code >= 0x1000
        # 2) a session that turns to garbage after it was established
        bad = await start_node(tmp_path, "bad", seeds=(addr(a),))
        await until(lambda: "bad" in peer_names(a) and bad.pool.get(a.node_id), what="bad joined")
        bad.pool.get(a.node_id).link.queue(b"\x01\x10\x00\x00\xff\xff\xff\xff" + os.urandom(64))
        await until(lambda: "bad" not in peer_names(a), what="bad disconnected")
        # 3) a peer that sends well-framed but invalid frames past the limit is cut off
        bad2 = await start_node(tmp_path, "bad2", seeds=(addr(a),))
        await until(lambda: "bad2" in peer_names(a) and bad2.pool.get(a.node_id),
                    what="bad2 joined")
        s = bad2.pool.get(a.node_id)
        for _ in range(20):
            s.link.queue(b"\x01\x10\x00\x00\x00\x00\x00\x01\xc0")  # PUBLISH with a nil body
        await until(lambda: "bad2" not in peer_names(a), what="bad2 disconnected")
        # the good client was served throughout
        await good.publish("t.x", b"still here")
        assert (await inbox.next(2)).payload == b"still here"
        # a cut-off node may come back (it redials its seed, a redials a cluster member)
        await bad.stop()
        await bad2.stop()
        await until(lambda: peer_names(a) == {"good"}, what="only the good client left")
    finally:
        ep.close()
        await good.close()
        await a.stop()


async def test_pool_reconnects_after_a_peer_restarts(tmp_path):
    seed = await start_node(tmp_path, "seed")
    port = seed.listen_address[1]
    a = await start_node(tmp_path, "a", seeds=(f"127.0.0.1:{port}",), connect=0.3)
    await until(lambda: peer_names(a) == {"seed"}, what="a joined seed")
    await seed.stop()
    await until(lambda: peer_names(a) == set(), what="seed gone")
    # it keeps redialling (with backoff) while the seed is down
    await until(lambda: a.pool.stats.dial_failures >= 2, what="failed redials")
    assert "seed" not in peer_names(a)
    seed2 = await start_node(tmp_path, "seed", port=port)  # same state dir: same identity
    try:
        await until(lambda: peer_names(a) == {"seed"}, timeout=10, what="a reconnected")
        assert a.pool.get(seed2.node_id) is not None
        assert a.pool.wanted() == {("127.0.0.1", port): ""}
    finally:
        await a.stop()
        await seed2.stop()


async def test_a_restarted_peer_is_readmitted_at_once_not_refused_as_a_duplicate(tmp_path):
    # make b's node ID the larger one and let a dial b: a restarted b dialling a would then
    # lose the simultaneous-dial rule (smaller dialer wins) against a's stale session
    from macula.identity import load_or_create_identity

    ids = {name: load_or_create_identity(tmp_path / name).node_id for name in ("x", "y")}
    small, large = sorted(ids, key=ids.get)
    (tmp_path / small).rename(tmp_path / "a")
    (tmp_path / large).rename(tmp_path / "b")
    b = NodeProcess(tmp_path, "b")
    b2 = None
    a = await start_node(tmp_path, "a", idle=60.0, seeds=(b.address,))
    try:
        await until(lambda: peer_names(a) == {"b"}, timeout=15, what="a dialled b")
        old = next(s for s in a.pool.peers() if s.peer.name == "b")
        assert old.dialer and old.peer.node_id > a.node_id
        b.kill()  # a crash: no GOAWAY, a still believes in the session (60 s idle timeout)
        b2 = await start_node(tmp_path, "b", seeds=(addr(a),))  # same identity, new process
        await until(lambda: a.pool.get(old.peer.node_id) not in (None, old), timeout=5,
                    what="restarted b readmitted")
        assert a.pool.get(old.peer.node_id).peer.boot != old.peer.boot
        assert b2.node_id == old.peer.node_id and b2.pool.get(a.node_id) is not None
    finally:
        b.kill()
        if b2 is not None:
            await b2.stop()
        await a.stop()
