"""Failed authentications per source address (sans-IO but for its injected clock).

A source that fails ``limit`` handshakes' authentication (no or a bad realm credential,
a forged identity, a changed pinned key, a rejected certificate) within ``window``
seconds has its next CONNECTs refused at once with RATE_LIMITED, before any signature
is checked, until the window ends: a stranger guessing at a closed realm costs the node
a dictionary lookup, not Ed25519 verifications. Counted per address, not per realm, so
one stranger cannot lock everybody out; a site behind one NAT address shares a count,
which its own nodes' slow retries of a refusal (one a minute) never reach. The table
holds at most ``max_sources`` addresses (the oldest window is forgotten first).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Callable

from macula.errors import ErrorCode

AUTH_FAILURES = frozenset({ErrorCode.CREDENTIAL_INVALID, ErrorCode.IDENTITY_INVALID,
                           ErrorCode.PEER_KEY_CHANGED, ErrorCode.CERT_REJECTED})


class FailedAuth:
    def __init__(self, limit: int = 5, window: float = 60.0, max_sources: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 1 or window <= 0 or max_sources < 1:
            raise ValueError("limit, window and max_sources must be positive")
        self.limit = limit
        self.window = window
        self.max_sources = max_sources
        self.clock = clock
        self._sources: OrderedDict[str, list] = OrderedDict()   # host -> [window start, n]
        self.failures = 0
        self.refused = 0            # CONNECTs refused early

    def blocked(self, host: str) -> bool:
        entry = self._sources.get(host)
        if entry is None:
            return False
        if self.clock() - entry[0] >= self.window:
            del self._sources[host]
            return False
        if entry[1] >= self.limit:
            self.refused += 1
            return True
        return False

    def failed(self, host: str) -> None:
        self.failures += 1
        now = self.clock()
        entry = self._sources.get(host)
        if entry is None or now - entry[0] >= self.window:
            self._sources.pop(host, None)
            self._sources[host] = [now, 1]
            while len(self._sources) > self.max_sources:
                self._sources.popitem(last=False)
        else:
            entry[1] += 1

    def __len__(self) -> int:
        return len(self._sources)
