"""Signature primitives used at run time.

They come from qh3's TLS module (Rust, already resident for QUIC), so a running node
does not load `cryptography` (several MiB resident); that library is only imported to make
keys and certificates (first start, `macula keys`).
"""

from __future__ import annotations

from qh3.tls import (
    CryptoError, Ed25519PrivateKey, SignatureAlgorithm, SignatureError, X509Certificate,
    load_pem_private_key,
    verify_certificate, verify_with_public_key,
)

# DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the raw 32-byte key follows.
_ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
_EC_ALGORITHMS = {65: SignatureAlgorithm.ECDSA_SECP256R1_SHA256,
                  97: SignatureAlgorithm.ECDSA_SECP384R1_SHA384}


class Ed25519Signer:
    """Holds the identity private key (PKCS#8 DER) and signs with it."""

    __slots__ = ("_key", "public_key")

    def __init__(self, pkcs8_der: bytes) -> None:
        self._key = Ed25519PrivateKey(pkcs8_der)
        self.public_key = self._key.public_key()

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)


class CertKeySigner:
    """Signs with a TLS certificate's private key (ECDSA P-256 / P-384, PEM)."""

    __slots__ = ("_key",)

    def __init__(self, key_pem: bytes) -> None:
        key = load_pem_private_key(key_pem)
        if len(key.public_key()) not in _EC_ALGORITHMS:
            raise ValueError("certificate key must be ECDSA P-256 or P-384")
        self._key = key

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)


def ed25519_verify(raw_public_key: bytes, data: bytes, signature: bytes) -> bool:
    if len(raw_public_key) != 32:
        return False
    try:
        verify_with_public_key(_ED25519_SPKI_PREFIX + raw_public_key, SignatureAlgorithm.ED25519,
                               data, signature)
        return True
    except (CryptoError, SignatureError):
        return False


def cert_public_key(cert_der: bytes) -> bytes:
    """The certificate's subject public key bits (an uncompressed EC point)."""
    return X509Certificate(cert_der).public_key()


def cert_verify(cert_der: bytes, data: bytes, signature: bytes) -> bool:
    """Check a signature made with the private key of ``cert_der``."""
    try:
        key = cert_public_key(cert_der)
        algorithm = _EC_ALGORITHMS.get(len(key))
        if algorithm is None:
            return False
        verify_with_public_key(key, algorithm, data, signature)
        return True
    except (CryptoError, SignatureError, ValueError):
        return False


def verify_chain(cert_der: bytes, chain_der: list[bytes], ca_file: str) -> str | None:
    """Check ``cert_der`` chains to a CA in ``ca_file``; returns None or the reason."""
    try:
        verify_certificate(X509Certificate(cert_der), [X509Certificate(c) for c in chain_der],
                           cafile=ca_file, assert_server_name=False)
        return None
    except Exception as exc:  # qh3 raises Alert subclasses and CryptoError
        return str(exc) or type(exc).__name__
