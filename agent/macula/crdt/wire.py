"""Checks for CRDT wire values, shared by every type's ``from_wire``.

A CRDT's wire form is a plain msgpack value (lists, bytes, str, int). Peers send it,
so every check raises ProtocolError(BAD_FIELD) and nothing else: a bad state is
dropped by the gossip core, never a crashed task. Encodings are canonical (sorted,
no duplicates, no empty entries) so that equal states encode to equal bytes, which is
what the anti-entropy digests compare; non-canonical input is refused.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, TypeVar

import msgpack

from macula.errors import ErrorCode, ProtocolError, StateError

MAX_REPLICA_ID = 64        # bytes; node ID (32) plus a boot epoch fits
MAX_COUNTER = (1 << 64) - 1
MIN_INT = -(1 << 63)
MAX_ATOM_BYTES = 1024      # an OR-Set element or an OR-Map key
MAX_VALUE_BYTES = 8192     # a register value, packed

T = TypeVar("T")

_packb = msgpack.Packer(use_bin_type=True, autoreset=True).pack


def bad(reason: str) -> ProtocolError:
    return ProtocolError(f"CRDT state: {reason}", code=ErrorCode.BAD_FIELD)


def pack(wire: Any) -> bytes:
    return _packb(wire)


def packed_len(wire: Any) -> int:
    return len(_packb(wire))


def seq(wire: Any, what: str, length: int | None = None) -> tuple | list:
    """A msgpack array (a list, or a tuple after ``unpackb(use_list=False)``)."""
    if type(wire) is not list and type(wire) is not tuple:
        raise bad(f"{what} must be an array, got {type(wire).__name__}")
    if length is not None and len(wire) != length:
        raise bad(f"{what} must have {length} items, got {len(wire)}")
    return wire


def uint(wire: Any, what: str, lo: int = 0, hi: int = MAX_COUNTER) -> int:
    if type(wire) is not int or not lo <= wire <= hi:
        raise bad(f"{what} must be an int in [{lo}, {hi}]")
    return wire


def replica_id(wire: Any) -> bytes:
    if type(wire) is not bytes or not 1 <= len(wire) <= MAX_REPLICA_ID:
        raise bad(f"replica id must be 1..{MAX_REPLICA_ID} bytes")
    return wire


def check_replica(replica: bytes) -> bytes:
    """The same rule for a local caller, who gets a StateError instead."""
    if type(replica) is not bytes or not 1 <= len(replica) <= MAX_REPLICA_ID:
        raise StateError(f"replica id must be 1..{MAX_REPLICA_ID} bytes")
    return replica


# ---- atoms: OR-Set elements and OR-Map keys -------------------------------------------
_RANK = {int: 0, str: 1, bytes: 2}


def atom_order(atom: Any) -> tuple[int, Any]:
    """Sort key over mixed ints, strings and bytes (Python cannot compare across types)."""
    return _RANK[type(atom)], atom


def atom_problem(atom: Any) -> str | None:
    t = type(atom)
    if t is int:
        return None if MIN_INT <= atom <= MAX_COUNTER else "int element out of the msgpack range"
    if t is str:
        return None if len(atom.encode()) <= MAX_ATOM_BYTES else f"element over {MAX_ATOM_BYTES} bytes"
    if t is bytes:
        return None if len(atom) <= MAX_ATOM_BYTES else f"element over {MAX_ATOM_BYTES} bytes"
    return f"element must be int, str or bytes, got {t.__name__}"


def check_atom(atom: Any) -> Any:
    problem = atom_problem(atom)
    if problem:
        raise StateError(problem)
    return atom


def wire_atom(wire: Any) -> Any:
    problem = atom_problem(wire)
    if problem:
        raise bad(problem)
    return wire


def wire_key(wire: Any) -> str:
    if type(wire) is not str:
        raise bad("map key must be str")
    return wire_atom(wire)


def check_key(key: Any) -> str:
    if type(key) is not str:
        raise StateError("map key must be str")
    return check_atom(key)


def sorted_pairs(wire: Any, what: str, key: Callable[[Any], T],
                 order: Callable[[T], Any] = lambda k: k) -> Iterator[tuple[T, Any]]:
    """Yield (key, value) from ``[[key, value], ...]`` checking strictly increasing keys."""
    previous = None
    for item in seq(wire, what):
        k_wire, v_wire = seq(item, f"{what} entry", 2)
        k = key(k_wire)
        rank = order(k)
        if previous is not None and rank <= previous:
            raise bad(f"{what} keys must be sorted and unique")
        previous = rank
        yield k, v_wire


# ---- register values ------------------------------------------------------------------
def freeze_value(value: Any, error: Callable[[str], Exception]) -> tuple[Any, bytes]:
    """Normalise a value through msgpack: (value as a peer will see it, its bytes).

    Lists come back as tuples and only msgpack-native values survive, so a local value
    and its round-tripped copy compare equal, and the bytes give a total order.
    """
    try:
        packed = _packb(value)
        frozen = msgpack.unpackb(packed, use_list=False, raw=False)
    except Exception as exc:  # msgpack raises TypeError, ValueError, OverflowError, ...
        raise error(f"value is not plain msgpack data ({type(exc).__name__})") from None
    if len(packed) > MAX_VALUE_BYTES:
        raise error(f"value of {len(packed)} bytes exceeds {MAX_VALUE_BYTES}")
    return frozen, packed


def chunks(items: Iterable[T], size_of: Callable[[T], int], budget: int,
           max_items: int | None = None) -> Iterator[list[T]]:
    """Group items greedily so each group's summed size stays within ``budget`` (and
    holds at most ``max_items``). An item bigger than the budget goes alone: the caller
    decides what to do with it.
    """
    group: list[T] = []
    used = 0
    for item in items:
        size = size_of(item)
        if group and (used + size > budget or len(group) == max_items):
            yield group
            group, used = [], 0
        group.append(item)
        used += size
    if group:
        yield group
