"""The RPC call table (bounded, deadlines, provider accounting) and power of two choices."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from macula.errors import ErrorCode
from macula.rpc.calls import CallsFull, CallTable, choose_provider


def test_table_is_bounded_and_refuses_with_overloaded():
    t = CallTable(max_pending=2)
    t.add("caller", 1, "p", b"", 10.0, False)
    t.add("caller", 2, "p", b"", 10.0, False)
    with pytest.raises(CallsFull) as info:
        t.add("caller", 3, "p", b"", 10.0, False)
    assert info.value.code is ErrorCode.CALL_OVERLOADED and len(t) == 2


def test_expire_returns_only_calls_past_their_deadline_in_order():
    t = CallTable(max_pending=10)
    late = t.add("c", 1, "p", b"", 5.0, False)
    early = t.add("c", 2, "p", b"", 1.0, False)
    done = t.add("c", 3, "p", b"", 2.0, False)
    assert t.pop(done.call_id) is done
    assert t.next_deadline() == 1.0
    assert t.expire(2.5) == [early]        # the popped one is not reported
    assert t.next_deadline() == 5.0 and t.get(late.call_id) is late
    assert t.expire(5.0) == [late] and len(t) == 0 and t.next_deadline() is None


def test_answered_calls_leave_no_deadlines_behind():
    t = CallTable(max_pending=10)
    for i in range(10_000):  # each answered at once: the table never holds more than one
        call = t.add("c", i, "p", b"", 100.0 + i * 0.001, False)
        assert t.pop(call.call_id) is call
    assert t.next_deadline() is None and not t._buckets and not t._bucket_heap
    t.add("c", 1, "p", b"", 7.0001, False)
    assert 7.0001 <= t.next_deadline() <= 7.05  # a bucket ends at or after its deadlines
    assert t.expire(7.0) == [] and len(t.expire(7.05)) == 1


def test_outstanding_counts_follow_assign_retry_and_completion():
    t = CallTable(max_pending=10)
    a = t.add("c", 1, "p", b"", 9.0, True)
    b = t.add("c", 2, "p", b"", 9.0, True)
    t.assign(a, b"x")
    t.assign(b, b"x")
    assert t.outstanding == {b"x": 2}
    t.assign(a, b"y")                      # retried on another provider
    assert t.outstanding == {b"x": 1, b"y": 1} and a.tried == {b"x", b"y"}
    assert [c.call_id for c in t.calls_to(b"x")] == [b.call_id]
    t.pop(a.call_id)
    t.pop(b.call_id)
    assert t.outstanding == {}


def test_power_of_two_choices_spreads_and_avoids_the_loaded_provider():
    rng = random.Random(7)
    even = Counter(choose_provider([b"a", b"b", b"c"], {}, rng) for _ in range(9000))
    assert all(2700 < n < 3300 for n in even.values())
    skewed = Counter(choose_provider([b"a", b"b", b"c"], {b"a": 4}, rng) for _ in range(9000))
    assert skewed[b"a"] == 0 and skewed[b"b"] > 4000 and skewed[b"c"] > 4000
    assert choose_provider([b"only"], {b"only": 99}, rng) == b"only"
