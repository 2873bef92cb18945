"""What CONNECT / CONNECTED prove, and the checks on them.

- identity_sig: the Ed25519 identity key signs its certificate's public key, so the
  node ID (SHA-256 of the identity key) is bound to the TLS key.
- The acceptor's TLS certificate is authenticated by the handshake itself.
- qh3 has no client certificates, so the dialer carries its certificate in CONNECT
  and signs, with that certificate's key, this connection's original destination
  connection ID and the acceptor's certificate key (cert_sig): fresh per
  connection and useless to replay towards any other node.
"""

from __future__ import annotations

import hashlib

from macula.errors import ErrorCode, SessionRefused
from macula.identity.crypto import cert_public_key, cert_verify, ed25519_verify, verify_chain

IDENTITY_CONTEXT = b"macula/1 identity\x00"
BIND_CONTEXT = b"macula/1 bind\x00"


def identity_message(cert_key: bytes) -> bytes:
    return IDENTITY_CONTEXT + cert_key


def bind_message(odcid: bytes, acceptor_cert_key: bytes) -> bytes:
    return BIND_CONTEXT + len(odcid).to_bytes(1, "big") + odcid + acceptor_cert_key


def check_identity(node_id: bytes, identity_key: bytes, identity_sig: bytes, cert_der: bytes) -> None:
    """Raise SessionRefused unless identity_key owns node_id and signed cert_der's key."""
    if hashlib.sha256(identity_key).digest() != node_id:
        raise SessionRefused("node ID is not the SHA-256 of the identity key",
                             code=ErrorCode.IDENTITY_INVALID)
    try:
        cert_key = cert_public_key(cert_der)
    except Exception:
        raise SessionRefused("certificate cannot be parsed", code=ErrorCode.IDENTITY_INVALID) from None
    if not ed25519_verify(identity_key, identity_message(cert_key), identity_sig):
        raise SessionRefused("identity signature over the certificate key is invalid",
                             code=ErrorCode.IDENTITY_INVALID)


def check_dialer_binding(cert_der: bytes, cert_sig: bytes, odcid: bytes,
                         acceptor_cert_key: bytes) -> None:
    if not cert_verify(cert_der, bind_message(odcid, acceptor_cert_key), cert_sig):
        raise SessionRefused("connection binding signature is invalid",
                             code=ErrorCode.IDENTITY_INVALID)


def check_chain(cert_der: bytes, chain_der: list[bytes], ca_file: str) -> None:
    reason = verify_chain(cert_der, chain_der, ca_file)
    if reason is not None:
        raise SessionRefused(f"certificate rejected by the CA bundle: {reason}",
                             code=ErrorCode.CERT_REJECTED)
