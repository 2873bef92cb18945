"""DHT settings: sizes, timers and the bounds of everything that grows.

The node builds one from its configuration, whose bounds default from the hardware
profile; nothing here reads the config or the hardware itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from macula.wire.messages import DHT_VALUE_MAX

RECORD_OVERHEAD = 48   # publisher, ttl and msgpack framing of one record, roughly


@dataclass(frozen=True)
class DhtConfig:
    k: int = 20                           # bucket size and replication factor
    alpha: int = 3                        # queries in flight per lookup
    rpc_timeout: float = 5.0              # the original's DHT timeout
    lookup_retries: int = 1               # a lookup re-sends a timed-out query this often
    max_ops: int = 64                     # concurrent operations (half for maintenance)
    max_events: int = 1024
    max_records: int = 10_000             # records held for others, tombstones included
    max_records_per_publisher: int = 256
    max_bytes_per_publisher: int = 256 << 10
    max_published: int = 256              # own records kept alive by republishing
    max_ttl: float = 86_400.0
    max_message_bytes: int = 64 << 10     # records per FIND_VALUE_REPLY / STORE
    value_quorum: int = 2                 # holders to hear from before find_value stops
    probe_after: float = 60.0             # ping pacing of full buckets (routing.py)
    maintenance_interval: float = 60.0    # expiry sweep, stale buckets, replication
    refresh_interval: float = 3600.0      # a bucket without activity this long is refreshed
    replicate_interval: float = 3600.0    # holders re-store records nobody refreshed
    republish_ratio: float = 0.8          # publishers re-store at this fraction of the TTL

    def __post_init__(self) -> None:
        for name in ("k", "alpha", "max_events", "max_published", "value_quorum"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.lookup_retries < 0:
            raise ValueError("lookup_retries must be >= 0")
        if self.max_ops < 2:
            raise ValueError("max_ops must be >= 2 (half is kept for the application)")
        if min(self.rpc_timeout, self.maintenance_interval, self.refresh_interval,
               self.replicate_interval) <= 0:
            raise ValueError("intervals and timeouts must be > 0")
        if not 0 < self.republish_ratio < 1:
            raise ValueError("republish_ratio must be in (0, 1)")
        if self.max_message_bytes < DHT_VALUE_MAX + RECORD_OVERHEAD:
            raise ValueError(f"max_message_bytes must hold one record ({DHT_VALUE_MAX} B)")
