"""What the DHT core reports to the application (drained with ``next_event()``).

Only operations the application started report; the core's own refreshes,
republishes and replications do not.
"""

from __future__ import annotations

from dataclasses import dataclass

from macula.dht.ids import Contact
from macula.dht.storage import Record


@dataclass(frozen=True, slots=True)
class LookupDone:
    """``lookup_node`` or ``bootstrap`` finished: the k closest nodes that answered."""
    op_id: int
    target: bytes
    nodes: tuple[Contact, ...]
    rounds: int          # longest chain of sequential round trips
    messages: int        # requests sent + replies received


@dataclass(frozen=True, slots=True)
class ValueFound:
    """``find_value`` finished. ``records`` are live provider records, one per
    publisher (empty: nothing found)."""
    op_id: int
    key: bytes
    records: tuple[Record, ...]
    rounds: int
    messages: int


@dataclass(frozen=True, slots=True)
class StoreDone:
    """``store`` or ``withdraw`` finished: how many nodes took the record (this node
    included when it is one of the k closest) and how many refused it."""
    op_id: int
    key: bytes
    stored: int
    refused: int


Event = LookupDone | ValueFound | StoreDone
