"""Remote pub/sub interest through the DHT.

The original stored a subscription under the hash of its pattern, so a publisher that
looked up its topic never found wildcard patterns: wildcards only matched publishes
made at the subscriber's own home node. Here a node stores its patterns under the key of
their LITERAL PREFIX (the tokens before the first wildcard): "home.*.temp" and
"home.>" under "home", ">" under "". A publisher of "home.kitchen.temp" looks up every
prefix of its topic ("", "home", "home.kitchen", "home.kitchen.temp"), in parallel and
cached, and matches the patterns it finds against the topic. Every pattern that can
match the topic has a literal prefix that is a prefix of the topic, so nothing is
missed; a topic of depth d costs d+1 lookups when its cache is cold, none when warm.

Cache: a prefix's answer is kept ``cache_ttl`` seconds; a topic still in use is looked
up again in the background before that, so steady publishing never waits. A new
remote subscriber is seen within ``cache_ttl`` by nodes already publishing.

Inside a cluster (``ClusterInterest``) the members' subscriptions come from the cluster
state, replicated by gossip (macula.cluster): a member's new subscription is routed to
as soon as gossip brings it (tens of milliseconds), with no lookup. The router's view
of a node is then:

- a live member whose own state has reached this node (``ClusterService.synced``):
  the cluster's patterns only. The cluster is fresher than the DHT cache, so an
  unsubscribe there is obeyed at once, not when a cached DHT answer expires;
- any other node: what the DHT found, with what the cluster holds for it, if anything
  (a member whose metadata has not arrived yet).

Members still advertise in the DHT, for nodes outside the cluster. Publishes to a
topic whose DHT answer is not cached go at once to the synced members; the rest wait
for the lookup (pubsub/service.py).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Callable, Iterable

import msgpack

from macula.dht.ids import make_key
from macula.interest import RemotePattern
from macula.pubsub.topics import literal_prefix, validate_pattern
from macula.runtime.clock import MonotonicClock
from macula.runtime.ttlcache import TTLCache
from macula.wire.fields import ListOf, Opt, Str, Struct, U16, U32
from macula.wire.messages import DHT_VALUE_MAX, NAME_PATTERN

if TYPE_CHECKING:
    from macula.cluster.service import ClusterService
    from macula.dht.service import DhtService
    from macula.host import Host
    from macula.pubsub.router import PubSubRouter

View = dict[bytes, tuple[RemotePattern, ...]]

log = logging.getLogger("macula.pubsub")

_RECORD = Struct(Str(253, 1), U16, ListOf(Struct(Str(512, 1), Opt(Str(64, 1, pattern=NAME_PATTERN)),
                                                 U32), 1024))
DEBOUNCE = 0.05  # subscription bursts (a client subscribing to 50 patterns) -> one store


class DhtInterest:
    def __init__(self, host: "Host", router: "PubSubRouter", dht: "DhtService", *,
                 on_view: Callable[[View], None] | None = None, cache_ttl: float = 3.0,
                 record_ttl: int = 120, cache_entries: int = 4096) -> None:
        """``on_view``: given what the DHT taught after every change, instead of writing
        it into the router (ClusterInterest merges it with the cluster's view)."""
        self.host = host
        self.router = router
        self.dht = dht
        self.loop = host.loop
        self.realm = host.realm
        self.cache_ttl = cache_ttl
        self.record_ttl = record_ttl
        clock = MonotonicClock()  # the loop's clock: time.monotonic
        # prefix -> {node ID: patterns}; where each node listens goes to the address book
        self._prefixes: TTLCache[str, dict[bytes, tuple[RemotePattern, ...]]] = \
            TTLCache(cache_entries, cache_ttl, clock)
        self._ready: dict[str, float] = {}          # topic -> when its answer goes stale
        self._refreshing: set[str] = set()
        self._cache_entries = cache_entries
        self._advertised: dict[str, bytes] = {}     # our prefix -> value stored
        self._advertise_handle: asyncio.TimerHandle | None = None
        # what the DHT taught: node ID -> patterns; given to on_view instead of the router
        self.view: View = {}
        self.on_view = on_view
        self.stats = {"lookups": 0, "bad_records": 0, "stores": 0, "withdrawals": 0}

    # -- InterestSource ---------------------------------------------------------------
    def ready(self, topic: str) -> bool:
        stale_at = self._ready.get(topic)
        if stale_at is None:
            return False
        left = stale_at - self.loop.time()
        if left <= 0:
            return False
        if left < self.cache_ttl / 2 and topic not in self._refreshing:
            self._refreshing.add(topic)  # still in use: refresh before it goes stale
            self.host.spawn(self._refresh(topic))
        return True

    async def _refresh(self, topic: str) -> None:
        try:
            await self.resolve(topic, force=True)
        except Exception as exc:
            log.debug("background refresh of %r failed: %s", topic, exc)
        finally:
            self._refreshing.discard(topic)

    async def resolve(self, topic: str, force: bool = False) -> None:
        tokens = topic.split(".")
        prefixes = [""] + [".".join(tokens[:i]) for i in range(1, len(tokens) + 1)]
        missing = [p for p in prefixes if force or p not in self._prefixes]
        if missing:
            await asyncio.gather(*(self._fetch(p) for p in missing))
        stale_at = min((self.loop.time() + (self._prefixes.ttl_left(p) or 0.0)
                        for p in prefixes), default=0.0)
        ready = self._ready
        if len(ready) >= self._cache_entries:
            ready.clear()
        ready.pop(topic, None)
        ready[topic] = stale_at   # insertion order: the oldest answers come first
        now = self.loop.time()
        for _ in range(2):   # stale answers of topics nobody publishes to any more
            oldest = next(iter(ready))
            if ready[oldest] > now or oldest == topic:
                break
            del ready[oldest]
        self._rebuild()

    async def _fetch(self, prefix: str) -> None:
        self.stats["lookups"] += 1
        found = await self.dht.find_value(self._key(prefix))
        own = self.host.node_id
        nodes: dict[bytes, tuple[RemotePattern, ...]] = {}
        for record in found.records:
            if record.publisher == own:
                continue
            parsed = self._parse(record.value)
            if parsed is None:
                self.stats["bad_records"] += 1
                continue
            host, port, patterns = parsed
            self.host.reach.book.learn(record.publisher, (host, port))
            nodes[record.publisher] = patterns
        self._prefixes.set(prefix, nodes)

    @staticmethod
    def _parse(value: bytes) -> tuple[str, int, tuple[RemotePattern, ...]] | None:
        try:
            obj = msgpack.unpackb(value, use_list=False, raw=False)
            _RECORD(obj)
            patterns = tuple(RemotePattern(p, g, n) for p, g, n in obj[2])
            for rp in patterns:
                validate_pattern(rp.pattern)
        except Exception:  # FieldError, TopicError, msgpack errors: a bad record is skipped
            return None
        return obj[0], obj[1], patterns

    def direct_nodes(self) -> frozenset[bytes]:
        return frozenset()  # the DHT knows nobody without a lookup

    def _rebuild(self) -> None:
        """Each remote node's interest = its patterns under every prefix still cached."""
        union: dict[bytes, dict[RemotePattern, None]] = {}
        for prefix in self._prefixes:
            for node_id, patterns in (self._prefixes.get(prefix) or {}).items():
                union.setdefault(node_id, {}).update(dict.fromkeys(patterns))
        old, self.view = self.view, {node_id: tuple(p) for node_id, p in union.items()}
        if self.on_view is not None:
            self.on_view(self.view)
            return
        router = self.router   # the only source: the router holds exactly this
        for node_id in old:
            if node_id not in self.view:
                router.forget_remote(node_id)
        for node_id, patterns in self.view.items():
            router.set_remote(node_id, patterns)

    # -- our own subscriptions ----------------------------------------------------------
    def local_changed(self) -> None:
        if self._advertise_handle is None:
            self._advertise_handle = self.loop.call_later(DEBOUNCE, self._advertise_soon)

    def _advertise_soon(self) -> None:
        self._advertise_handle = None
        self.host.spawn(self._advertise())

    async def _advertise(self) -> None:
        by_prefix: dict[str, list] = {}
        for rp in self.router.local_patterns():
            prefix = literal_prefix(validate_pattern(rp.pattern))
            by_prefix.setdefault(prefix, []).append([rp.pattern, rp.group, rp.members])
        listen = self.host.advertise
        ops = []
        for prefix, patterns in by_prefix.items():
            value = msgpack.packb([listen[0], listen[1], patterns], use_bin_type=True)
            while len(value) > DHT_VALUE_MAX and patterns:
                patterns.pop()  # keep the record storable; the rest stay node-local
                log.warning("subscriptions under %r exceed one DHT record; some are "
                            "only reachable from this node", prefix)
                value = msgpack.packb([listen[0], listen[1], patterns], use_bin_type=True)
            if self._advertised.get(prefix) != value:
                self._advertised[prefix] = value
                self.stats["stores"] += 1
                ops.append(self.dht.store(self._key(prefix), value, self.record_ttl))
        for prefix in [p for p in self._advertised if p not in by_prefix]:
            del self._advertised[prefix]
            self.stats["withdrawals"] += 1
            ops.append(self.dht.withdraw(self._key(prefix)))
        for result in await asyncio.gather(*ops, return_exceptions=True):
            if isinstance(result, Exception):
                log.info("advertising subscriptions failed: %s", result)

    def _key(self, prefix: str) -> bytes:
        return make_key(self.realm, "sub:" + prefix)

    def status(self) -> dict[str, Any]:
        return {**self.stats, "cached_prefixes": len(self._prefixes),
                "advertised_prefixes": len(self._advertised)}


class ClusterInterest:
    """InterestSource: the cluster state for the members of this node's cluster, the
    DHT (a DhtInterest it drives) for everyone else; see the module docstring."""

    def __init__(self, host: "Host", router: "PubSubRouter", cluster: "ClusterService",
                 dht: Callable[[Callable[[View], None]], DhtInterest]) -> None:
        """``dht(on_view)`` makes the DhtInterest this one drives, reporting to ``on_view``."""
        self.host = host
        self.router = router
        self.cluster = cluster
        self.dht = dht(self._on_dht_view)
        self.stats = self.dht.stats     # lookups, stores, ...: the DHT's work
        self._cluster_view: View = dict(cluster.remote_subscriptions())
        self._push_handle: asyncio.Handle | None = None
        cluster.on_subscriptions_changed(self._on_cluster_changes)
        cluster.on_state_changed(self._on_cluster_state)
        self._apply(self._cluster_view)

    # -- InterestSource ---------------------------------------------------------------
    def ready(self, topic: str) -> bool:
        return self.dht.ready(topic)

    async def resolve(self, topic: str) -> None:
        await self.dht.resolve(topic)

    def direct_nodes(self) -> set[bytes]:
        return self.cluster.synced()

    def local_changed(self) -> None:
        self.dht.local_changed()
        if self._push_handle is None:   # one update per burst handled in one loop pass
            self._push_handle = self.dht.loop.call_soon(self._push)

    # -- the two sources ----------------------------------------------------------------
    def _push(self) -> None:
        self._push_handle = None
        self.cluster.set_local_subscriptions(self.router.local_patterns())

    def _on_cluster_changes(self, changes: dict[bytes, tuple[RemotePattern, ...]]) -> None:
        for node_id, patterns in changes.items():
            if patterns:
                self._cluster_view[node_id] = patterns
            else:
                self._cluster_view.pop(node_id, None)
        self._apply(changes)

    def _on_cluster_state(self, name: str) -> None:
        if name == "nodes":   # a member's metadata arrived: it may be synced now
            self._apply(self.dht.view)

    def _on_dht_view(self, view: dict[bytes, tuple[RemotePattern, ...]]) -> None:
        # the nodes it names now, and those it named before (still in the router)
        self._apply(view.keys() | set(self.router.remote_nodes()))

    def _apply(self, nodes: Iterable[bytes]) -> None:
        """Write the merged interest of ``nodes`` into the router."""
        router = self.router
        synced = self.cluster.synced()
        dht = self.dht.view
        for node_id in nodes:
            mine = self._cluster_view.get(node_id, ())
            if node_id in synced:
                patterns = mine
            else:
                theirs = dht.get(node_id, ())
                patterns = tuple(dict.fromkeys(mine + theirs)) if mine and theirs else mine or theirs
            router.set_remote(node_id, patterns)   # empty: forgotten
