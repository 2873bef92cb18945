"""`macula realm init | admit`: a realm's authority key and the credentials it signs,
made offline (the authority key never has to be on a node)."""

from __future__ import annotations

import re
import time
from pathlib import Path

from macula.errors import ErrorCode, MaculaError
from macula.identity.files import write_atomic
from macula.identity.keys import generate_identity_pem, read_private_key
from macula.identity.realm import issue, issue_revocations, verify, verify_revocations

_DURATION = re.compile(r"(\d+)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """Seconds from '90', '45m', '12h', '365d'; 0 means never."""
    m = _DURATION.fullmatch(text.strip())
    if m is None:
        raise MaculaError(f"--expires {text!r}: expected a number with s, m, h or d "
                          "(0: never)", code=ErrorCode.BAD_FIELD)
    return int(m.group(1)) * _UNITS[m.group(2)]


def parse_node_id(text: str) -> bytes:
    try:
        node_id = bytes.fromhex(text)
    except ValueError:
        node_id = b""
    if len(node_id) != 32:
        raise MaculaError(f"NODE_ID {text!r}: expected 64 hex digits (`macula keys show` on "
                          "the node prints it)", code=ErrorCode.BAD_FIELD)
    return node_id


def realm_init(key: Path) -> int:
    if key.exists():
        raise MaculaError(f"--key {key}: exists; an authority key is never overwritten",
                          code=ErrorCode.BAD_FIELD)
    write_atomic(key, generate_identity_pem(), 0o600)
    signer = read_private_key(key, "authority key")
    print(f"realm authority key: {signer.public_key.hex()}")
    print(f"private key written to {key} (mode 0600): keep it off the nodes, offline")
    return 0


def realm_admit(key: Path, realm: str, node_id_hex: str, roles: list[str], expires: str,
                out: Path | None) -> int:
    node_id = parse_node_id(node_id_hex)
    signer = read_private_key(key, "authority key")
    now = int(time.time())
    ttl = parse_duration(expires)
    blob = issue(signer.sign, signer.public_key, realm, node_id, roles, issued=now,
                 expires=now + ttl if ttl else 0)
    verify(blob, realm=realm, node_id=node_id, authorities={signer.public_key}, now=now)
    out = out or Path(f"{node_id_hex[:16]}.credential")
    write_atomic(out, blob, 0o644)
    until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(now + ttl)) if ttl else "never"
    print(f"credential for {node_id_hex[:16]} in realm {realm!r}, roles "
          f"{', '.join(sorted(set(roles))) or 'none'}, expires {until}: {out} ({len(blob)} bytes)")
    return 0


def realm_revoke(key: Path, realm: str, node_ids_hex: list[str], serial: int,
                 out: Path) -> int:
    ids = [parse_node_id(text) for text in node_ids_hex]
    signer = read_private_key(key, "authority key")
    if out.exists():  # a new list must supersede the one it replaces
        try:
            old, _ = verify_revocations(out.read_bytes(), realm=realm,
                                        authorities={signer.public_key})
        except MaculaError:
            old = -1
        if serial <= old:
            raise MaculaError(f"--serial {serial}: {out} has serial {old}; a new list needs "
                              "a higher one", code=ErrorCode.BAD_FIELD)
    blob = issue_revocations(signer.sign, signer.public_key, realm, ids, serial=serial)
    write_atomic(out, blob, 0o644)
    print(f"revocation list {serial} for realm {realm!r}: {len(set(ids))} node id(s): {out}")
    return 0
