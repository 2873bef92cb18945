"""The node identity: an Ed25519 key made on first start; node ID = SHA-256(public key)."""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from macula.errors import StateError
from macula.identity.crypto import Ed25519Signer
from macula.identity.files import ensure_private_dir, write_atomic

IDENTITY_FILE = "identity.key"
PEM_HEADER = b"-----BEGIN PRIVATE KEY-----"


def node_id_of(public_key: bytes) -> bytes:
    return hashlib.sha256(public_key).digest()


@dataclass(frozen=True)
class Identity:
    signer: Ed25519Signer
    path: Path | None

    @property
    def public_key(self) -> bytes:
        return self.signer.public_key

    @cached_property
    def node_id(self) -> bytes:  # read on hot paths: hashed once
        return node_id_of(self.signer.public_key)

    def sign(self, data: bytes) -> bytes:
        return self.signer.sign(data)


def _pem_to_der(pem: bytes) -> bytes:
    import base64

    lines = [ln for ln in pem.strip().splitlines() if ln and not ln.startswith(b"-----")]
    return base64.b64decode(b"".join(lines), validate=True)


def generate_identity_pem() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())


def load_or_create_identity(state_dir: Path) -> Identity:
    """Load ``state_dir/identity.key`` or create it (0600, written atomically)."""
    state_dir = ensure_private_dir(Path(state_dir))
    path = state_dir / IDENTITY_FILE
    if not path.exists():
        write_atomic(path, generate_identity_pem(), 0o600)
    return Identity(read_private_key(path, "identity key"), path)


def read_private_key(path: Path, what: str) -> Ed25519Signer:
    """An Ed25519 private key file (PEM PKCS#8, mode 0600): the node's identity, or a
    realm's authority key. StateError naming the file when it is not one."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        pem = path.read_bytes()
    except OSError as exc:
        raise StateError(f"cannot read {what} {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise StateError(f"{what} {path} is readable by others (mode {mode:o}); "
                         f"run: chmod 600 {path}")
    if PEM_HEADER not in pem:
        raise StateError(f"{what} {path} is not a PEM PKCS#8 private key")
    try:
        return Ed25519Signer(_pem_to_der(pem))
    except Exception:
        raise StateError(f"{what} {path} is not a valid Ed25519 key") from None


def ephemeral_identity() -> Identity:
    """An identity that lives only in memory (light clients, tests)."""
    return Identity(Ed25519Signer(_pem_to_der(generate_identity_pem())), None)
