"""Record storage: provider lists, TTL and the expiry sweep, bounds, replicas, tombstones."""

from hypothesis import given, settings, strategies as st

from macula.dht.storage import RecordStore
from macula.errors import ErrorCode

K1, K2 = b"\x01" * 32, b"\x02" * 32
P1, P2, P3 = b"\xa1" * 32, b"\xa2" * 32, b"\xa3" * 32


def make(max_records=100, per_pub=10, per_pub_bytes=1000, max_ttl=3600.0) -> RecordStore:
    return RecordStore(max_records, per_pub, per_pub_bytes, max_ttl)


def test_a_key_holds_one_record_per_publisher():
    s = make()
    assert s.put(K1, P1, b"a", 100, 0.0, True) is None
    assert s.put(K1, P2, b"b", 100, 0.0, True) is None
    assert s.put(K1, P1, b"a2", 100, 1.0, True) is None     # upsert by publisher
    assert sorted((r.publisher, r.value) for r in s.get(K1, 2.0)) == [(P1, b"a2"), (P2, b"b")]
    assert len(s) == 2
    assert s.get(K2, 2.0) == []


def test_expired_records_are_never_returned_and_the_sweep_reclaims_them():
    s = make()
    s.put(K1, P1, b"short", 10, 0.0, True)
    s.put(K1, P2, b"long", 100, 0.0, True)
    assert [r.value for r in s.get(K1, 9.9)] == [b"short", b"long"]
    assert [r.value for r in s.get(K1, 10.0)] == [b"long"]   # expired, before any sweep
    assert len(s) == 2
    assert s.sweep(10.0) == 1
    assert len(s) == 1 and s.usage(P1) == (0, 0)
    assert s.sweep(100.0) == 1
    assert len(s) == 0 and s._keys == {} and s._usage == {}


def test_ttl_is_capped():
    s = make(max_ttl=50.0)
    s.put(K1, P1, b"x", 10_000, 0.0, True)
    assert s.get(K1, 0.0)[0].expires == 50.0


def test_max_records_at_the_bound():
    s = make(max_records=3, per_pub=10)
    for i in range(3):
        assert s.put(bytes([i]) * 32, P1, b"x", 100, 0.0, True) is None
    assert s.put(K2 if K2[0] > 2 else b"\x09" * 32, P2, b"x", 100, 0.0, True) == ErrorCode.OVERLOADED
    # an upsert of a record already held needs no room
    assert s.put(b"\x00" * 32, P1, b"y", 100, 0.0, True) is None
    s.sweep(100.0)
    assert s.put(b"\x09" * 32, P2, b"x", 100, 100.0, True) is None


def test_records_per_publisher_at_the_bound():
    s = make(per_pub=2)
    assert s.put(K1, P1, b"x", 100, 0.0, True) is None
    assert s.put(K2, P1, b"x", 100, 0.0, True) is None
    assert s.put(b"\x03" * 32, P1, b"x", 100, 0.0, True) == ErrorCode.STORE_REFUSED
    assert s.put(b"\x03" * 32, P2, b"x", 100, 0.0, True) is None   # others are not affected
    # replicas count against the publisher too, whoever sends them
    assert s.put(b"\x04" * 32, P1, b"x", 100, 0.0, False) == ErrorCode.STORE_REFUSED


def test_bytes_per_publisher_at_the_bound():
    s = make(per_pub_bytes=10)
    assert s.put(K1, P1, b"12345", 100, 0.0, True) is None
    assert s.put(K2, P1, b"12345", 100, 0.0, True) is None           # exactly at the bound
    assert s.put(b"\x03" * 32, P1, b"1", 100, 0.0, True) == ErrorCode.STORE_REFUSED
    assert s.put(K1, P1, b"123456", 100, 0.0, True) == ErrorCode.STORE_REFUSED  # grows by 1
    assert s.put(K1, P1, b"1234", 100, 0.0, True) is None            # shrinking is fine
    assert s.usage(P1) == (2, 9)


def test_a_replica_only_replaces_a_copy_that_expires_earlier():
    s = make()
    s.put(K1, P1, b"new", 100, 50.0, True)          # expires at 150
    assert s.put(K1, P1, b"old", 60, 50.0, False) is None
    assert s.get(K1, 51.0)[0].value == b"new"        # stale replica ignored
    s.put(K1, P1, b"newer", 200, 50.0, False)        # expires at 250: taken
    assert s.get(K1, 51.0)[0].value == b"newer"


def test_withdraw_leaves_a_tombstone_that_stops_stale_replicas():
    s = make()
    s.put(K1, P1, b"v", 100, 0.0, True)
    s.put(K1, P1, b"", 0, 10.0, True)                 # the publisher withdraws
    assert s.get(K1, 10.0) == []
    assert s.usage(P1) == (1, 0)                      # tombstone: an entry, no bytes
    s.put(K1, P1, b"v", 90, 10.0, False)             # a late replica of the old record
    assert s.get(K1, 11.0) == []
    s.put(K1, P1, b"back", 100, 20.0, True)          # the publisher itself may come back
    assert s.get(K1, 21.0)[0].value == b"back"


def test_ttl_zero_from_a_non_publisher_deletes_nothing():
    s = make()
    s.put(K1, P1, b"v", 100, 0.0, True)
    s.put(K1, P1, b"", 0, 1.0, False)
    assert s.get(K1, 1.0)[0].value == b"v"


def test_due_for_replication():
    s = make()
    s.put(K1, P1, b"v", 3000, 0.0, True)
    s.put(K2, P1, b"v", 3000, 500.0, True)
    assert s.due(600.0, 600.0) == [K1]
    s.mark_replicated(K1, 600.0)
    assert s.due(600.0, 600.0) == []
    # a replica of a record we hold counts as a refresh: the sender replicated it
    s.put(K2, P1, b"v", 10, 1100.0, False)
    assert s.due(1200.0, 600.0) == [K1]
    assert s.due(1700.0, 600.0) == [K1, K2]
    assert s.due(3000.0, 600.0) == [K2]        # K1 expired: nothing to replicate


ops = st.lists(st.tuples(st.sampled_from([K1, K2]), st.sampled_from([P1, P2, P3]),
                         st.binary(max_size=8), st.integers(0, 50), st.booleans()),
               max_size=60)


@settings(max_examples=100, deadline=None)
@given(ops)
def test_accounting_matches_contents(puts):
    s = make(max_records=4, per_pub=2, per_pub_bytes=12, max_ttl=40.0)
    now = 0.0
    for key, pub, value, ttl, auth in puts:
        now += 1.0
        s.put(key, pub, value, ttl, now, auth)
        entries = [(p, e) for recs in s._keys.values() for p, e in recs.items()]
        assert len(entries) == s.count <= 4
        for p in (P1, P2, P3):
            mine = [e for q, e in entries if q == p]
            size = sum(len(e.value) for e in mine if e.value is not None)
            assert s.usage(p) == (len(mine), size)
            assert len(mine) <= 2 and size <= 12
        for r in s.get(K1, now) + s.get(K2, now):
            assert r.expires > now
    s.sweep(now + 41.0)
    assert s.count == 0 and s._usage == {}


def test_a_publisher_at_its_bound_trades_its_oldest_tombstone_for_a_new_record():
    # clients that come and go with per-session names: every withdrawal leaves a
    # tombstone, and they must not lock the node out of its own new records
    s = RecordStore(max_records=100, max_per_publisher=4, max_bytes_per_publisher=1 << 20,
                    max_ttl=300)
    pub, other = b"p" * 32, b"o" * 32
    keys = [bytes([i]) * 32 for i in range(10)]
    for k in keys[:4]:
        assert s.put(k, pub, b"v", 300, 0.0, True) is None
    assert s.put(keys[4], pub, b"v", 300, 0.0, True) == ErrorCode.STORE_REFUSED  # live: bound holds
    for k in keys[:4]:
        s.put(k, pub, b"", 0, 1.0, True)                  # withdrawn: 4 tombstones
    assert s.usage(pub) == (4, 0) and len(s) == 4
    assert s.put(keys[4], pub, b"v", 300, 2.0, True) is None  # the oldest tombstone goes
    assert s.usage(pub)[0] == 4 and len(s) == 4
    # the newer tombstones still keep late replicas of their records out
    assert s.put(keys[1], other, b"x", 300, 2.0, False) is None  # another publisher: its own
    assert s.put(keys[1], pub, b"late", 100, 2.0, False) is None
    assert [r.publisher for r in s.get(keys[1], 3.0)] == [other]
    # a replica never takes a tombstone's place: the bound holds against it
    assert s.put(keys[5], pub, b"late", 100, 3.0, False) == ErrorCode.STORE_REFUSED
    # a tombstoned key stored again by its publisher is live again, no longer a tombstone
    s.put(keys[2], pub, b"again", 300, 4.0, True)
    assert [r.value for r in s.get(keys[2], 4.0)] == [b"again"]
    assert s.sweep(10_000.0) == 5    # other's record, pub's 2 tombstones and 2 live ones
    assert len(s) == 0 and s.usage(pub) == (0, 0) and s._tombs == {}
