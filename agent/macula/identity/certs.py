"""TLS material: a self-signed ECDSA P-256 certificate (development) or CA-issued files
(production). qh3 refuses Ed25519 server certificates, so the certificate key is
ECDSA and the Ed25519 identity is bound to it by a signature (see session binding).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from pathlib import Path

from macula.errors import ConfigError, StateError
from macula.identity.crypto import CertKeySigner, cert_public_key
from macula.identity.files import ensure_private_dir, write_atomic

DEV_CERT = "node.crt"
DEV_KEY = "node.key"
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.S)


@dataclass(frozen=True)
class TlsMaterial:
    mode: str                  # "development" or "production"
    cert_pem: bytes            # leaf first, then intermediates
    key_pem: bytes
    cert_der: bytes
    chain_der: tuple[bytes, ...] = ()
    ca_file: str | None = None
    signer: CertKeySigner = field(repr=False, default=None)  # type: ignore[assignment]

    @property
    def public_key(self) -> bytes:
        return cert_public_key(self.cert_der)


def pem_certs_to_der(pem: bytes) -> list[bytes]:
    return [base64.b64decode(b"".join(m.split())) for m in _PEM_CERT.findall(pem)]


def _material(mode: str, cert_pem: bytes, key_pem: bytes, ca_file: str | None,
              where: str) -> TlsMaterial:
    ders = pem_certs_to_der(cert_pem)
    if not ders:
        raise StateError(f"{where}: no PEM certificate found")
    try:
        signer = CertKeySigner(key_pem)
    except Exception as exc:
        raise StateError(f"{where}: private key unusable ({exc}); use ECDSA P-256 or P-384") from None
    try:
        cert_key = cert_public_key(ders[0])
    except Exception:
        raise StateError(f"{where}: certificate cannot be parsed") from None
    if cert_key != _public_of(key_pem):
        raise StateError(f"{where}: the private key does not belong to the certificate")
    return TlsMaterial(mode, cert_pem, key_pem, ders[0], tuple(ders[1:]), ca_file, signer)


def _public_of(key_pem: bytes) -> bytes:
    from qh3.tls import load_pem_private_key  # same parser qh3 uses for the handshake

    return load_pem_private_key(key_pem).public_key()


def generate_self_signed(common_name: str) -> tuple[bytes, bytes]:
    """(cert_pem, key_pem): ECDSA P-256, valid for 20 years (boards have no CA)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=20 * 365))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def load_or_create_dev_material(state_dir: Path, node_id: bytes) -> TlsMaterial:
    tls_dir = ensure_private_dir(Path(state_dir) / "tls")
    cert_path, key_path = tls_dir / DEV_CERT, tls_dir / DEV_KEY
    if not (cert_path.exists() and key_path.exists()):
        cert_pem, key_pem = generate_self_signed(f"macula-{node_id.hex()[:16]}")
        write_atomic(key_path, key_pem, 0o600)
        write_atomic(cert_path, cert_pem, 0o644)
    return _material("development", cert_path.read_bytes(), key_path.read_bytes(), None,
                     str(tls_dir))


def ephemeral_dev_material(node_id: bytes) -> TlsMaterial:
    cert_pem, key_pem = generate_self_signed(f"macula-{node_id.hex()[:16]}")
    return _material("development", cert_pem, key_pem, None, "in-memory certificate")


def load_production_material(cert_file: str, key_file: str, ca_file: str) -> TlsMaterial:
    for key, path in (("tls.cert_file", cert_file), ("tls.key_file", key_file),
                      ("tls.ca_file", ca_file)):
        if not Path(path).is_file():
            raise ConfigError(f"{key}: {path!r} is not a readable file")
    if not pem_certs_to_der(Path(ca_file).read_bytes()):
        raise ConfigError(f"tls.ca_file: {ca_file!r} holds no PEM certificate")
    return _material("production", Path(cert_file).read_bytes(), Path(key_file).read_bytes(),
                     ca_file, cert_file)
