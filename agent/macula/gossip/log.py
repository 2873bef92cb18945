"""The delta log: deltas kept until every peer has them, within a byte bound.

Each entry carries the delta ids it stands for, so a peer's reported version vector
(over delta ids) says which entries it has, whoever it got them from.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterator

from macula.crdt import Dot, DotContext, packed_len


@dataclass(slots=True, eq=False)
class Entry:
    key: int            # position in this log, increasing
    ids: DotContext     # the delta ids this entry carries
    name: str           # which replica
    item: list          # [ids, name, delta] exactly as it goes into a GossipPush
    size: int           # packed bytes of ``item``
    dot: Dot | None     # the one id, when there is one (nearly always): a faster check

    def held_by(self, known: DotContext) -> bool:
        return self.dot in known if self.dot is not None else self.ids.issubset(known)


class DeltaLog:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[int, Entry] = OrderedDict()
        self._next_key = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(list(self._entries.values()))

    def get(self, key: int) -> Entry | None:
        return self._entries.get(key)

    def append(self, ids: DotContext, name: str, delta_wire: Any) -> list[Entry]:
        """Add an entry; returns the oldest entries dropped to stay within the bound."""
        item = [ids.to_wire(), name, delta_wire]
        single = ids.single()
        entry = Entry(self._next_key, ids, name, item, packed_len(item), single)
        self._next_key += 1
        self._entries[entry.key] = entry
        self.bytes += entry.size
        dropped = []
        while self.bytes > self.max_bytes and len(self._entries) > 1:
            dropped.append(self.drop(next(iter(self._entries))))
        return dropped

    def drop(self, key: int) -> Entry:
        entry = self._entries.pop(key)
        self.bytes -= entry.size
        return entry

    def origins(self) -> set[bytes]:
        return {replica for entry in self._entries.values() for replica in entry.ids.replicas()}
