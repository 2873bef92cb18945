"""The CONNECT / CONNECTED handshake driven as plain function calls: no QUIC, no event
loop. A dialer and an acceptor built from ephemeral identities exchange the messages
(through the real frame codec) with the facts a link would give them: the original
destination connection ID, the acceptor's certificate, the remote address."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from helpers import CertAuthority
from macula.errors import ErrorCode, SessionRefused
from macula.identity import (
    TofuStore, ephemeral_dev_material, ephemeral_identity, load_production_material,
)
from macula.transport import handshake
from macula.transport.handshake import (
    CaTrust, OpenTrust, PeerInfo, TofuTrust, accept_connect, accept_connected, build_connect,
    build_connected, default_trust, refused_by_peer,
)
from macula.transport.session import SessionConfig
from macula.wire import PROTOCOL_VERSION, FrameDecoder, encode
from macula.wire.messages import Error

DIALER_ADDR = ("::ffff:10.0.0.5", 40001)     # the dialer as the acceptor's socket sees it
ACCEPTOR_ADDR = ("192.168.1.9", 9443)        # the acceptor as the dialer's socket sees it


def _side(name: str, *, realm: str = "home", role: str = "node", trust=None, tls=None,
          listen: tuple[str, int] | None = ("0.0.0.0", 7001)) -> SessionConfig:
    ident = ephemeral_identity()
    tls = tls or ephemeral_dev_material(ident.node_id)
    return SessionConfig(ident, tls, realm, name, role=role,
                         listen=listen if role == "node" else None,
                         caps=("client",) if role == "client" else (), trust=trust)


def _wire(msg):
    """The message as the peer decodes it: what is sent is what is checked."""
    (decoded,) = FrameDecoder().feed(encode(msg))
    assert type(decoded) is type(msg)
    return decoded


def _connect(dialer: SessionConfig, acceptor: SessionConfig, odcid: bytes):
    return _wire(build_connect(dialer, odcid, acceptor.tls.cert_der))


def _exchange(dialer: SessionConfig, acceptor: SessionConfig) -> tuple[PeerInfo, PeerInfo, tuple]:
    """One full handshake: (the dialer as the acceptor sees it, the acceptor as the
    dialer sees it, the dialer's address as CONNECTED reports it)."""
    odcid = os.urandom(8)
    seen_dialer = accept_connect(acceptor, _connect(dialer, acceptor, odcid), odcid, DIALER_ADDR)
    connected = _wire(build_connected(acceptor, seen_dialer))
    seen_acceptor = accept_connected(dialer, connected, acceptor.tls.cert_der, ACCEPTOR_ADDR)
    return seen_dialer, seen_acceptor, tuple(connected.observed)


def _refused(code: ErrorCode, fn, *args) -> SessionRefused:
    with pytest.raises(SessionRefused) as info:
        fn(*args)
    assert info.value.code is code, info.value
    return info.value


def test_dialer_and_acceptor_end_with_each_others_peer_info():
    dialer, acceptor = _side("dialer"), _side("acceptor", listen=("192.168.1.9", 9443))
    seen_dialer, seen_acceptor, observed = _exchange(dialer, acceptor)

    assert seen_dialer == PeerInfo(
        dialer.identity.node_id, "dialer", "home", "node",
        ("10.0.0.5", 7001),  # 0.0.0.0: where the acceptor sees it, v4-mapped form dropped
        dialer.identity.public_key, dialer.caps, ("10.0.0.5", 40001), dialer.boot)
    assert seen_dialer.max_frame == dialer.max_frame
    assert seen_acceptor == PeerInfo(
        acceptor.identity.node_id, "acceptor", "home", "node", ("192.168.1.9", 9443),
        acceptor.identity.public_key, acceptor.caps, ACCEPTOR_ADDR, acceptor.boot)
    assert observed == ("10.0.0.5", 40001)


def test_a_light_client_is_accepted_without_a_listen_address():
    client, acceptor = _side("app", role="client"), _side("acceptor")
    seen_client, seen_acceptor, _ = _exchange(client, acceptor)
    assert (seen_client.role, seen_client.listen) == ("client", None)
    assert seen_acceptor.node_id == acceptor.identity.node_id


def test_wrong_realm_is_refused_on_both_sides():
    dialer, acceptor = _side("dialer", realm="garage"), _side("acceptor", realm="kitchen")
    odcid = os.urandom(8)
    err = _refused(ErrorCode.REALM_MISMATCH, accept_connect, acceptor,
                   _connect(dialer, acceptor, odcid), odcid, DIALER_ADDR)
    assert err.message == "realm 'garage' is not this node's realm 'kitchen'"

    same_realm = _side("acceptor", realm="garage")
    seen = accept_connect(same_realm, _connect(dialer, same_realm, odcid), odcid, DIALER_ADDR)
    connected = build_connected(same_realm, seen)._replace(realm="kitchen")
    _refused(ErrorCode.REALM_MISMATCH, accept_connected, dialer, connected,
             same_realm.tls.cert_der, ACCEPTOR_ADDR)


def test_wrong_version_is_refused_on_both_sides():
    dialer, acceptor = _side("dialer"), _side("acceptor")
    odcid = os.urandom(8)
    connect = _connect(dialer, acceptor, odcid)
    err = _refused(ErrorCode.VERSION_MISMATCH, accept_connect, acceptor,
                   connect._replace(version=PROTOCOL_VERSION + 1), odcid, DIALER_ADDR)
    assert err.message == f"protocol version {PROTOCOL_VERSION + 1} is not {PROTOCOL_VERSION}"

    connected = build_connected(acceptor, accept_connect(acceptor, connect, odcid, DIALER_ADDR))
    _refused(ErrorCode.VERSION_MISMATCH, accept_connected, dialer,
             connected._replace(version=PROTOCOL_VERSION + 1), acceptor.tls.cert_der,
             ACCEPTOR_ADDR)


def test_a_node_must_say_where_it_listens():
    dialer, acceptor = _side("dialer"), _side("acceptor")
    odcid = os.urandom(8)
    connect = _connect(dialer, acceptor, odcid)._replace(listen=None)
    err = _refused(ErrorCode.BAD_FIELD, accept_connect, acceptor, connect, odcid, DIALER_ADDR)
    assert err.message == "a node must say where it listens"


def test_a_connect_bound_to_another_connection_or_node_is_refused():
    dialer, acceptor = _side("dialer"), _side("acceptor")
    odcid = os.urandom(8)
    connect = _connect(dialer, acceptor, odcid)
    _refused(ErrorCode.IDENTITY_INVALID, accept_connect, acceptor, connect, odcid + b"\0",
             DIALER_ADDR)
    _refused(ErrorCode.IDENTITY_INVALID, accept_connect, _side("acceptor"), connect, odcid,
             DIALER_ADDR)
    # the acceptor's identity must have signed the TLS certificate the dialer saw
    connected = build_connected(acceptor, accept_connect(acceptor, connect, odcid, DIALER_ADDR))
    _refused(ErrorCode.IDENTITY_INVALID, accept_connected, dialer, connected,
             _side("other").tls.cert_der, ACCEPTOR_ADDR)


def test_a_dialer_without_the_acceptors_certificate_sends_nothing():
    _refused(ErrorCode.CERT_REJECTED, build_connect, _side("dialer"), os.urandom(8), None)


def test_tofu_refuses_a_second_key_under_a_pinned_name():
    store = TofuStore(None, 16)
    acceptor = _side("acceptor", trust=TofuTrust(store))
    _exchange(_side("n1"), acceptor)  # pins home/n1
    odcid = os.urandom(8)
    impostor = _side("n1")  # same name, another identity key
    err = _refused(ErrorCode.PEER_KEY_CHANGED, accept_connect, acceptor,
                   _connect(impostor, acceptor, odcid), odcid, DIALER_ADDR)
    assert "macula keys forget n1" in err.message
    assert [label for label, *_ in store.entries()] == ["home/n1"]


def test_tofu_never_pins_light_clients():
    store = TofuStore(None, 16)
    acceptor = _side("acceptor", trust=TofuTrust(store))
    for _ in range(2):  # two ephemeral identities under one client name
        seen, _, _ = _exchange(_side("app", role="client"), acceptor)
        assert seen.role == "client"
    assert len(store) == 0


def test_the_dialer_pins_the_acceptor_and_refuses_a_changed_key():
    store = TofuStore(None, 16)
    dialer = _side("dialer", trust=TofuTrust(store))
    _exchange(dialer, _side("seed"))
    err = _refused(ErrorCode.PEER_KEY_CHANGED, _exchange, dialer, _side("seed"))
    assert "'seed'" in err.message


class _RefuseAll:
    """An injected policy: records what it is asked, refuses everyone."""

    def __init__(self) -> None:
        self.asked: list[tuple] = []

    def check(self, realm, name, identity_key, cert_der, chain_der, pin, node_id=b"",
              credential=b"") -> None:
        self.asked.append((realm, name, identity_key, cert_der, tuple(chain_der), pin))
        raise SessionRefused(f"{name} is not a member", code=ErrorCode.CERT_REJECTED)


def test_an_injected_policy_decides_the_acceptors_answer():
    policy = _RefuseAll()
    dialer, acceptor = _side("dialer"), _side("acceptor", trust=policy)
    odcid = os.urandom(8)
    err = _refused(ErrorCode.CERT_REJECTED, accept_connect, acceptor,
                   _connect(dialer, acceptor, odcid), odcid, DIALER_ADDR)
    assert err.message == "dialer is not a member"
    # asked after the proofs, with the dialer's own certificate (it has no TLS one)
    assert policy.asked == [("home", "dialer", dialer.identity.public_key,
                             dialer.tls.cert_der, (), True)]


def test_an_injected_policy_decides_the_dialers_acceptance():
    policy = _RefuseAll()
    dialer, acceptor = _side("dialer", trust=policy), _side("acceptor")
    _refused(ErrorCode.CERT_REJECTED, _exchange, dialer, acceptor)
    # the TLS handshake authenticated the acceptor's certificate: none is passed
    assert policy.asked == [("home", "acceptor", acceptor.identity.public_key, None, (), True)]


def test_ca_trust_accepts_the_cas_certificates_only(tmp_path):
    ca = CertAuthority(tmp_path / "pki")
    files = ca.issue("member")
    ident = ephemeral_identity()
    member = SessionConfig(ident, load_production_material(files["cert_file"], files["key_file"],
                                                           files["ca_file"]),
                           "home", "member", listen=("10.0.0.5", 7001))
    acceptor = _side("acceptor", trust=CaTrust(str(ca.ca_file)))
    seen, _, _ = _exchange(member, acceptor)
    assert seen.node_id == ident.node_id
    odcid = os.urandom(8)
    err = _refused(ErrorCode.CERT_REJECTED, accept_connect, acceptor,
                   _connect(_side("outsider"), acceptor, odcid), odcid, DIALER_ADDR)
    assert err.message.startswith("certificate rejected by the CA bundle")


def test_default_trust_follows_the_tls_material(tmp_path):
    assert isinstance(_side("dev").trust, OpenTrust)
    files = CertAuthority(tmp_path / "pki").issue("prod")
    prod = _side("prod", tls=load_production_material(files["cert_file"], files["key_file"],
                                                      files["ca_file"]))
    assert isinstance(prod.trust, CaTrust) and prod.trust.ca_file == files["ca_file"]
    assert isinstance(default_trust(prod.tls), CaTrust)


def test_an_error_in_place_of_connected_is_the_peers_refusal():
    err = refused_by_peer(Error(int(ErrorCode.REALM_MISMATCH), "wrong realm"))
    assert (err.code, err.message) == (ErrorCode.REALM_MISMATCH, "peer refused: wrong realm")
    assert refused_by_peer(Error(59999, "?")).code is ErrorCode.PROTOCOL_VIOLATION


def test_the_handshake_module_does_no_io_and_does_not_import_the_session():
    tree = ast.parse(Path(handshake.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    forbidden = {"asyncio", "qh3", "socket", "macula.transport.session", "macula.transport.quic"}
    assert not {m for m in imported if m.split(".")[0] in forbidden or m in forbidden}
