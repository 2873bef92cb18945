"""The CONNECT / CONNECTED identity handshake as decisions without I/O.

The dialer sends CONNECT as its first frame; the acceptor checks version, realm,
identity binding and trust, and answers CONNECTED; the dialer checks CONNECTED.
These functions build and check those messages from the facts the link knows (its
original destination connection ID, the peer's TLS certificate, the remote address)
and either return the peer's ``PeerInfo`` or raise ``SessionRefused``. Sending,
timers and closing are the Session's (transport/session.py).

Whom to trust beyond the proofs (identity key owns the node ID and signed the TLS
key; the dialer signed this connection) is a ``TrustPolicy`` injected through the
session settings: pins on first use (development), a CA bundle (production), or none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Collection, NamedTuple, Protocol, Sequence

from macula.errors import ErrorCode, SessionRefused
from macula.identity.binding import (
    bind_message, check_chain, check_dialer_binding, check_identity, identity_message,
)
from macula.identity.crypto import cert_public_key
from macula.identity.realm import CredentialError, verify
from macula.wire.codec import PROTOCOL_VERSION
from macula.wire.messages import Connect, Connected, Error

if TYPE_CHECKING:
    from macula.identity import Identity, TlsMaterial, TofuStore

MAX_FRAME_CAP = "max_frame:"  # CONNECT cap: the largest frame body this side accepts


class PeerInfo(NamedTuple):
    node_id: bytes
    name: str
    realm: str
    role: str
    listen: tuple[str, int] | None
    identity_key: bytes
    caps: tuple[str, ...]
    address: tuple[str, int]        # the address this link talks to
    boot: bytes = b""               # the peer's process-start id
    @property
    def short_id(self) -> str:
        return self.node_id.hex()[:12]

    @property
    def max_frame(self) -> int | None:
        """The largest frame body the peer accepts (None: it did not say)."""
        for cap in self.caps:
            if cap.startswith(MAX_FRAME_CAP):
                try:
                    return int(cap[len(MAX_FRAME_CAP):])
                except ValueError:
                    return None
        return None


# -- trust ------------------------------------------------------------------------------
class TrustPolicy(Protocol):
    def check(self, realm: str, name: str, identity_key: bytes, cert_der: bytes | None,
              chain_der: Sequence[bytes], pin: bool, node_id: bytes = b"",
              credential: bytes = b"") -> None:
        """Raise SessionRefused unless this peer, already proved to own ``identity_key``
        (and so ``node_id``), may hold a session. ``cert_der`` is None on the dialer
        side, where the TLS handshake authenticated the acceptor's certificate; ``pin``
        is False for a light client, whose name may be shared by many ephemeral
        identities; ``credential`` is the realm membership it presented (or b"")."""


class OpenTrust:
    """Neither pins nor a CA: the identity and binding proofs alone (ephemeral clients,
    tests, benchmarks)."""

    def check(self, realm: str, name: str, identity_key: bytes, cert_der: bytes | None,
              chain_der: Sequence[bytes], pin: bool, node_id: bytes = b"",
              credential: bytes = b"") -> None:
        return None

    def __repr__(self) -> str:
        return "OpenTrust()"


class TofuTrust:
    """Development: the first identity key seen under a (realm, node name) is pinned and a
    later other key under that name refused (PEER_KEY_CHANGED). The store batches its
    writes off the event loop once started (identity/tofu.py)."""

    def __init__(self, store: "TofuStore") -> None:
        self.store = store

    def check(self, realm: str, name: str, identity_key: bytes, cert_der: bytes | None,
              chain_der: Sequence[bytes], pin: bool, node_id: bytes = b"",
              credential: bytes = b"") -> None:
        if pin:
            self.store.check_and_pin(realm, name, identity_key)

    def __repr__(self) -> str:
        return f"TofuTrust({self.store.path})"


class CaTrust:
    """Production: the certificate must chain to the CA bundle (CERT_REJECTED). The
    dialer has no certificate to check here: qh3 verified the acceptor's chain against
    the same bundle in the TLS handshake."""

    def __init__(self, ca_file: str) -> None:
        self.ca_file = ca_file

    def check(self, realm: str, name: str, identity_key: bytes, cert_der: bytes | None,
              chain_der: Sequence[bytes], pin: bool, node_id: bytes = b"",
              credential: bytes = b"") -> None:
        if cert_der is not None:
            check_chain(cert_der, list(chain_der), self.ca_file)

    def __repr__(self) -> str:
        return f"CaTrust({self.ca_file!r})"


class RealmTrust:
    """A closed realm: a node must present a membership credential signed by one of the
    realm's authority keys (identity/realm.py) before anything else counts; then the
    ``inner`` policy (TOFU, CA) decides, so TOFU pins only admitted nodes and nobody can
    squat a name. Light clients are not asked for one yet (docs/AUTH.md)."""

    def __init__(self, inner: TrustPolicy, authorities: Sequence[bytes],
                 clock: Callable[[], float], revoked: Callable[[], Collection[bytes]] = frozenset
                 ) -> None:
        self.inner = inner
        self.authorities = frozenset(authorities)
        self.clock = clock          # wall clock (credentials carry Unix times)
        self.revoked = revoked

    def check(self, realm: str, name: str, identity_key: bytes, cert_der: bytes | None,
              chain_der: Sequence[bytes], pin: bool, node_id: bytes = b"",
              credential: bytes = b"") -> None:
        if pin:  # a node (clients are admitted by the node they attach to)
            try:
                verify(credential, realm=realm, node_id=node_id, authorities=self.authorities,
                       now=self.clock(), revoked=self.revoked())
            except CredentialError as exc:
                raise SessionRefused(f"realm {realm!r}: {exc.message}",
                                     code=ErrorCode.CREDENTIAL_INVALID) from None
        self.inner.check(realm, name, identity_key, cert_der, chain_der, pin, node_id,
                         credential)

    def __repr__(self) -> str:
        return f"RealmTrust({len(self.authorities)} authorities, {self.inner!r})"


def default_trust(tls: "TlsMaterial") -> TrustPolicy:
    """The policy when none is given: production material is never left without its CA
    check; development material without a pin store trusts the proofs alone."""
    if tls.mode == "production":
        return CaTrust(tls.ca_file or "")
    return OpenTrust()


# -- this side --------------------------------------------------------------------------
@dataclass(frozen=True)
class LocalCredentials:
    """What this side proves in every handshake, derived once from its identity and TLS
    certificate (signing per session would cost an Ed25519 signature each time)."""
    cert_key: bytes       # the TLS certificate's public key
    identity_sig: bytes   # the identity key's signature over cert_key

    @classmethod
    def of(cls, identity: "Identity", tls: "TlsMaterial") -> "LocalCredentials":
        cert_key = cert_public_key(tls.cert_der)
        return cls(cert_key, identity.sign(identity_message(cert_key)))


class LocalSide(Protocol):
    """What the handshake reads of this side's settings (SessionConfig is one). Read at
    each handshake, not copied: a changed setting applies to the next session."""
    identity: "Identity"
    tls: "TlsMaterial"
    realm: str
    name: str
    role: str
    listen: tuple[str, int] | None
    caps: tuple[str, ...]
    boot: bytes
    credentials: LocalCredentials
    trust: TrustPolicy
    credential: bytes     # this side's realm membership (b"": none)


# -- the handshake ----------------------------------------------------------------------
def build_connect(local: LocalSide, odcid: bytes, peer_cert_der: bytes | None) -> Connect:
    """The dialer's CONNECT, once the TLS handshake is done: its certificate (qh3 has no
    client certificates) and a signature binding this connection to the acceptor."""
    if peer_cert_der is None:
        raise SessionRefused("peer presented no certificate", code=ErrorCode.CERT_REJECTED)
    cert_sig = local.tls.signer.sign(bind_message(odcid, cert_public_key(peer_cert_der)))
    return Connect(
        PROTOCOL_VERSION, local.identity.node_id, local.realm, local.role, local.name,
        local.listen, local.identity.public_key, local.credentials.identity_sig,
        local.tls.cert_der, cert_sig, local.tls.chain_der, local.caps, local.boot,
        local.credential)


def accept_connect(local: LocalSide, msg: Connect, odcid: bytes,
                   remote_addr: tuple) -> PeerInfo:
    """The acceptor's checks on CONNECT; the dialer it describes, or SessionRefused."""
    _check_version_and_realm(local, msg.version, msg.realm)
    if msg.role == "node" and msg.listen is None:
        raise SessionRefused("a node must say where it listens", code=ErrorCode.BAD_FIELD)
    check_identity(msg.node_id, msg.identity_key, msg.identity_sig, msg.cert)
    check_dialer_binding(msg.cert, msg.cert_sig, odcid, local.credentials.cert_key)
    # light clients are often ephemeral identities under one name: never pinned
    local.trust.check(local.realm, msg.name, msg.identity_key, msg.cert, msg.chain,
                      pin=msg.role == "node", node_id=msg.node_id, credential=msg.credential)
    return PeerInfo(msg.node_id, msg.name, msg.realm, msg.role,
                    _reachable(msg.listen, remote_addr), msg.identity_key, tuple(msg.caps),
                    _seen_at(remote_addr), msg.boot)


def build_connected(local: LocalSide, peer: PeerInfo) -> Connected:
    """The acceptor's answer to an accepted CONNECT: who it is, and where it sees the
    dialer (its observed address)."""
    return Connected(
        PROTOCOL_VERSION, local.identity.node_id, local.realm, local.name, local.listen,
        local.identity.public_key, local.credentials.identity_sig, peer.address, local.caps,
        local.boot, local.credential)


def accept_connected(local: LocalSide, msg: Connected, peer_cert_der: bytes,
                     remote_addr: tuple) -> PeerInfo:
    """The dialer's checks on CONNECTED (the acceptor's certificate is the one the TLS
    handshake authenticated); the acceptor it describes, or SessionRefused."""
    _check_version_and_realm(local, msg.version, msg.realm)
    check_identity(msg.node_id, msg.identity_key, msg.identity_sig, peer_cert_der)
    local.trust.check(local.realm, msg.name, msg.identity_key, None, (), pin=True,
                      node_id=msg.node_id, credential=msg.credential)
    return PeerInfo(msg.node_id, msg.name, msg.realm, "node",
                    _reachable(msg.listen, remote_addr), msg.identity_key, tuple(msg.caps),
                    _seen_at(remote_addr), msg.boot)


def refused_by_peer(msg: Error) -> SessionRefused:
    """An ERROR in place of CONNECTED (or CONNECT): the peer's refusal, with its code."""
    try:
        code = ErrorCode(msg.code)
    except ValueError:
        code = ErrorCode.PROTOCOL_VIOLATION
    return SessionRefused(f"peer refused: {msg.message}", code=code)


def _check_version_and_realm(local: LocalSide, version: int, realm: str) -> None:
    if version != PROTOCOL_VERSION:
        raise SessionRefused(f"protocol version {version} is not {PROTOCOL_VERSION}",
                             code=ErrorCode.VERSION_MISMATCH)
    if realm != local.realm:
        raise SessionRefused(f"realm {realm!r} is not this node's realm {local.realm!r}",
                             code=ErrorCode.REALM_MISMATCH)


def _seen_at(remote_addr: tuple) -> tuple[str, int]:
    return _plain_host(remote_addr[0]), remote_addr[1]


def _reachable(listen: tuple | None, remote_addr: tuple) -> tuple[str, int] | None:
    """A listen address of 0.0.0.0 / :: means "where you see me": use the source IP."""
    if listen is None:
        return None
    host, port = listen
    if host in ("0.0.0.0", "::"):
        host = _plain_host(remote_addr[0])
    return host, port


def _plain_host(host: str) -> str:
    """'::ffff:1.2.3.4' (a v4 peer on a dual-stack socket) -> '1.2.3.4'."""
    return host[7:] if host.startswith("::ffff:") else host
