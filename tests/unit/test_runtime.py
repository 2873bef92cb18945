"""Runtime primitives at their bounds, driven by a ManualClock (no sleeps)."""

import math
import random

import pytest

from macula.errors import ErrorCode, Overloaded
from macula.runtime import (
    Backoff, BoundedPool, ManualClock, MonotonicClock, PoolFull, TokenBucket, TTLCache,
)


# ---- clock --------------------------------------------------------------------------
def test_manual_clock_moves_only_forward():
    clock = ManualClock(10.0)
    assert clock.now() == 10.0
    assert clock.advance(2.5) == 12.5 and clock.now() == 12.5
    clock.set(20.0)
    assert clock.now() == 20.0
    with pytest.raises(ValueError):
        clock.advance(-0.1)
    with pytest.raises(ValueError):
        clock.set(19.0)
    assert clock.now() == 20.0


def test_monotonic_clock_does_not_go_backwards():
    clock = MonotonicClock()
    a, b = clock.now(), clock.now()
    assert b >= a


# ---- BoundedPool --------------------------------------------------------------------
def filled_pool(n: int = 3, **kw) -> tuple[BoundedPool, ManualClock]:
    clock = ManualClock()
    pool = BoundedPool(n, clock, **kw)
    for i in range(n):
        assert pool.put(f"k{i}", i) == []
        clock.advance(1)
    return pool, clock


def test_pool_rejects_zero_capacity():
    with pytest.raises(ValueError):
        BoundedPool(0, ManualClock())


def test_pool_never_exceeds_capacity_and_evicts_lru_first():
    pool, _ = filled_pool(3)
    assert len(pool) == 3
    assert pool.put("new", 9) == [("k0", 0)]
    assert len(pool) == 3 and "k0" not in pool
    assert list(pool) == ["k1", "k2", "new"]


def test_pool_get_and_touch_refresh_lru_order_but_peek_does_not():
    pool, _ = filled_pool(3)
    assert pool.get("k0") == 0          # k0 becomes most recent
    assert pool.peek("k1") == 1         # no effect on order
    pool.touch("k1")
    assert list(pool) == ["k2", "k0", "k1"]
    assert pool.put("new", 9) == [("k2", 2)]
    assert pool.get("absent") is None and pool.peek("absent") is None


def test_pool_replacing_a_key_evicts_nothing_and_moves_it_to_the_end():
    pool, _ = filled_pool(3)
    assert pool.put("k0", 100) == []
    assert len(pool) == 3 and pool.peek("k0") == 100
    assert list(pool) == ["k1", "k2", "k0"]


def test_pool_skips_entries_that_are_not_evictable():
    pool, _ = filled_pool(3)
    busy = {"k0", "k1"}
    evicted = pool.put("new", 9, evictable=lambda k, v: k not in busy)
    assert evicted == [("k2", 2)]
    assert set(pool) == {"k0", "k1", "new"}


def test_pool_full_when_nothing_is_evictable():
    pool, _ = filled_pool(3)
    with pytest.raises(PoolFull) as info:
        pool.put("new", 9, evictable=lambda k, v: False)
    assert isinstance(info.value, Overloaded) and info.value.code is ErrorCode.OVERLOADED
    assert len(pool) == 3 and "new" not in pool  # nothing changed
    assert pool.put("k1", 11, evictable=lambda k, v: False) == []  # replacing needs no room


def test_pool_expires_idle_entries_in_lru_order():
    pool, clock = filled_pool(3, idle_ttl=10.0)   # k0 at t=0, k1 at t=1, k2 at t=2
    clock.set(10.0)
    assert pool.expire_idle() == [("k0", 0)]      # idle for exactly 10 s
    pool.get("k1")                                # used at t=10
    clock.set(12.5)
    assert pool.expire_idle() == [("k2", 2)]
    assert list(pool) == ["k1"]
    clock.set(20.0)
    assert pool.expire_idle() == [("k1", 1)] and len(pool) == 0


def test_pool_without_idle_ttl_never_expires():
    pool, clock = filled_pool(2)
    clock.advance(1e9)
    assert pool.expire_idle() == [] and len(pool) == 2


def test_pool_pop_and_items():
    pool, _ = filled_pool(2)
    assert pool.items() == [("k0", 0), ("k1", 1)]
    assert pool.pop("k0") == 0 and pool.pop("k0") is None
    assert pool.put("k2", 2) == []  # room again, nothing evicted


# ---- TTLCache -----------------------------------------------------------------------
def test_cache_rejects_bad_bounds():
    for args in ((0, 1.0), (1, 0.0), (1, -1.0)):
        with pytest.raises(ValueError):
            TTLCache(*args, clock=ManualClock())


def test_cache_is_bounded_lru_and_counts_evictions():
    clock = ManualClock()
    cache = TTLCache(3, 60.0, clock)
    for i in range(3):
        cache.set(i, f"v{i}")
    assert cache.get(0) == "v0"       # 0 becomes most recent
    cache.set(3, "v3")                # evicts 1, the least recently used
    cache.set(4, "v4")                # evicts 2
    assert len(cache) == 3 and cache.evictions == 2
    assert list(cache) == [0, 3, 4]
    assert cache.get(1) is None and cache.get(2, "dflt") == "dflt"
    cache.set(0, "again")             # replacing never evicts
    assert cache.evictions == 2 and len(cache) == 3


def test_cache_never_returns_expired_entries():
    clock = ManualClock()
    cache = TTLCache(10, 5.0, clock)
    cache.set("a", 1)
    cache.set("b", 2, ttl=20.0)
    clock.advance(4.999)
    assert cache.get("a") == 1 and cache.ttl_left("a") == pytest.approx(0.001)
    clock.advance(0.001)              # exactly at expiry: gone
    assert cache.get("a") is None and "a" not in cache and cache.ttl_left("a") is None
    assert cache.expirations == 1
    assert "b" in cache and list(cache) == ["b"]
    clock.advance(15.0)
    assert list(cache) == [] and cache.ttl_left("b") is None and cache.get("b", 0) == 0


def test_cache_non_positive_ttl_deletes():
    cache = TTLCache(10, 5.0, ManualClock())
    cache.set("a", 1)
    cache.set("a", 2, ttl=0)
    assert cache.get("a") is None and len(cache) == 0


def test_cache_sweep_reclaims_only_expired_entries():
    clock = ManualClock()
    cache = TTLCache(100, 10.0, clock)
    for i in range(50):
        cache.set(i, i, ttl=1.0 + i)   # i expires at t = 1 + i
    clock.set(10.0)                    # 0..9 are expired
    assert len(cache) == 50            # not yet reclaimed
    assert cache.sweep() == 10
    assert len(cache) == 40 and cache.expirations == 10 and cache.evictions == 0
    assert cache.sweep() == 0
    assert sorted(cache) == list(range(10, 50))


def test_cache_pop_and_clear():
    cache = TTLCache(4, 5.0, ManualClock())
    cache.set("a", 1)
    assert cache.pop("a") == 1 and cache.pop("a", "x") == "x"
    cache.set("b", 2)
    cache.clear()
    assert len(cache) == 0


# ---- TokenBucket --------------------------------------------------------------------
def test_bucket_rejects_bad_parameters():
    for rate, burst in ((0, 1), (1, 0), (-1, 5)):
        with pytest.raises(ValueError):
            TokenBucket(rate, burst, ManualClock())


def test_bucket_allows_a_burst_then_refuses():
    bucket = TokenBucket(rate=2.0, burst=5, clock=ManualClock())
    assert [bucket.try_take() for _ in range(6)] == [True] * 5 + [False]
    assert bucket.available() == 0


def test_bucket_refills_at_its_rate_up_to_the_burst():
    clock = ManualClock()
    bucket = TokenBucket(rate=2.0, burst=5, clock=clock)
    for _ in range(5):
        bucket.try_take()
    clock.advance(1.0)
    assert bucket.available() == pytest.approx(2.0)
    assert bucket.try_take(2) and not bucket.try_take(0.5)
    clock.advance(100.0)
    assert bucket.available() == 5    # capped at burst
    assert bucket.try_take(5) and not bucket.try_take()


def test_bucket_wait_time_is_exact():
    clock = ManualClock()
    bucket = TokenBucket(rate=4.0, burst=2, clock=clock)
    assert bucket.wait_time() == 0.0
    bucket.try_take(2)
    assert bucket.wait_time() == pytest.approx(0.25)
    assert bucket.wait_time(2) == pytest.approx(0.5)
    clock.advance(bucket.wait_time(2))
    assert bucket.try_take(2)


def test_bucket_wait_time_beyond_the_burst_is_infinite():
    """A request larger than the bucket can never be served: waiting must not be promised."""
    bucket = TokenBucket(rate=1.0, burst=3, clock=ManualClock())
    assert math.isinf(bucket.wait_time(4))
    assert bucket.wait_time(3) == 0.0


# ---- Backoff ------------------------------------------------------------------------
def test_backoff_rejects_bad_bounds():
    for base, cap in ((0, 1), (-1, 1), (2, 1)):
        with pytest.raises(ValueError):
            Backoff(base, cap)


def test_backoff_grows_doubles_and_caps_with_jitter_in_range():
    backoff = Backoff(base=0.5, cap=8.0, rng=random.Random(1))
    ceilings = [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    for attempt, ceiling in enumerate(ceilings):
        assert backoff.attempts == attempt
        delays = []
        for _ in range(200):   # many draws of the same attempt
            backoff.attempts = attempt
            delays.append(backoff.next_delay())
        assert all(0.25 <= d <= ceiling for d in delays), (attempt, min(delays), max(delays))
        assert max(delays) > 0.9 * ceiling and min(delays) < 0.25 + 0.1 * (ceiling - 0.25)
        backoff.attempts = attempt + 1


def test_backoff_stays_bounded_after_many_attempts_and_resets():
    backoff = Backoff(base=1.0, cap=30.0, rng=random.Random(7))
    for _ in range(1000):
        assert 0.5 <= backoff.next_delay() <= 30.0
    assert backoff.attempts == 1000
    backoff.reset()
    assert backoff.attempts == 0 and 0.5 <= backoff.next_delay() <= 1.0


def test_backoff_with_equal_base_and_cap_is_constant_range():
    backoff = Backoff(base=2.0, cap=2.0, rng=random.Random(3))
    assert all(1.0 <= backoff.next_delay() <= 2.0 for _ in range(50))


def test_backoff_jitter_is_reproducible_with_a_seeded_rng():
    a = Backoff(rng=random.Random(42))
    b = Backoff(rng=random.Random(42))
    assert [a.next_delay() for _ in range(10)] == [b.next_delay() for _ in range(10)]


# ---- outbox byte bounds (transport/outbox.py) -----------------------------------------
class _FullSession:
    """A session whose send buffer is full: every frame has to wait in the outbox."""

    def __init__(self) -> None:
        from macula.transport.session import State

        self.state = State.ESTABLISHED

    def send_frame(self, frame: bytes) -> bool:
        return False

    def too_large(self, size: int) -> bool:
        return False


def test_outbox_drops_oldest_past_its_own_bound_and_the_node_budget():
    import asyncio

    from macula.transport.outbox import ByteBudget, Outbox

    async def scenario():
        budget = ByteBudget(limit=250)
        a = Outbox(_FullSession(), max_bytes=100, budget=budget)
        b = Outbox(_FullSession(), max_bytes=1000, budget=budget)
        for i in range(5):
            a.put(bytes([i]) * 30)             # 150 bytes into a 100-byte queue
        assert a.queued_bytes == 90 and a.dropped == 2 and len(a) == 3
        assert list(a._queue)[0] == bytes([2]) * 30  # the oldest went first
        for i in range(6):
            b.put(bytes([i]) * 30)             # node budget 250: b may hold 160 more
        assert budget.used <= 250 and b.dropped == 1 and a.dropped == 2  # a is untouched
        a.close()
        b.close()
        assert budget.used == 0 and a.dropped == 5 and b.dropped == 6

    asyncio.run(scenario())


def test_ttl_cache_written_to_shrinks_back_to_its_live_entries_without_a_sweep():
    clock = ManualClock()
    cache = TTLCache(10_000, 1.0, clock)
    for i in range(1000):   # churn: names used once (per-cycle topics, procedures)
        cache.set(f"old-{i}", i)
    clock.advance(2.0)      # all of them expired, nobody reads them
    for i in range(600):
        cache.set(f"new-{i}", i)
    # every insert took up to two expired entries with it: 1000 old ones gone in 500
    assert len(cache) == 600 and cache.expirations == 1000
    assert all(cache.get(f"new-{i}") == i for i in range(600))
