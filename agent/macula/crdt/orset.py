"""Add-wins observed-remove set (delta-state, causal context instead of tombstones).

Each add tags the element with a fresh dot (replica, counter). A remove drops the tags
it has observed, and only those: an add made concurrently elsewhere carries a tag the
remover never saw, so it survives (add wins). A re-add replaces the element's old
tags. Removed tags are remembered only through the causal context, where they fold
into one counter per replica (see context.py), so the state stays the size of the
live elements however many add/remove cycles it has been through.
"""

from __future__ import annotations

from typing import Any, Iterator

from macula.crdt import wire as w
from macula.crdt.context import DotContext
from macula.crdt.dotstore import Causal, DotMapKind, DotSetKind

Element = Any  # int | str | bytes

ELEMENTS = DotMapKind(w.wire_atom, w.atom_order, DotSetKind())


class ORSet(Causal):
    __slots__ = ()
    KIND = "orset"

    def _kind(self) -> DotMapKind:
        return ELEMENTS

    def _new(self, store: dict, context: DotContext) -> ORSet:
        return ORSet(store, context)

    def value(self) -> frozenset:
        return frozenset(self.store)

    def __contains__(self, element: object) -> bool:
        return element in self.store

    def __len__(self) -> int:
        return len(self.store)

    def __iter__(self) -> Iterator[Element]:
        return iter(self.store)

    def add(self, replica: bytes, element: Element) -> ORSet:
        """Add ``element`` as ``replica``; returns the delta."""
        w.check_replica(replica)
        w.check_atom(element)
        dot = self.context.next_dot(replica)
        single = frozenset((dot,))
        replaced = self.store.get(element, ())
        self.store[element] = single
        return ORSet({element: single}, DotContext.of([dot, *replaced]))

    def remove(self, element: Element) -> ORSet:
        """Remove the tags of ``element`` seen here; returns the delta."""
        return ORSet({}, DotContext.of(self.store.pop(element, ())))

    def clear(self) -> ORSet:
        delta = ORSet({}, DotContext.of(self.dots()))
        self.store = {}
        return delta

    @classmethod
    def from_wire(cls, wire: Any) -> ORSet:
        """From ``[[[element, [[replica, counter], ...]], ...], context]``."""
        store_wire, context_wire = w.seq(wire, "OR-Set", 2)
        return cls()._load(store_wire, context_wire)  # type: ignore[return-value]
