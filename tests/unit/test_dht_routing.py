"""IDs, the XOR metric and the routing table (bucket split, ping-oldest eviction)."""

import random

from hypothesis import given, settings, strategies as st

from macula.dht.ids import Contact, distance, make_key, prefix_len, to_int
from macula.dht.routing import RoutingTable

ids = st.binary(min_size=32, max_size=32)
ZERO = bytes(32)


def contact(node_id: bytes) -> Contact:
    return Contact(node_id, "10.0.0.1", 9443)


def with_prefix(own: bytes, shared: int, rng: random.Random) -> bytes:
    """A random ID sharing exactly ``shared`` leading bits with ``own``."""
    bit = 255 - shared
    offset = (1 << bit) | rng.getrandbits(bit)
    return (to_int(own) ^ offset).to_bytes(32, "big")


# ---- the metric ---------------------------------------------------------------------
@given(ids, ids, ids)
def test_xor_is_a_metric(a, b, c):
    assert distance(a, a) == 0
    assert distance(a, b) == distance(b, a)
    assert (distance(a, b) == 0) == (a == b)
    assert distance(a, c) <= distance(a, b) + distance(b, c)


@given(ids, ids, ids)
def test_xor_is_unidirectional(a, b, c):
    # for a point and a distance there is exactly one other point: lookups converge
    if b != c:
        assert distance(a, b) != distance(a, c)


@given(ids, ids)
def test_prefix_len_matches_distance(a, b):
    assert prefix_len(to_int(a), to_int(b)) == 256 - distance(a, b).bit_length()


def test_keys_include_the_realm():
    assert make_key("home", "svc:printer") != make_key("office", "svc:printer")
    assert make_key("home", "svc:printer") == make_key("home", "svc:printer")
    # the separator keeps ("ab", "c") and ("a", "bc") apart
    assert make_key("ab", "c") != make_key("a", "bc")
    assert len(make_key("r", "n")) == 32


# ---- table invariants -----------------------------------------------------------------
def check_invariants(table: RoutingTable) -> None:
    last = len(table.buckets) - 1
    seen = set()
    own = to_int(table.own_id)
    for i, b in enumerate(table.buckets):
        assert len(b.contacts) <= table.k
        assert len(b.replacements) <= table.k
        for node_id, c in b.contacts.items():
            assert node_id == c.node_id
            p = prefix_len(own, to_int(node_id))
            assert p == i if i < last else p >= last
            assert node_id not in seen and node_id != table.own_id
            seen.add(node_id)
        assert not (b.contacts.keys() & b.replacements.keys())


@settings(max_examples=60, deadline=None)
@given(ids, st.lists(ids, max_size=300), st.integers(1, 8))
def test_bucket_invariants_hold_for_any_insertions(own, others, k):
    table = RoutingTable(own, k=k)
    for i, node_id in enumerate(others):
        table.seen(contact(node_id), float(i))
    check_invariants(table)
    assert len(table) <= len(set(others) - {own})


@settings(max_examples=60, deadline=None)
@given(ids, st.lists(ids, min_size=1, max_size=200, unique=True), ids, st.integers(1, 30))
def test_closest_matches_brute_force(own, others, target, n):
    table = RoutingTable(own, k=4)
    for node_id in others:
        table.seen(contact(node_id), 0.0)
    known = list(table)
    exclude = known[0].node_id if known else None
    want = sorted((c for c in known if c.node_id != exclude),
                  key=lambda c: distance(c.node_id, target))[:n]
    assert table.closest(target, n, exclude) == want


def test_only_the_bucket_with_the_own_id_splits():
    rng = random.Random(1)
    table = RoutingTable(ZERO, k=2)
    far = [with_prefix(ZERO, 0, rng) for _ in range(3)]
    for node_id in far:
        table.seen(contact(node_id), 0.0)
    # the first two fill the only bucket; the third splits it, then bucket 0 (far
    # half, not covering the own ID) is full and does not split again
    assert len(table.buckets) == 2
    assert len(table.buckets[0].contacts) == 2
    assert far[2] not in table
    near = [with_prefix(ZERO, s, rng) for s in (5, 6, 7)]
    for node_id in near:
        table.seen(contact(node_id), 0.0)
    assert all(n in table for n in near)
    assert len(table.buckets) > 2
    check_invariants(table)


def full_far_bucket(k: int = 3, now: float = 0.0):
    rng = random.Random(2)
    table = RoutingTable(ZERO, k=k, probe_after=60.0)
    for s in range(10, 10 + k):
        table.seen(contact(with_prefix(ZERO, s, rng)), now)
    far = [with_prefix(ZERO, 0, rng) for _ in range(k + 3)]
    for node_id in far[:k]:
        table.seen(contact(node_id), now)
    assert [c.node_id for c in table.buckets[0].contacts.values()] == far[:k]
    return table, far


def test_full_bucket_pings_oldest_and_keeps_it_when_it_answers():
    table, far = full_far_bucket()
    newcomer = contact(far[3])
    probe = table.seen(newcomer, 100.0)
    assert probe is not None and probe.node_id == far[0]        # the oldest
    assert far[3] not in table                                    # not yet admitted
    assert table.seen(contact(far[4]), 100.5) is None             # one probe at a time
    table.seen(contact(far[0]), 101.0)                            # the oldest answered
    order = [c.node_id for c in table.buckets[0].contacts.values()]
    assert order == [far[1], far[2], far[0]]                      # moved to the tail
    assert far[3] not in table and far[4] not in table
    check_invariants(table)


def test_full_bucket_replaces_oldest_only_when_the_ping_fails():
    table, far = full_far_bucket()
    probe = table.seen(contact(far[3]), 100.0)
    table.seen(contact(far[4]), 100.2)          # a later newcomer waits as well
    assert table.remove(probe.node_id)          # the ping timed out
    assert far[0] not in table
    assert far[4] in table                      # the most recently seen replacement
    assert far[3] not in table
    assert table.buckets[0].probing is None
    check_invariants(table)


def test_pings_are_paced():
    table, far = full_far_bucket()
    # the oldest was heard from 30 s ago: alive enough, no ping
    assert table.seen(contact(far[3]), 30.0) is None
    probe = table.seen(contact(far[4]), 61.0)
    assert probe is not None
    table.seen(probe, 61.1)                     # answered
    # a bucket pings at most once per probe_after
    assert table.seen(contact(far[5]), 90.0) is None
    assert table.seen(contact(far[5]), 125.0) is not None


def test_replacement_cache_is_bounded_at_k():
    rng = random.Random(3)
    table, far = full_far_bucket(k=3)
    for i in range(50):
        table.seen(contact(with_prefix(ZERO, 0, rng)), float(i))
    assert len(table.buckets[0].replacements) == 3
    assert len(table._heard) == len(table) + sum(len(b.replacements) for b in table.buckets)


def test_random_id_falls_in_its_bucket():
    rng = random.Random(4)
    table = RoutingTable(ZERO, k=1)
    for s in range(8):
        table.seen(contact(with_prefix(ZERO, s, rng)), 0.0)
    for i in range(len(table.buckets)):
        for _ in range(20):
            assert table.index(to_int(table.random_id(i, rng))) == i


def test_stale_buckets():
    rng = random.Random(5)
    table = RoutingTable(ZERO, k=1, now=0.0)
    table.seen(contact(with_prefix(ZERO, 0, rng)), 0.0)
    table.seen(contact(with_prefix(ZERO, 3, rng)), 0.0)
    assert table.stale(3599.0, 3600.0) == []
    table.touch(with_prefix(ZERO, 0, rng), 1000.0)
    assert table.stale(3600.0, 3600.0) == [i for i in range(len(table.buckets)) if i != 0]
