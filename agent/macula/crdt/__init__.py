"""Delta-state CRDTs (pure: no I/O, no clock reads).

Every type has the same surface:
- mutators (``add``, ``set``, ``increment``, ...) change the state in place and return
  a delta, itself a state of the same type that can be merged anywhere;
- ``merge(other) -> bool`` joins another state in place (True if anything changed);
- ``value()``, ``copy()``, ``==`` (state equality), ``is_bottom()``;
- ``to_wire()`` / ``from_wire()`` to plain msgpack values (lists, bytes, str, int);
  ``from_wire`` raises ProtocolError(BAD_FIELD) on anything malformed;
- ``split(max_bytes)``: pieces whose join is the state, for bounded messages.
"""

from __future__ import annotations

import hashlib
from typing import Any, Protocol, TypeVar

from macula.crdt.context import Dot, DotContext
from macula.crdt.counters import GCounter, PNCounter
from macula.crdt.hlc import HLC, ClockSkew, Timestamp
from macula.crdt.lww import LWWRegister
from macula.crdt.ormap import VALUE_TYPES, ORMap
from macula.crdt.orset import ORSet
from macula.crdt.wire import MAX_ATOM_BYTES, MAX_REPLICA_ID, MAX_VALUE_BYTES, pack, packed_len

C = TypeVar("C", bound="Crdt")


class Crdt(Protocol):
    KIND: str

    def merge(self: C, other: C) -> bool: ...
    def copy(self: C) -> C: ...
    def value(self) -> Any: ...
    def is_bottom(self) -> bool: ...
    def to_wire(self) -> Any: ...
    def split(self: C, max_bytes: int) -> list[C]: ...

    @classmethod
    def from_wire(cls: type[C], wire: Any) -> C: ...


def digest(state: Crdt) -> bytes:
    """8 bytes that differ, with overwhelming odds, when two states differ
    (the wire encoding is canonical, so equal states give equal digests)."""
    return hashlib.blake2b(pack(state.to_wire()), digest_size=8).digest()


__all__ = ["HLC", "MAX_ATOM_BYTES", "MAX_REPLICA_ID", "MAX_VALUE_BYTES", "VALUE_TYPES", "ClockSkew",
           "Crdt", "Dot", "DotContext", "GCounter", "LWWRegister", "ORMap", "ORSet", "PNCounter",
           "Timestamp", "digest", "packed_len"]
