"""Properties of the CRDTs in macula.crdt, checked with hypothesis.

States are not drawn independently: a CRDT's laws hold for states that replicas can
actually reach (two replicas never mint the same dot for different writes). So each
example is one random history on three replicas (mutations, and now and then one
replica merging another's state), and the properties are checked on its snapshots
and deltas.
"""

from __future__ import annotations

import random
from typing import Any, Callable

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from macula.crdt import (
    HLC, MAX_VALUE_BYTES, ClockSkew, DotContext, GCounter, LWWRegister, ORMap, ORSet,
    PNCounter, Timestamp, digest, packed_len,
)
from macula.errors import ErrorCode, ProtocolError, StateError

SETTINGS = settings(derandomize=True, deadline=None, max_examples=60)
REPLICAS = (b"replica-a", b"replica-b", b"replica-c")
ELEMENTS = st.one_of(st.sampled_from(["x", "y", "z"]), st.integers(-3, 3), st.sampled_from([b"\x00", b"q"]))
KEYS = st.sampled_from(["k1", "k2", "k3"])
VALUES = st.one_of(st.none(), st.integers(-2**63, 2**63), st.text(max_size=5), st.lists(st.integers(0, 9), max_size=3),
                   st.dictionaries(st.text(max_size=3), st.booleans(), max_size=2))


def wire_round_trip(wire: Any) -> Any:
    return msgpack.unpackb(msgpack.packb(wire, use_bin_type=True), use_list=False, raw=False)


# ---- one description per type: how to make one, and its mutations ------------------
class Model:
    def __init__(self, name: str, new: Callable[[], Any], ops: st.SearchStrategy,
                 apply: Callable[[Any, int, Any, HLC, int], Any]) -> None:
        self.name, self.new, self.ops, self.apply = name, new, ops, apply

    def __repr__(self) -> str:
        return self.name


def _orset_apply(s: ORSet, i: int, op: tuple, clock: HLC, wall: int) -> ORSet:
    kind, element = op
    if kind == "add":
        return s.add(REPLICAS[i], element)
    if kind == "remove":
        return s.remove(element)
    return s.clear()


ORSET_OPS = st.tuples(st.sampled_from(["add", "add", "remove", "clear"]), ELEMENTS)


def _lww_apply(r: LWWRegister, i: int, value: Any, clock: HLC, wall: int) -> LWWRegister:
    return r.set(value, clock, wall)


def _counter_apply(c: Any, i: int, op: tuple, clock: HLC, wall: int) -> Any:
    kind, n = op
    return c.increment(REPLICAS[i], n) if kind == "inc" else c.decrement(REPLICAS[i], n)


def _map_apply(inner: Callable) -> Callable:
    def apply(m: ORMap, i: int, op: tuple, clock: HLC, wall: int) -> ORMap:
        kind, key, arg = op
        if kind == "remove":
            return m.remove(key)
        return m.update(REPLICAS[i], key, lambda v: inner(v, i, arg, clock, wall))
    return apply


def _map_ops(inner_ops: st.SearchStrategy) -> st.SearchStrategy:
    return st.tuples(st.sampled_from(["update", "update", "remove"]), KEYS, inner_ops)


COUNTER_OPS = st.tuples(st.just("inc"), st.integers(1, 5))
PN_OPS = st.tuples(st.sampled_from(["inc", "dec"]), st.integers(1, 5))
MODELS = [
    Model("orset", ORSet, ORSET_OPS, _orset_apply),
    Model("lww", LWWRegister, VALUES, _lww_apply),
    Model("gcounter", GCounter, COUNTER_OPS, _counter_apply),
    Model("pncounter", PNCounter, PN_OPS, _counter_apply),
    Model("ormap-orset", lambda: ORMap(ORSet), _map_ops(ORSET_OPS), _map_apply(_orset_apply)),
    Model("ormap-lww", lambda: ORMap(LWWRegister), _map_ops(VALUES), _map_apply(_lww_apply)),
    Model("ormap-gcounter", lambda: ORMap(GCounter), _map_ops(COUNTER_OPS), _map_apply(_counter_apply)),
    Model("ormap-pncounter", lambda: ORMap(PNCounter), _map_ops(PN_OPS), _map_apply(_counter_apply)),
]
BY_NAME = {m.name: m for m in MODELS}


class History:
    """Three replicas driven through random steps; keeps every delta and snapshot."""

    def __init__(self, model: Model, steps: list) -> None:
        self.replicas = [model.new() for _ in REPLICAS]
        self.deltas: list = []
        self.snapshots: list = [model.new()]
        # skewed wall clocks: replica c runs 5 minutes behind
        clocks = [HLC(r, max_drift_ms=None) for r in REPLICAS]
        walls = [1_000_000, 1_000_000, 1_000_000 - 300_000]
        for i, step, source in steps:
            walls[i] += 7
            if source is not None and source != i:
                self.replicas[i].merge(self.replicas[source].copy())
            else:
                self.deltas.append(model.apply(self.replicas[i], i, step, clocks[i], walls[i]).copy())
            self.snapshots.append(self.replicas[i].copy())

    def join_all(self, model: Model) -> Any:
        total = model.new()
        for r in self.replicas:
            total.merge(r)
        return total


def histories(model: Model) -> st.SearchStrategy:
    step = st.tuples(st.integers(0, 2), model.ops, st.one_of(st.none(), st.none(), st.integers(0, 2)))
    return st.lists(step, min_size=1, max_size=25).map(lambda steps: History(model, steps))


def merged(a: Any, b: Any) -> Any:
    out = a.copy()
    out.merge(b)
    return out


@st.composite
def history_and_picks(draw, model: Model) -> tuple:
    h = draw(histories(model))
    picks = [draw(st.integers(0, len(h.snapshots) - 1)) for _ in range(3)]
    return h, [h.snapshots[p] for p in picks]


# ---- lattice laws -------------------------------------------------------------------
@pytest.mark.parametrize("model", MODELS, ids=repr)
def test_merge_is_commutative_associative_idempotent(model: Model) -> None:
    @SETTINGS
    @given(history_and_picks(model))
    def check(sample: tuple) -> None:
        _, (a, b, c) = sample
        assert merged(a, b) == merged(b, a)
        assert merged(merged(a, b), c) == merged(a, merged(b, c))
        assert merged(a, a) == a
        assert merged(a, b).merge(b) is False  # joining what is already in adds nothing
    check()


@pytest.mark.parametrize("model", MODELS, ids=repr)
def test_deltas_converge_in_any_order_with_duplicates(model: Model) -> None:
    @SETTINGS
    @given(histories(model), st.randoms(use_true_random=False))
    def check(h: History, rnd: random.Random) -> None:
        expected = h.join_all(model)
        shuffled = h.deltas + (rnd.choices(h.deltas, k=len(h.deltas) // 2) if h.deltas else [])
        rnd.shuffle(shuffled)
        replica = model.new()
        for d in shuffled:
            replica.merge(d)
        assert replica == expected
        assert replica.value() == expected.value()
        assert digest(replica) == digest(expected)
    check()


@pytest.mark.parametrize("model", MODELS, ids=repr)
def test_wire_round_trip(model: Model) -> None:
    @SETTINGS
    @given(histories(model))
    def check(h: History) -> None:
        for state in h.snapshots + h.deltas:
            back = type(state).from_wire(wire_round_trip(state.to_wire()))
            assert back == state
            assert back.value() == state.value()
            assert wire_round_trip(back.to_wire()) == wire_round_trip(state.to_wire())
    check()


@pytest.mark.parametrize("model", MODELS, ids=repr)
def test_split_pieces_join_back_in_any_order(model: Model) -> None:
    @SETTINGS
    @given(histories(model), st.integers(160, 600), st.randoms(use_true_random=False))
    def check(h: History, budget: int, rnd: random.Random) -> None:
        state = h.join_all(model)
        pieces = state.split(budget)
        rnd.shuffle(pieces)
        rebuilt = model.new()
        for piece in pieces:
            assert packed_len(piece.to_wire()) <= budget
            rebuilt.merge(type(piece).from_wire(wire_round_trip(piece.to_wire())))
        assert rebuilt == state
    check()


CAUSAL = [m for m in MODELS if m.name == "orset" or m.name.startswith("ormap")]


@pytest.mark.parametrize("model", CAUSAL, ids=repr)
def test_news_joins_like_the_whole_state_and_is_bottom_when_nothing_is_new(model: Model) -> None:
    @SETTINGS
    @given(history_and_picks(model))
    def check(sample: tuple) -> None:
        _, (a, b, c) = sample
        news = a.news(b)
        news = type(news).from_wire(wire_round_trip(news.to_wire()))   # a valid state
        assert merged(a, news) == merged(a, b)
        assert news.is_bottom() == (merged(a, b) == a)
        # what a third replica learns from the news is no more than from the whole state
        assert merged(merged(c, news), b) == merged(c, b)
        assert merged(a, b).news(b).is_bottom()
    check()


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(REPLICAS), st.integers(1, 40)), max_size=30),
       st.lists(st.tuples(st.sampled_from(REPLICAS), st.integers(1, 40)), max_size=30))
def test_context_difference_is_set_difference(a: list, b: list) -> None:
    ca, cb = DotContext.of(a), DotContext.of(b)
    diff = ca.difference(cb)
    assert {d for d in set(a) if d in diff} == set(a) - set(b)
    assert not any(d in diff for d in b)
    back = diff.copy()
    back.join(cb)
    joined = ca.copy()
    joined.join(cb)
    assert back == joined


# ---- garbage in, typed error out ----------------------------------------------------
MSGPACK_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**64, 2**64), st.floats(allow_nan=True),
              st.text(max_size=8), st.binary(max_size=70)),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=25)
DECODERS = [ORSet, LWWRegister, GCounter, PNCounter, ORMap, DotContext]


@pytest.mark.parametrize("decoder", DECODERS, ids=lambda d: d.__name__)
def test_from_wire_on_garbage_raises_only_protocol_error(decoder: type) -> None:
    @SETTINGS
    @given(MSGPACK_VALUES)
    def check(garbage: Any) -> None:
        try:
            decoder.from_wire(garbage)
        except ProtocolError as exc:
            assert exc.code is ErrorCode.BAD_FIELD
    check()


def _mutate(wire: Any, rnd: random.Random, replacement: Any) -> Any:
    """Replace one random node of a wire tree."""
    if type(wire) in (list, tuple) and wire and rnd.random() < 0.8:
        items = list(wire)
        i = rnd.randrange(len(items))
        items[i] = _mutate(items[i], rnd, replacement)
        return items
    return replacement


@pytest.mark.parametrize("model", MODELS, ids=repr)
def test_from_wire_on_corrupted_states_raises_only_protocol_error(model: Model) -> None:
    @SETTINGS
    @given(histories(model), st.randoms(use_true_random=False), MSGPACK_VALUES)
    def check(h: History, rnd: random.Random, replacement: Any) -> None:
        wire = _mutate(h.join_all(model).to_wire(), rnd, replacement)
        try:
            type(h.replicas[0]).from_wire(wire)
        except ProtocolError as exc:
            assert exc.code is ErrorCode.BAD_FIELD
    check()


def test_from_wire_refuses_non_canonical_and_inconsistent_states() -> None:
    ok = ORSet()
    ok.add(b"r", "x")
    bad_states = [
        [[["x", [[b"r", 1]]]], []],                         # live dot missing from the context
        [[["x", [[b"r", 1]]], ["y", [[b"r", 1]]]], [[b"r", [1, 1]]]],  # one dot on two elements
        [[["y", [[b"r", 1]]], ["x", [[b"r", 2]]]], [[b"r", [1, 2]]]],  # elements out of order
        [[], [[b"r", [1, 1, 2, 2]]]],                       # adjacent intervals not coalesced
        [[], [[b"r", [0, 1]]]],                             # counters start at 1
        [[["x", []]], [[b"r", [1, 1]]]],                    # empty entry
        [[[1.5, [[b"r", 1]]]], [[b"r", [1, 1]]]],           # float element
    ]
    for wire in bad_states:
        with pytest.raises(ProtocolError):
            ORSet.from_wire(wire)
    with pytest.raises(ProtocolError):
        ORMap.from_wire(["nope", [], []])
    with pytest.raises(ProtocolError):
        GCounter.from_wire([[b"r", 0]])
    with pytest.raises(ProtocolError):
        ORMap(ORSet).merge(ORMap(LWWRegister))
    with pytest.raises(ProtocolError):
        ORSet().merge(GCounter())  # type: ignore[arg-type]


# ---- semantics ----------------------------------------------------------------------
@SETTINGS
@given(st.lists(ORSET_OPS, max_size=40))
def test_orset_on_one_replica_behaves_like_a_set(ops: list) -> None:
    s, model = ORSet(), set()
    for kind, element in ops:
        if kind == "add":
            s.add(b"r", element)
            model.add(element)
        elif kind == "remove":
            s.remove(element)
            model.discard(element)
        else:
            s.clear()
            model.clear()
    assert s.value() == model


@SETTINGS
@given(histories(BY_NAME["orset"]), ELEMENTS)
def test_orset_concurrent_add_and_remove_keeps_the_add(h: History, element: Any) -> None:
    a, b = h.replicas[0], h.replicas[1]
    b.merge(a)
    a.merge(b)                     # a and b now agree
    removal = a.remove(element)    # a removes what it has seen ...
    addition = b.add(REPLICAS[1], element)   # ... while b adds concurrently
    a.merge(addition)
    b.merge(removal)
    assert element in a and element in b
    assert a == b


def test_orset_remove_only_removes_observed_tags() -> None:
    a, b = ORSet(), ORSet()
    b.merge(a.add(b"a", "x"))
    late = b.add(b"b", "x")        # b's tag, not yet seen by a
    a.merge(a.remove("x"))
    assert "x" not in a
    a.merge(late)
    assert "x" in a                # the unobserved tag survived a's remove


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 2), PN_OPS), max_size=40))
def test_counters_count(ops: list) -> None:
    g, pn, total, grow = GCounter(), PNCounter(), 0, 0
    for i, (kind, n) in ops:
        if kind == "inc":
            g.increment(REPLICAS[i], n)
            pn.increment(REPLICAS[i], n)
            total += n
            grow += n
        else:
            pn.decrement(REPLICAS[i], n)
            total -= n
    assert g.value() == grow and pn.value() == total


def test_counter_rejects_bad_increments() -> None:
    with pytest.raises(StateError):
        GCounter().increment(b"r", 0)
    with pytest.raises(StateError):
        GCounter().increment(b"", 1)
    c = GCounter()
    c.increment(b"r", (1 << 64) - 1)
    with pytest.raises(StateError):
        c.increment(b"r", 1)


def test_ormap_update_wins_over_concurrent_remove_and_removed_keys_leave_no_entries() -> None:
    a, b = ORMap(ORSet), ORMap(ORSet)
    b.merge(a.update(b"a", "svc", lambda s: s.add(b"a", "n1")))
    removal = a.remove("svc")
    update = b.update(b"b", "svc", lambda s: s.add(b"b", "n2"))
    a.merge(update)
    b.merge(removal)
    assert a == b and a.value() == {"svc": frozenset({"n2"})}
    a.merge(a.remove("svc"))
    assert a.value() == {} and a.store == {}


def test_ormap_of_registers_keeps_concurrent_writes_until_the_next_update() -> None:
    a, b = ORMap(LWWRegister), ORMap(LWWRegister)
    ca, cb = HLC(b"a"), HLC(b"b")
    da = a.update(b"a", "k", lambda r: r.set("from a", ca, 1000))
    db = b.update(b"b", "k", lambda r: r.set("from b", cb, 1000))
    a.merge(db)
    b.merge(da)
    assert a == b and a.get("k") == "from b"       # equal times: node b > node a
    assert len(a.store["k"]) == 2
    a.update(b"a", "k", lambda r: r.set("again", ca, 1001))
    assert len(a.store["k"]) == 1 and a.get("k") == "again"


def test_ormap_counter_sums_concurrent_increments() -> None:
    a, b = ORMap(PNCounter), ORMap(PNCounter)
    da = a.update(b"a", "hits", lambda c: c.increment(b"a", 3))
    db = b.update(b"b", "hits", lambda c: c.decrement(b"b", 1))
    a.merge(db)
    b.merge(da)
    assert a.get("hits") == b.get("hits") == 2


def test_mutators_validate_local_input() -> None:
    with pytest.raises(StateError):
        ORSet().add(b"r", 1.5)
    with pytest.raises(StateError):
        ORSet().add(b"r", "x" * 2000)
    with pytest.raises(StateError):
        ORMap(ORSet).update(b"r", 7, lambda s: s.add(b"r", 1))  # type: ignore[arg-type]
    with pytest.raises(StateError):
        LWWRegister().set(object(), HLC(b"n"), 1)
    with pytest.raises(StateError):
        LWWRegister().set(b"x" * MAX_VALUE_BYTES, HLC(b"n"), 1)
    with pytest.raises(TypeError):
        ORMap(ORMap)


# ---- HLC and LWW ----------------------------------------------------------------------
def test_hlc_is_monotonic_and_passes_observed_timestamps() -> None:
    clock = HLC(b"n")
    a = clock.tick(1000)
    b = clock.tick(1000)
    c = clock.tick(999)            # wall clock stepped back
    assert a < b < c
    clock.observe(Timestamp(5000, 7, b"m"), wall_ms=4990)
    d = clock.tick(1001)
    assert d > Timestamp(5000, 7, b"m") and d.ms == 5000 and d.logical == 8


def test_hlc_refuses_a_timestamp_too_far_ahead() -> None:
    clock = HLC(b"n", max_drift_ms=1000)
    with pytest.raises(ClockSkew) as info:
        clock.observe(Timestamp(10_000, 0, b"m"), wall_ms=5000)
    assert isinstance(info.value, StateError)
    assert clock.last == Timestamp(0, 0, b"n")   # not adopted


def test_lww_write_after_a_newer_one_wins_despite_a_slow_clock() -> None:
    fast, slow = LWWRegister(), LWWRegister()
    fast_clock, slow_clock = HLC(b"fast"), HLC(b"slow")
    slow.merge(fast.set("first", fast_clock, wall_ms=2_000_000))
    slow.set("second", slow_clock, wall_ms=2_000_000 - 300_000)   # 5 min behind
    fast.merge(slow)
    assert fast.value() == slow.value() == "second"


def test_lww_write_refuses_to_lose_silently_to_a_far_future_value() -> None:
    reg, rogue = LWWRegister(), LWWRegister()
    rogue.set("from 2099", HLC(b"rogue", max_drift_ms=None), wall_ms=4_000_000_000_000)
    reg.merge(rogue)
    with pytest.raises(ClockSkew):
        reg.set("mine", HLC(b"me", max_drift_ms=60_000), wall_ms=1_700_000_000_000)
    assert reg.value() == "from 2099"


def test_lww_tie_break_is_by_node_then_value() -> None:
    a, b = LWWRegister(), LWWRegister()
    a.set("a", HLC(b"node-1"), 5)
    b.set("b", HLC(b"node-2"), 5)
    assert merged(a, b).value() == merged(b, a).value() == "b"


def test_a_context_claiming_every_dot_of_a_replica_cannot_overflow_the_next_write() -> None:
    s = ORSet()
    s.merge(ORSet.from_wire([[], [[b"r", [1, (1 << 64) - 1]]]]))
    with pytest.raises(StateError):
        s.add(b"r", "x")


def test_lww_merge_commutes_even_for_a_reused_timestamp() -> None:
    a, b = LWWRegister(), LWWRegister()
    a.set("x", HLC(b"n"), 5)
    b.set("y", HLC(b"n"), 5)           # same node, same clock reading: a replica restarted
    assert merged(a, b).value() == merged(b, a).value() == "y"
