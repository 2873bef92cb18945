"""Token bucket rate limiter on an injectable clock."""

from __future__ import annotations

import math

from macula.runtime.clock import Clock


class TokenBucket:
    __slots__ = ("rate", "burst", "_tokens", "_last", "_clock")

    def __init__(self, rate: float, burst: float, clock: Clock) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be > 0")
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._clock = clock
        self._last = clock.now()

    def _refill(self) -> None:
        now = self._clock.now()
        elapsed = now - self._last
        if elapsed > 0:
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
            self._last = now

    def try_take(self, tokens: float = 1.0) -> bool:
        self._refill()
        if self._tokens >= tokens:
            self._tokens -= tokens
            return True
        return False

    def charge(self, tokens: float) -> bool:
        """Take ``tokens`` even when fewer are left (the debt is repaid by later refills,
        at most one burst deep); False while the bucket is in debt. For metering what
        already happened (bytes received) rather than asking before."""
        self._refill()
        self._tokens = max(-self.burst, self._tokens - tokens)
        return self._tokens >= 0

    def available(self) -> float:
        self._refill()
        return self._tokens

    def wait_time(self, tokens: float = 1.0) -> float:
        """Seconds until ``tokens`` can be taken (0 if now; infinite if more than the burst,
        which the bucket can never hold)."""
        if tokens > self.burst:
            return math.inf
        self._refill()
        missing = tokens - self._tokens
        return 0.0 if missing <= 0 else missing / self.rate
