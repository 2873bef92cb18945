"""Causal CRDTs: a dot store plus a causal context (Almeida et al., "Delta state
replicated data types", 2018, section 6).

A state is ``(store, context)``: the store holds the dots that are live, the context
every dot the state has seen. A dot in the context but not in the store was removed,
so removal leaves nothing behind but the context (see context.py). One join serves
every causal type: a dot survives if both sides have it, or one side has it and the
other has never seen it.

Three store kinds nest:
- DotSet: the dots of one OR-Set element (a frozenset);
- DotFun: dot -> payload, a plain CRDT state (an OR-Map's register or counter);
- DotMap: key -> inner store (an OR-Set's elements, an OR-Map's keys).

Inner stores are never mutated once they sit in a store: a write replaces them. So a
state, its copies and its deltas may share them safely.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

from macula.crdt import wire as w
from macula.crdt.context import Dot, DotContext

Path = tuple


def _wire_dot(wire: Any) -> Dot:
    replica, counter = w.seq(wire, "dot", 2)
    return w.replica_id(replica), w.uint(counter, "dot counter", 1)


class DotSetKind:
    EMPTY: frozenset = frozenset()

    def new(self) -> frozenset:
        return self.EMPTY

    def join(self, a: frozenset, ca: DotContext, b: frozenset, cb: DotContext) -> tuple[frozenset, bool]:
        if a == b:
            return a, False
        out = frozenset([d for d in a if d in b or d not in cb] + [d for d in b if d not in ca])
        return out, out != a

    def dots(self, store: frozenset) -> Iterable[Dot]:
        return store

    def leaves(self, store: frozenset) -> Iterator[tuple[Path, Any]]:
        yield (), store

    def leaf_dots(self, path: Path, leaf: frozenset) -> Iterable[Dot]:
        return leaf

    def insert(self, store: frozenset, path: Path, leaf: frozenset) -> frozenset:
        return leaf

    def to_wire(self, store: frozenset) -> list:
        return [[r, c] for r, c in sorted(store)]

    def from_wire(self, wire: Any) -> frozenset:
        dots = [_wire_dot(d) for d in w.seq(wire, "dot set")]
        if not dots or any(a >= b for a, b in zip(dots, dots[1:])):
            raise w.bad("a dot set must be non-empty, sorted and unique")
        return frozenset(dots)


class DotFunKind:
    """dot -> payload, where payloads are plain CRDT states that are never mutated."""

    EMPTY: dict = {}

    def __init__(self, payload_type: type) -> None:
        self.payload_type = payload_type

    def new(self) -> dict:
        return {}

    def join(self, a: dict, ca: DotContext, b: dict, cb: DotContext) -> tuple[dict, bool]:
        if a is b:
            return a, False
        out = {d: p for d, p in a.items() if d in b or d not in cb}
        for d, p in b.items():
            if d not in a and d not in ca:
                out[d] = p
        return out, out.keys() != a.keys()

    def dots(self, store: dict) -> Iterable[Dot]:
        return store.keys()

    def leaves(self, store: dict) -> Iterator[tuple[Path, Any]]:
        for dot in sorted(store):
            yield (dot,), store[dot]

    def leaf_dots(self, path: Path, leaf: Any) -> Iterable[Dot]:
        return path

    def insert(self, store: dict, path: Path, leaf: Any) -> dict:
        store[path[0]] = leaf
        return store

    def to_wire(self, store: dict) -> list:
        return [[[r, c], store[(r, c)].to_wire()] for r, c in sorted(store)]

    def from_wire(self, wire: Any) -> dict:
        return {dot: self.payload_type.from_wire(p)
                for dot, p in w.sorted_pairs(wire, "dot function", _wire_dot)}


class DotMapKind:
    """key -> non-empty inner store."""

    EMPTY: dict = {}

    def __init__(self, parse_key: Callable[[Any], Any], key_order: Callable[[Any], Any],
                 inner: DotSetKind | DotFunKind) -> None:
        self.parse_key = parse_key
        self.key_order = key_order
        self.inner = inner

    def new(self) -> dict:
        return {}

    def join(self, a: dict, ca: DotContext, b: dict, cb: DotContext) -> tuple[dict, bool]:
        inner = self.inner
        empty = inner.EMPTY
        out = {}
        changed = False
        for k, av in a.items():
            v, ch = inner.join(av, ca, b.get(k, empty), cb)
            if v:
                out[k] = v
            changed = changed or ch
        for k, bv in b.items():
            if k not in a:
                v, _ = inner.join(empty, ca, bv, cb)
                if v:
                    out[k] = v
                    changed = True
        return out, changed

    def dots(self, store: dict) -> Iterator[Dot]:
        for v in store.values():
            yield from self.inner.dots(v)

    def leaves(self, store: dict) -> Iterator[tuple[Path, Any]]:
        for k in sorted(store, key=self.key_order):
            for path, leaf in self.inner.leaves(store[k]):
                yield (k,) + path, leaf

    def leaf_dots(self, path: Path, leaf: Any) -> Iterable[Dot]:
        return self.inner.leaf_dots(path[1:], leaf)

    def insert(self, store: dict, path: Path, leaf: Any) -> dict:
        k = path[0]
        store[k] = self.inner.insert(store.get(k, self.inner.new()), path[1:], leaf)
        return store

    def to_wire(self, store: dict) -> list:
        return [[k, self.inner.to_wire(store[k])] for k in sorted(store, key=self.key_order)]

    def from_wire(self, wire: Any) -> dict:
        out = {}
        for k, v_wire in w.sorted_pairs(wire, "map", self.parse_key, self.key_order):
            v = self.inner.from_wire(v_wire)
            if not v:
                raise w.bad("a map entry must not be empty")
            out[k] = v
        return out


class Causal:
    """Behaviour shared by the causal types; a subclass names its store kind."""

    __slots__ = ("store", "context")

    def __init__(self, store: dict | None = None, context: DotContext | None = None) -> None:
        self.store: dict = {} if store is None else store
        self.context = DotContext() if context is None else context

    # subclasses: the store kind, a constructor for pieces and deltas, the wire header
    def _kind(self) -> DotMapKind:
        raise NotImplementedError

    def _new(self, store: dict, context: DotContext) -> Causal:
        raise NotImplementedError

    def _check_compatible(self, other: Causal) -> None:
        if type(other) is not type(self):
            raise w.bad(f"cannot merge {type(other).__name__} into {type(self).__name__}")

    def merge(self, other: Causal) -> bool:
        """Join ``other`` into this state; True if anything changed."""
        self._check_compatible(other)
        store, changed = self._kind().join(self.store, self.context, other.store, other.context)
        grew = self.context.join(other.context)
        self.store = store
        return changed or grew

    def copy(self) -> Causal:
        return self._new(dict(self.store), self.context.copy())

    def __eq__(self, other: object) -> bool:
        return (type(other) is type(self) and self._wire_header() == other._wire_header()  # type: ignore[attr-defined]
                and self.store == other.store and self.context == other.context)  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.value()!r})"

    def value(self) -> Any:
        raise NotImplementedError

    def is_bottom(self) -> bool:
        return not self.store and not self.context

    def dots(self) -> Iterator[Dot]:
        return self._kind().dots(self.store)

    def news(self, other: Causal) -> Causal:
        """The part of ``other`` this state has not seen, as a state of its own.

        Joining it here gives what joining ``other`` gives; it is bottom when ``other``
        brings nothing. A replica that merges a whole state (a pull's answer) passes
        this on, not the whole state. It holds: the leaves of ``other`` with a dot not
        seen here; the dots of ``other``'s context not seen here; and the dots live here
        that ``other`` has seen removed. Leaves carry all their dots in the context, so
        it is a valid state anywhere.
        """
        self._check_compatible(other)
        kind = self._kind()
        seen = self.context
        store = kind.new()
        carried: list[Dot] = []
        for path, leaf in kind.leaves(other.store):
            dots = list(kind.leaf_dots(path, leaf))
            if any(d not in seen for d in dots):
                store = kind.insert(store, path, leaf)
                carried.extend(dots)
        live_there = set(kind.dots(other.store))
        removed = [d for d in kind.dots(self.store) if d in other.context and d not in live_there]
        context = other.context.difference(seen)
        context.join(DotContext.of(carried + removed))
        return self._new(store, context)

    # ---- wire ------------------------------------------------------------------------
    def _wire_header(self) -> list:
        return []

    def to_wire(self) -> list:
        return self._wire_header() + [self._kind().to_wire(self.store), self.context.to_wire()]

    def _load(self, store_wire: Any, context_wire: Any) -> Causal:
        """Fill this (empty) state from wire parts, checking that every live dot is
        unique and inside the context, as in any state a correct replica can reach."""
        store = self._kind().from_wire(store_wire)
        context = DotContext.from_wire(context_wire)
        seen: set[Dot] = set()
        for dot in self._kind().dots(store):
            if dot in seen or dot not in context:
                raise w.bad("a live dot is repeated or missing from the context")
            seen.add(dot)
        self.store, self.context = store, context
        return self

    # ---- splitting for bounded messages ------------------------------------------------
    def split(self, max_bytes: int) -> list[Causal]:
        """States whose join is this one, each encoding to about ``max_bytes`` or less.

        Each piece is valid on its own, so pieces may arrive in any order, twice, or not
        at all. A live leaf travels with exactly its own dots; the dots that were
        removed travel as context-only pieces. (A piece carrying the whole context with
        only some leaves would delete the receiver's copies of the other leaves.)
        An unsplittable leaf larger than ``max_bytes`` comes out as a piece of its own.
        """
        if w.packed_len(self.to_wire()) <= max_bytes:
            return [self] if not self.is_bottom() else []
        kind = self._kind()
        leaves = list(kind.leaves(self.store))

        def single(leaf: tuple[Path, Any]) -> Causal:
            path, value = leaf
            return self._new(kind.insert(kind.new(), path, value), DotContext.of(kind.leaf_dots(path, value)))

        pieces: list[Causal] = []
        for group in w.chunks(leaves, lambda leaf: w.packed_len(single(leaf).to_wire()), max_bytes):
            store = kind.new()
            dots: list[Dot] = []
            for path, value in group:
                store = kind.insert(store, path, value)
                dots.extend(kind.leaf_dots(path, value))
            pieces.append(self._new(store, DotContext.of(dots)))
        removed = self.context.minus(d for path, value in leaves for d in kind.leaf_dots(path, value))
        overhead = w.packed_len(self._new(kind.new(), DotContext()).to_wire())
        pieces.extend(self._new(kind.new(), part) for part in removed.split(max_bytes - overhead))
        return pieces
