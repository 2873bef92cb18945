"""Realm membership credentials (sans-IO): a realm authority's signed statement that a
node id belongs to the realm, with roles and an expiry.

A closed realm has an authority key (Ed25519, made offline by `macula realm init`); the
authority admits a node by signing a credential for its node id (`macula realm admit`),
and peers check it on the connect path before anything else is accepted (the trust
policy that uses it is the next step of the realm issue; this module is the format and
the check). Revocation is a signed list of node ids with a serial, so a newer list
always wins.

Checking is ordered by what a refusal costs: the size bound first, then the decode,
then the cheap fields (realm, node id, expiry, authority), the Ed25519 signature last,
so a stranger's garbage costs the node no signature check.

Wire form: msgpack ``[body, signature]``, ``body`` = msgpack ``[1, realm, node_id,
roles, issued, expires, authority_key]`` (times in whole Unix seconds, expires 0 = no
expiry), signature = Ed25519 by the authority over ``CREDENTIAL_CONTEXT + body``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Collection

import msgpack

from macula.errors import ErrorCode, MaculaError
from macula.identity.crypto import ed25519_verify
from macula.wire.messages import NAME_PATTERN

CREDENTIAL_CONTEXT = b"macula-realm-credential\x00"
REVOCATION_CONTEXT = b"macula-realm-revocations\x00"
MAX_CREDENTIAL = 1024          # bytes: a credential is ~200; bigger is refused unread
MAX_ROLES = 8
MAX_ROLE = 32
MAX_REVOKED = 65536            # node ids in one revocation list
FORMAT = 1
_NAME = re.compile(NAME_PATTERN)


class CredentialError(MaculaError):
    code = ErrorCode.CREDENTIAL_INVALID


@dataclass(frozen=True, slots=True)
class Credential:
    realm: str
    node_id: bytes
    roles: tuple[str, ...]
    issued: int
    expires: int            # 0: never
    authority: bytes        # the raw Ed25519 key that signed it

    def expired(self, now: float) -> bool:
        return self.expires != 0 and now >= self.expires


def issue(sign: Callable[[bytes], bytes], authority_key: bytes, realm: str, node_id: bytes,
          roles: Collection[str] = (), *, issued: int, expires: int = 0) -> bytes:
    """A credential for ``node_id``, signed with ``sign`` (the authority's key)."""
    roles = tuple(sorted(set(roles)))
    _check_fields(realm, node_id, roles, issued, expires, authority_key)
    body = msgpack.packb([FORMAT, realm, node_id, list(roles), issued, expires, authority_key],
                         use_bin_type=True)
    blob = msgpack.packb([body, sign(CREDENTIAL_CONTEXT + body)], use_bin_type=True)
    if len(blob) > MAX_CREDENTIAL:
        raise CredentialError(f"credential of {len(blob)} bytes exceeds {MAX_CREDENTIAL}")
    return blob


def verify(blob: bytes, *, realm: str, node_id: bytes, authorities: Collection[bytes],
           now: float, revoked: Collection[bytes] = ()) -> Credential:
    """The credential ``blob`` if it admits ``node_id`` to ``realm`` now, signed by one
    of ``authorities`` and not revoked; else CredentialError saying why."""
    if not isinstance(blob, (bytes, bytearray)) or not 0 < len(blob) <= MAX_CREDENTIAL:
        raise CredentialError(f"credential missing or over {MAX_CREDENTIAL} bytes")
    body, sig = _outer(blob, CREDENTIAL_CONTEXT)
    try:
        fmt, c_realm, c_node, roles, issued, expires, authority = msgpack.unpackb(body, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException):
        raise CredentialError("credential body is not a credential") from None
    if fmt != FORMAT:
        raise CredentialError(f"credential format {fmt!r}, this node reads {FORMAT}")
    if not isinstance(roles, list):
        raise CredentialError("credential roles are not a list")
    roles = tuple(roles)
    _check_fields(c_realm, c_node, roles, issued, expires, authority)
    if c_realm != realm:
        raise CredentialError(f"credential is for realm {c_realm!r}, not {realm!r}")
    if c_node != node_id:
        raise CredentialError("credential is for another node id")
    if authority not in authorities:
        raise CredentialError("credential is signed by a key this realm does not trust")
    cred = Credential(c_realm, c_node, roles, issued, expires, authority)
    if cred.expired(now):
        raise CredentialError(f"credential expired at {expires} (now {int(now)})")
    if issued > now + 300:
        raise CredentialError("credential issued in the future (clock skew over 5 min)")
    if c_node in revoked:
        raise CredentialError("credential's node id is revoked in this realm")
    if not ed25519_verify(authority, CREDENTIAL_CONTEXT + body, sig):
        raise CredentialError("credential signature does not verify")
    return cred


def issue_revocations(sign: Callable[[bytes], bytes], authority_key: bytes, realm: str,
                      node_ids: Collection[bytes], *, serial: int) -> bytes:
    """A signed list of revoked node ids; a list with a higher serial replaces it."""
    ids = sorted(set(node_ids))
    if len(ids) > MAX_REVOKED or any(len(n) != 32 for n in ids) or serial < 0:
        raise CredentialError("revocations: up to 65536 node ids of 32 bytes, serial >= 0")
    body = msgpack.packb([FORMAT, realm, serial, ids, authority_key], use_bin_type=True)
    return msgpack.packb([body, sign(REVOCATION_CONTEXT + body)], use_bin_type=True)


def verify_revocations(blob: bytes, *, realm: str,
                       authorities: Collection[bytes]) -> tuple[int, frozenset[bytes]]:
    """(serial, revoked node ids) of a revocation list signed by one of ``authorities``."""
    if not isinstance(blob, (bytes, bytearray)) or len(blob) > 64 + 36 * MAX_REVOKED + 256:
        raise CredentialError("revocation list missing or too large")
    body, sig = _outer(blob, REVOCATION_CONTEXT)
    try:
        fmt, r_realm, serial, ids, authority = msgpack.unpackb(body, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException):
        raise CredentialError("revocation list body is not a revocation list") from None
    if fmt != FORMAT or r_realm != realm or not isinstance(serial, int) or serial < 0 \
            or not isinstance(ids, list) or len(ids) > MAX_REVOKED \
            or any(not isinstance(n, bytes) or len(n) != 32 for n in ids):
        raise CredentialError("revocation list is not for this realm or is malformed")
    if authority not in authorities:
        raise CredentialError("revocation list is signed by a key this realm does not trust")
    if not ed25519_verify(authority, REVOCATION_CONTEXT + body, sig):
        raise CredentialError("revocation list signature does not verify")
    return serial, frozenset(ids)


def _outer(blob: bytes, what: bytes) -> tuple[bytes, bytes]:
    try:
        outer = msgpack.unpackb(blob, raw=False, max_bin_len=len(blob), max_array_len=2)
    except (ValueError, TypeError, msgpack.UnpackException):
        raise CredentialError(f"{what[7:-1].decode()} is not msgpack") from None
    if not (isinstance(outer, list) and len(outer) == 2 and isinstance(outer[0], bytes)
            and isinstance(outer[1], bytes) and len(outer[1]) == 64):
        raise CredentialError(f"{what[7:-1].decode()} is not [body, signature]")
    return outer[0], outer[1]


def _check_fields(realm: object, node_id: object, roles: tuple, issued: object,
                  expires: object, authority: object) -> None:
    if not isinstance(realm, str) or not _NAME.fullmatch(realm):
        raise CredentialError(f"credential realm {realm!r} is not a realm name")
    if not isinstance(node_id, bytes) or len(node_id) != 32:
        raise CredentialError("credential node id is not 32 bytes")
    if len(roles) > MAX_ROLES or any(not isinstance(r, str) or not 0 < len(r) <= MAX_ROLE
                                     or not _NAME.fullmatch(r) for r in roles):
        raise CredentialError(f"credential roles: up to {MAX_ROLES} names of 1-{MAX_ROLE} "
                              "letters, digits, '.', '_', '-'")
    if not isinstance(issued, int) or not isinstance(expires, int) or issued < 0 \
            or expires < 0 or (expires and expires <= issued):
        raise CredentialError("credential times: whole seconds, expiry after issue (0: none)")
    if not isinstance(authority, bytes) or len(authority) != 32:
        raise CredentialError("credential authority key is not 32 bytes")
