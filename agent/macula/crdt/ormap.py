"""Observed-remove map from strings to CRDTs, sharing one causal context.

Values are all of one type: ORSet, LWWRegister, GCounter or PNCounter.

- An OR-Set value is embedded as its own dot store (element -> dots), so adding to
  the set under a key ships only that element.
- A register or counter value is embedded as dot -> state: each update writes the
  key's whole merged value under a fresh dot and retires the dots it saw. Concurrent
  updates leave one dot each until the next update folds them together.

Removing a key retires every dot under it, so a removed key leaves nothing but the
context. An update concurrent with the removal wins and keeps what its writer had
seen (including what the removal cleared): the usual "update wins" map semantics.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from macula.crdt import wire as w
from macula.crdt.context import DotContext
from macula.crdt.counters import GCounter, PNCounter
from macula.crdt.dotstore import Causal, DotFunKind, DotMapKind
from macula.crdt.lww import LWWRegister
from macula.crdt.orset import ELEMENTS, ORSet

VALUE_TYPES: dict[str, type] = {t.KIND: t for t in (ORSet, LWWRegister, GCounter, PNCounter)}
_KINDS = {t: DotMapKind(w.wire_key, str, ELEMENTS if t is ORSet else DotFunKind(t))
          for t in VALUE_TYPES.values()}


class ORMap(Causal):
    __slots__ = ("value_type",)
    KIND = "ormap"

    def __init__(self, value_type: type, store: dict | None = None,
                 context: DotContext | None = None) -> None:
        if value_type not in _KINDS:
            raise TypeError(f"an ORMap holds one of {sorted(VALUE_TYPES)}, not {value_type!r}")
        super().__init__(store, context)
        self.value_type = value_type

    def _kind(self) -> DotMapKind:
        return _KINDS[self.value_type]

    def _new(self, store: dict, context: DotContext) -> ORMap:
        return ORMap(self.value_type, store, context)

    def _check_compatible(self, other: Causal) -> None:
        if type(other) is not ORMap or other.value_type is not self.value_type:  # type: ignore[attr-defined]
            raise w.bad(f"cannot merge {other!r} into a map of {self.value_type.KIND}")

    def _wire_header(self) -> list:
        return [self.value_type.KIND]

    # ---- reading ---------------------------------------------------------------------
    def _current(self, key: str) -> Any:
        """The value state under ``key`` as a fresh object (empty if absent)."""
        inner = self.store.get(key)
        if self.value_type is ORSet:
            return ORSet(dict(inner or {}), self.context)
        merged = self.value_type()
        for payload in (inner or {}).values():
            merged.merge(payload)
        return merged

    def get(self, key: str, default: Any = None) -> Any:
        return self._current(key).value() if key in self.store else default

    def value(self) -> dict[str, Any]:
        return {key: self._current(key).value() for key in self.store}

    def __contains__(self, key: object) -> bool:
        return key in self.store

    def __len__(self) -> int:
        return len(self.store)

    def __iter__(self) -> Iterator[str]:
        return iter(self.store)

    # ---- writing ---------------------------------------------------------------------
    def update(self, replica: bytes, key: str, mutate: Callable[[Any], Any]) -> ORMap:
        """Apply ``mutate`` to the value under ``key`` as ``replica``; returns the delta.

        ``mutate`` gets the current value (an ORSet, LWWRegister, GCounter or PNCounter)
        and calls one of its mutators, e.g. ``lambda s: s.add(replica, "x")``.
        """
        w.check_replica(replica)
        w.check_key(key)
        current = self._current(key)
        if self.value_type is ORSet:
            # the embedded set shares this map's context, so its dots are map dots
            delta = mutate(current)
            if current.store:
                self.store[key] = current.store
            else:
                self.store.pop(key, None)
            return ORMap(ORSet, {key: delta.store} if delta.store else {}, delta.context)
        mutate(current)
        retired = list(self.store.get(key, ()))
        dot = self.context.next_dot(replica)
        self.store[key] = {dot: current}
        return ORMap(self.value_type, {key: {dot: current}}, DotContext.of([dot, *retired]))

    def remove(self, key: str) -> ORMap:
        """Remove ``key`` as seen here; returns the delta."""
        inner = self.store.pop(key, None)
        dots = self._kind().inner.dots(inner) if inner else ()
        return ORMap(self.value_type, {}, DotContext.of(dots))

    @classmethod
    def from_wire(cls, wire: Any) -> ORMap:
        """From ``[value kind, [[key, value store], ...], context]``."""
        kind, store_wire, context_wire = w.seq(wire, "OR-Map", 3)
        if type(kind) is not str or kind not in VALUE_TYPES:
            raise w.bad(f"unknown map value kind {kind!r:.40}")
        return cls(VALUE_TYPES[kind])._load(store_wire, context_wire)  # type: ignore[return-value]
