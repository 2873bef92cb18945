"""Node IDs, keys, contacts and the XOR metric.

IDs and keys are 32 bytes on the wire and in the API; distances are Python ints
(``int.from_bytes`` once, then XOR and compare are single C operations).
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

ID_BITS = 256
ID_BYTES = ID_BITS // 8

# Put in a session's CONNECT caps by a node whose DHT runs in client mode: peers then
# hand its messages to their core with a bare node ID, so it never enters a routing table.
CLIENT_CAP = "dht-client"


class Contact(NamedTuple):
    """A DHT server: node ID and the address it accepts sessions on (wire CONTACT)."""
    node_id: bytes
    host: str
    port: int


def make_key(realm: str, name: str) -> bytes:
    """The DHT key of ``name`` in ``realm``: realms never see each other's records."""
    return hashlib.sha256(realm.encode() + b"\0" + name.encode()).digest()


def to_int(node_id: bytes) -> int:
    return int.from_bytes(node_id, "big")


def distance(a: bytes, b: bytes) -> int:
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


def prefix_len(a: int, b: int) -> int:
    """Leading bits that ``a`` and ``b`` share (256 when equal)."""
    return ID_BITS - (a ^ b).bit_length()
