"""Identity key, TLS material, the CONNECT binding, CA chains and the TOFU store."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import macula.identity.files as files
from macula.errors import ConfigError, ErrorCode, SessionRefused, StateError
from macula.identity import (
    TofuStore, ephemeral_dev_material, ephemeral_identity, load_or_create_dev_material,
    load_or_create_identity, load_production_material, node_id_of,
)
from macula.identity.binding import (
    BIND_CONTEXT, IDENTITY_CONTEXT, bind_message, check_chain, check_dialer_binding,
    check_identity, identity_message,
)
from macula.identity.crypto import cert_verify, ed25519_verify
from macula.identity.files import write_atomic

PEM = serialization.Encoding.PEM


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# ---- a test PKI ---------------------------------------------------------------------
def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_pem(key) -> bytes:
    return key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def issue(subject: str, issuer_cert, issuer_key, *, ca: bool, key=None, expired: bool = False):
    """(cert, key): ECDSA P-256; self-signed when issuer_cert is None."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    if expired:
        now -= datetime.timedelta(days=60)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_cert.subject if issuer_cert is not None else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False,
        ).add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    signer = issuer_key if issuer_key is not None else key
    return builder.sign(signer, hashes.SHA256()), key


class Pki:
    """A root CA, an intermediate, and helpers to write PEM files."""

    def __init__(self, root: Path) -> None:
        self.dir = root
        self.ca, self.ca_key = issue("Macula Test CA", None, None, ca=True)
        self.ca_file = self.write("ca.pem", self.ca.public_bytes(PEM))

    def write(self, name: str, data: bytes) -> str:
        path = self.dir / name
        path.write_bytes(data)
        return str(path)

    def node(self, name: str, issuer=None, issuer_key=None, chain=()):
        """Write name.crt (leaf + chain) and name.key; return (cert_file, key_file, cert)."""
        cert, key = issue(name, issuer or self.ca, issuer_key or self.ca_key, ca=False)
        pem = cert.public_bytes(PEM) + b"".join(c.public_bytes(PEM) for c in chain)
        return self.write(f"{name}.crt", pem), self.write(f"{name}.key", _key_pem(key)), cert


@pytest.fixture
def pki(tmp_path) -> Pki:
    return Pki(tmp_path)


def der(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


# ---- identity key -------------------------------------------------------------------
def test_identity_is_created_private_and_atomically(tmp_path):
    state = tmp_path / "state"
    ident = load_or_create_identity(state)
    path = state / "identity.key"
    assert ident.path == path and mode_of(path) == 0o600 and mode_of(state) == 0o700
    assert sorted(os.listdir(state)) == ["identity.key"]  # no temporary file left
    assert len(ident.public_key) == 32
    assert ident.node_id == hashlib.sha256(ident.public_key).digest()
    assert ident.node_id == node_id_of(ident.public_key)
    before = path.read_bytes()
    again = load_or_create_identity(state)
    assert again.node_id == ident.node_id and path.read_bytes() == before
    signature = again.sign(b"hello")
    assert ed25519_verify(ident.public_key, b"hello", signature)
    assert not ed25519_verify(ident.public_key, b"hellO", signature)


def test_identity_mode_ignores_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        load_or_create_identity(tmp_path)
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "identity.key") == 0o600


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o610])
def test_identity_readable_by_others_is_refused(tmp_path, mode):
    load_or_create_identity(tmp_path)
    path = tmp_path / "identity.key"
    path.chmod(mode)
    with pytest.raises(StateError) as info:
        load_or_create_identity(tmp_path)
    assert info.value.code is ErrorCode.STATE_INVALID
    assert str(path) in info.value.message and f"chmod 600 {path}" in info.value.message


def _ecdsa_pem() -> bytes:
    return _key_pem(ec.generate_private_key(ec.SECP256R1()))


@pytest.mark.parametrize("content,reason", [
    (b"", "not a PEM"),
    (b"garbage\n", "not a PEM"),
    (b"-----BEGIN PRIVATE KEY-----\n!!!not base64!!!\n-----END PRIVATE KEY-----\n", "not a valid"),
    (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "not a valid"),
    (None, "not a valid"),  # an ECDSA key where an Ed25519 one belongs
])
def test_corrupt_identity_is_refused_and_left_alone(tmp_path, content, reason):
    path = tmp_path / "identity.key"
    content = _ecdsa_pem() if content is None else content
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(StateError, match=reason):
        load_or_create_identity(tmp_path)
    assert path.read_bytes() == content  # never silently replaced: that would be a new node


def test_unreadable_identity_is_a_state_error(tmp_path):
    (tmp_path / "identity.key").mkdir(mode=0o700)
    with pytest.raises(StateError, match="cannot read identity key"):
        load_or_create_identity(tmp_path)


def test_ephemeral_identities_differ_and_touch_no_file():
    a, b = ephemeral_identity(), ephemeral_identity()
    assert a.path is None and a.node_id != b.node_id


# ---- atomic writes ------------------------------------------------------------------
def test_write_atomic_replaces_whole_file_with_the_given_mode(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"old")
    path.chmod(0o644)
    write_atomic(path, b"new" * 1000, 0o600)
    assert path.read_bytes() == b"new" * 1000 and mode_of(path) == 0o600
    assert os.listdir(tmp_path) == ["f"]


@pytest.mark.parametrize("fail", ["replace", "fsync", "write"])
def test_write_atomic_failure_leaves_old_file_and_no_temporary(tmp_path, monkeypatch, fail):
    path = tmp_path / "f"
    path.write_bytes(b"old")

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, fail, boom)
    with pytest.raises(OSError):
        write_atomic(path, b"new", 0o600)
    monkeypatch.undo()
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["f"]


# ---- development material -----------------------------------------------------------
def test_dev_material_is_created_and_reloaded(tmp_path):
    node_id = ephemeral_identity().node_id
    tls = load_or_create_dev_material(tmp_path, node_id)
    tls_dir = tmp_path / "tls"
    assert tls.mode == "development" and tls.ca_file is None and tls.chain_der == ()
    assert mode_of(tls_dir) == 0o700 and sorted(os.listdir(tls_dir)) == ["node.crt", "node.key"]
    assert mode_of(tls_dir / "node.key") == 0o600
    cert = x509.load_der_x509_certificate(tls.cert_der)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    assert cert.subject.rfc4514_string() == f"CN=macula-{node_id.hex()[:16]}"
    assert len(tls.public_key) == 65 and tls.public_key[0] == 4  # uncompressed P-256 point
    assert cert_verify(tls.cert_der, b"data", tls.signer.sign(b"data"))
    again = load_or_create_dev_material(tmp_path, node_id)
    assert again.cert_der == tls.cert_der and again.key_pem == tls.key_pem


def test_dev_material_is_regenerated_when_half_missing(tmp_path):
    node_id = ephemeral_identity().node_id
    first = load_or_create_dev_material(tmp_path, node_id)
    (tmp_path / "tls" / "node.crt").unlink()
    second = load_or_create_dev_material(tmp_path, node_id)
    assert second.cert_der != first.cert_der and second.public_key != first.public_key


def test_dev_material_with_foreign_key_or_bad_cert_is_refused(tmp_path):
    node_id = ephemeral_identity().node_id
    load_or_create_dev_material(tmp_path, node_id)
    key_path, cert_path = tmp_path / "tls" / "node.key", tmp_path / "tls" / "node.crt"
    good_key = key_path.read_bytes()
    key_path.write_bytes(_ecdsa_pem())
    with pytest.raises(StateError, match="does not belong to the certificate"):
        load_or_create_dev_material(tmp_path, node_id)
    key_path.write_bytes(good_key)
    cert_path.write_bytes(b"not a certificate")
    with pytest.raises(StateError, match="no PEM certificate"):
        load_or_create_dev_material(tmp_path, node_id)


def test_ephemeral_dev_material():
    tls = ephemeral_dev_material(b"\x01" * 32)
    assert tls.mode == "development" and cert_verify(tls.cert_der, b"x", tls.signer.sign(b"x"))


# ---- production material ------------------------------------------------------------
def test_production_material_accepts_ca_issued_files(pki):
    cert_file, key_file, cert = pki.node("node1")
    tls = load_production_material(cert_file, key_file, pki.ca_file)
    assert tls.mode == "production" and tls.ca_file == pki.ca_file
    assert tls.cert_der == der(cert) and tls.chain_der == ()
    assert cert_verify(tls.cert_der, b"x", tls.signer.sign(b"x"))


def test_production_material_keeps_intermediates(pki):
    inter, inter_key = issue("Intermediate", pki.ca, pki.ca_key, ca=True)
    cert_file, key_file, cert = pki.node("node2", inter, inter_key, chain=[inter])
    tls = load_production_material(cert_file, key_file, pki.ca_file)
    assert tls.cert_der == der(cert) and tls.chain_der == (der(inter),)


def test_production_material_refuses_a_key_that_does_not_match(pki):
    cert_file, _, _ = pki.node("node1")
    _, other_key, _ = pki.node("node2")
    with pytest.raises(StateError, match="does not belong to the certificate"):
        load_production_material(cert_file, other_key, pki.ca_file)


def test_production_material_refuses_a_non_ecdsa_key(pki):
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert, _ = issue("rsa-node", pki.ca, pki.ca_key, ca=False, key=rsa_key)
    cert_file = pki.write("rsa.crt", cert.public_bytes(PEM))
    key_file = pki.write("rsa.key", _key_pem(rsa_key))
    with pytest.raises(StateError, match="ECDSA"):
        load_production_material(cert_file, key_file, pki.ca_file)


@pytest.mark.parametrize("missing", ["tls.cert_file", "tls.key_file", "tls.ca_file"])
def test_production_material_missing_file_is_a_config_error(pki, missing):
    cert_file, key_file, _ = pki.node("node1")
    paths = {"tls.cert_file": cert_file, "tls.key_file": key_file, "tls.ca_file": pki.ca_file}
    paths[missing] = str(pki.dir / "absent.pem")
    with pytest.raises(ConfigError) as info:
        load_production_material(*paths.values())
    assert info.value.code is ErrorCode.CONFIG_INVALID
    assert missing in info.value.message and "absent.pem" in info.value.message


def test_production_ca_file_without_certificates_is_a_config_error(pki):
    cert_file, key_file, _ = pki.node("node1")
    empty_ca = pki.write("empty.pem", b"# nothing here\n")
    with pytest.raises(ConfigError, match="tls.ca_file"):
        load_production_material(cert_file, key_file, empty_ca)


# ---- CONNECT binding ----------------------------------------------------------------
@pytest.fixture(scope="module")
def two_nodes():
    """Two identities with their development certificates and identity signatures."""
    nodes = []
    for _ in range(2):
        ident = ephemeral_identity()
        tls = ephemeral_dev_material(ident.node_id)
        nodes.append((ident, tls, ident.sign(identity_message(tls.public_key))))
    return nodes


def refused(fn, *args) -> SessionRefused:
    with pytest.raises(SessionRefused) as info:
        fn(*args)
    return info.value


def test_signed_messages_have_the_documented_layout():
    assert identity_message(b"K") == b"macula/1 identity\x00K" == IDENTITY_CONTEXT + b"K"
    odcid = bytes(range(8))
    assert bind_message(odcid, b"K") == b"macula/1 bind\x00" + b"\x08" + odcid + b"K"
    assert BIND_CONTEXT == b"macula/1 bind\x00"


def test_check_identity_accepts_a_valid_claim(two_nodes):
    ident, tls, sig = two_nodes[0]
    check_identity(ident.node_id, ident.public_key, sig, tls.cert_der)


def test_check_identity_refuses_forgeries(two_nodes):
    (a, a_tls, a_sig), (b, b_tls, b_sig) = two_nodes
    forgeries = {
        "someone else's node id": (b.node_id, a.public_key, a_sig, a_tls.cert_der),
        "someone else's key for our id": (a.node_id, b.public_key, b_sig, a_tls.cert_der),
        "signature over another certificate": (a.node_id, a.public_key, a_sig, b_tls.cert_der),
        "their signature, our key": (a.node_id, a.public_key, b_sig, a_tls.cert_der),
        "signature by another key over our cert": (
            a.node_id, a.public_key, b.sign(identity_message(a_tls.public_key)), a_tls.cert_der),
        "signature without the context": (a.node_id, a.public_key, a.sign(a_tls.public_key),
                                          a_tls.cert_der),
        "flipped signature bit": (a.node_id, a.public_key, bytes([a_sig[0] ^ 1]) + a_sig[1:],
                                  a_tls.cert_der),
        "short signature": (a.node_id, a.public_key, a_sig[:63], a_tls.cert_der),
        "unparsable certificate": (a.node_id, a.public_key, a_sig, b"\x30\x03junk"),
    }
    for what, args in forgeries.items():
        err = refused(check_identity, *args)
        assert err.code is ErrorCode.IDENTITY_INVALID, what


def test_dialer_binding_accepts_the_right_connection(two_nodes):
    (_, dialer_tls, _), (_, acceptor_tls, _) = two_nodes
    odcid = os.urandom(8)
    cert_sig = dialer_tls.signer.sign(bind_message(odcid, acceptor_tls.public_key))
    check_dialer_binding(dialer_tls.cert_der, cert_sig, odcid, acceptor_tls.public_key)


def test_dialer_binding_refuses_replays_and_forgeries(two_nodes):
    (_, dialer_tls, _), (_, acceptor_tls, _) = two_nodes
    odcid = bytes(8)
    cert_sig = dialer_tls.signer.sign(bind_message(odcid, acceptor_tls.public_key))
    other = ephemeral_dev_material(b"\x02" * 32)
    cases = {
        "replayed on another connection": (dialer_tls.cert_der, cert_sig, b"\x01" * 8,
                                           acceptor_tls.public_key),
        "replayed to another acceptor": (dialer_tls.cert_der, cert_sig, odcid, other.public_key),
        "claiming another certificate": (other.cert_der, cert_sig, odcid, acceptor_tls.public_key),
        "signed by another key": (dialer_tls.cert_der,
                                  other.signer.sign(bind_message(odcid, acceptor_tls.public_key)),
                                  odcid, acceptor_tls.public_key),
        "garbage signature": (dialer_tls.cert_der, b"\x00" * 70, odcid, acceptor_tls.public_key),
        "garbage certificate": (b"junk", cert_sig, odcid, acceptor_tls.public_key),
    }
    for what, args in cases.items():
        assert refused(check_dialer_binding, *args).code is ErrorCode.IDENTITY_INVALID, what


def test_check_chain_accepts_ca_issued_and_refuses_self_signed(pki):
    _, _, cert = pki.node("node1")
    check_chain(der(cert), [], pki.ca_file)
    self_signed = ephemeral_dev_material(b"\x03" * 32)
    err = refused(check_chain, self_signed.cert_der, [], pki.ca_file)
    assert err.code is ErrorCode.CERT_REJECTED and "CA bundle" in err.message


def test_check_chain_with_intermediates_and_foreign_cas(pki, tmp_path):
    inter, inter_key = issue("Intermediate", pki.ca, pki.ca_key, ca=True)
    _, _, leaf = pki.node("node2", inter, inter_key)
    check_chain(der(leaf), [der(inter)], pki.ca_file)
    assert refused(check_chain, der(leaf), [], pki.ca_file).code is ErrorCode.CERT_REJECTED
    other_ca, other_key = issue("Other CA", None, None, ca=True)
    foreign, _ = issue("intruder", other_ca, other_key, ca=False)
    assert refused(check_chain, der(foreign), [], pki.ca_file).code is ErrorCode.CERT_REJECTED
    assert refused(check_chain, der(foreign), [der(other_ca)], pki.ca_file).code \
        is ErrorCode.CERT_REJECTED
    assert refused(check_chain, b"junk", [], pki.ca_file).code is ErrorCode.CERT_REJECTED
    expired, _ = issue("old-node", pki.ca, pki.ca_key, ca=False, expired=True)
    assert refused(check_chain, der(expired), [], pki.ca_file).code is ErrorCode.CERT_REJECTED


# ---- TOFU ---------------------------------------------------------------------------
class WallClock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        self.t += 1
        return self.t


KEY_A, KEY_B, KEY_C = b"\xaa" * 32, b"\xbb" * 32, b"\xcc" * 32


def test_tofu_pins_first_key_and_refuses_a_changed_one(tmp_path):
    path = tmp_path / "known_peers.json"
    store = TofuStore(path, 10, WallClock())
    assert store.check_and_pin("lab", "pi1", KEY_A) is True
    assert store.check_and_pin("lab", "pi1", KEY_A) is False
    assert mode_of(path) == 0o600
    err = refused(store.check_and_pin, "lab", "pi1", KEY_B)
    assert err.code is ErrorCode.PEER_KEY_CHANGED
    assert "macula keys forget pi1" in err.message and KEY_A.hex()[:16] in err.message
    assert [(label, key) for label, key, *_ in store.entries()] == [("lab/pi1", KEY_A.hex())]
    assert store.check_and_pin("other-realm", "pi1", KEY_B) is True  # realms are separate


def test_tofu_survives_a_reload(tmp_path):
    path = tmp_path / "known_peers.json"
    first = TofuStore(path, 10, WallClock())
    first.check_and_pin("lab", "pi1", KEY_A)
    first.check_and_pin("lab", "pi2", KEY_B)
    data = json.loads(path.read_text())
    assert data["version"] == 1 and set(data["peers"]) == {"lab/pi1", "lab/pi2"}
    second = TofuStore(path, 10, WallClock())
    assert len(second) == 2 and second.check_and_pin("lab", "pi1", KEY_A) is False
    assert refused(second.check_and_pin, "lab", "pi2", KEY_A).code is ErrorCode.PEER_KEY_CHANGED


def test_tofu_is_bounded_and_evicts_the_least_recently_seen(tmp_path):
    path = tmp_path / "known_peers.json"
    store = TofuStore(path, 3, WallClock())
    for name in ("a", "b", "c"):
        store.check_and_pin("lab", name, KEY_A)
    store.check_and_pin("lab", "a", KEY_A)          # a seen again: b is now the oldest
    store.check_and_pin("lab", "d", KEY_A)
    assert [e[0] for e in store.entries()] == ["lab/c", "lab/a", "lab/d"]
    assert len(json.loads(path.read_text())["peers"]) == 3
    # the same order survives a reload, and a smaller capacity keeps the most recent
    assert [e[0] for e in TofuStore(path, 3).entries()] == ["lab/c", "lab/a", "lab/d"]
    assert [e[0] for e in TofuStore(path, 2).entries()] == ["lab/a", "lab/d"]
    # an evicted pin is a stranger again
    assert store.check_and_pin("lab", "b", KEY_B) is True


def test_tofu_forget(tmp_path):
    path = tmp_path / "known_peers.json"
    store = TofuStore(path, 10, WallClock())
    store.check_and_pin("lab", "pi1", KEY_A)
    store.check_and_pin("home", "pi1", KEY_A)
    store.check_and_pin("lab", "pi2", KEY_A)
    assert store.forget("pi1", realm="home") == 1
    assert store.forget("absent") == 0
    assert store.forget("pi1") == 1
    assert store.check_and_pin("lab", "pi1", KEY_C) is True  # a reinstalled node is accepted
    reloaded = {label: key for label, key, *_ in TofuStore(path, 10).entries()}
    assert reloaded == {"lab/pi1": KEY_C.hex(), "lab/pi2": KEY_A.hex()}


def test_tofu_in_memory_writes_nothing(tmp_path):
    store = TofuStore(None, 2)
    store.check_and_pin("lab", "x", KEY_A)
    assert len(store) == 1 and os.listdir(tmp_path) == []
    with pytest.raises(ValueError):
        TofuStore(None, 0)


@pytest.mark.parametrize("content", [
    "not json", "[]", '{"peers": []}', '{"peers": {"lab/x": {"key": "zz", "first_seen": 1, '
    '"last_seen": 1}}}', '{"peers": {"lab/x": {"key": "aa"}}}', '{"nope": 1}', "\udcff",
])
def test_tofu_unreadable_store_is_a_state_error(tmp_path, content):
    path = tmp_path / "known_peers.json"
    path.write_bytes(content.encode("utf-8", "surrogateescape"))
    with pytest.raises(StateError) as info:
        TofuStore(path, 10)
    assert info.value.code is ErrorCode.STATE_INVALID
    assert str(path) in info.value.message and "move it away" in info.value.message


def test_tofu_store_that_is_a_directory_is_a_state_error(tmp_path):
    path = tmp_path / "known_peers.json"
    path.mkdir()
    with pytest.raises(StateError):
        TofuStore(path, 10)
