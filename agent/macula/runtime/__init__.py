"""Bounded runtime primitives driven by an injectable clock."""

from macula.runtime.backoff import Backoff
from macula.runtime.clock import Clock, ManualClock, MonotonicClock
from macula.runtime.pool import BoundedPool, PoolFull
from macula.runtime.ratelimit import TokenBucket
from macula.runtime.ttlcache import TTLCache

__all__ = ["Backoff", "BoundedPool", "Clock", "ManualClock", "MonotonicClock", "PoolFull",
           "TTLCache", "TokenBucket"]
