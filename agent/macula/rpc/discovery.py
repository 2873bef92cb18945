"""RPC providers found through the DHT's service registry (service "rpc.<procedure>").

A node advertises each procedure its clients registered while at least one client
serves it, and withdraws it when the last one leaves. Callers cache what discovery
found for ``cache_ttl`` seconds; an empty answer is cached for less, so a provider
that appears is found quickly while "no responders" stays cheap.

Inside a cluster (``ClusterProviders``) the members' registrations come from the
cluster state, replicated by gossip (macula.cluster): a caller takes the members that
serve a procedure at once, with no lookup, and asks the DHT only when no member does.
A synced member (``ClusterService.synced``) that the cluster does not list is not
taken from a DHT answer either: it unregistered, and its record has not gone yet.
Members still advertise in the DHT, for nodes outside the cluster.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from macula.rpc.names import SERVICE_PREFIX
from macula.runtime.clock import MonotonicClock
from macula.runtime.ttlcache import TTLCache

if TYPE_CHECKING:
    from macula.cluster.service import ClusterService
    from macula.dht.service import DhtService
    from macula.host import Host
    from macula.rpc.local import LocalProcedures

log = logging.getLogger("macula.rpc")

GONE_BACKOFF = 10.0  # a provider whose node went away is not offered this long


class DhtProviders:
    def __init__(self, host: "Host", dht: "DhtService", *, cache_ttl: float = 5.0,
                 empty_ttl: float = 0.5, advertise_ttl: int = 120, cache_entries: int = 4096) -> None:
        self.host = host
        self.dht = dht
        self.empty_ttl = empty_ttl
        self.advertise_ttl = advertise_ttl
        clock = MonotonicClock()
        self._cache: TTLCache[str, list[bytes]] = TTLCache(cache_entries, cache_ttl, clock)
        self._unreachable: TTLCache[bytes, bool] = TTLCache(cache_entries, GONE_BACKOFF,
                                                            clock)
        self.stats = {"discoveries": 0, "advertised": 0, "withdrawn": 0}

    def cached(self, procedure: str) -> list[bytes] | None:
        found = self._cache.get(procedure)
        if not found:  # unknown (None) or nobody: nothing to filter
            return found
        return [n for n in found if n not in self._unreachable]

    def forget(self, node_id: bytes) -> None:
        """A provider's node went away: do not offer it for GONE_BACKOFF seconds."""
        self._unreachable.set(node_id, True)

    def returned(self, node_id: bytes) -> None:
        """A session with that node is up again (it restarted, or the path healed): offer
        it at once; waiting out GONE_BACKOFF left its returning providers unreachable."""
        self._unreachable.pop(node_id)

    async def discover(self, procedure: str) -> list[bytes]:
        self.stats["discoveries"] += 1
        providers = await self.dht.discover(SERVICE_PREFIX + procedure)
        own = self.host.node_id
        found = []
        for p in providers:
            if p.node_id != own:
                self.host.reach.book.learn(p.node_id, (p.host, p.port))
                found.append(p.node_id)
        self._cache.set(procedure, found, None if found else self.empty_ttl)
        return [n for n in found if n not in self._unreachable]

    def local_changed(self, procedure: str, served: bool) -> None:
        self.host.spawn(self._publish(procedure, served))

    async def _publish(self, procedure: str, served: bool) -> None:
        try:
            if served:
                self.stats["advertised"] += 1
                await self.dht.advertise(SERVICE_PREFIX + procedure, {}, self.advertise_ttl)
            else:
                self.stats["withdrawn"] += 1
                await self.dht.withdraw_service(SERVICE_PREFIX + procedure)
        except Exception as exc:
            log.info("%s %s in the DHT failed: %s", "advertising" if served else "withdrawing",
                     procedure, exc)


class ClusterProviders:
    """ProviderSource: cluster members that serve a procedure first (the cluster
    state, no lookup), else what the DHT (a DhtProviders it drives) finds."""

    def __init__(self, host: "Host", local: "LocalProcedures", dht: DhtProviders,
                 cluster: "ClusterService") -> None:
        self.host = host
        self.local = local
        self.dht = dht
        self.cluster = cluster
        self.stats = dht.stats   # discoveries, advertised, withdrawn: the DHT's work

    def cached(self, procedure: str) -> list[bytes] | None:
        members = self._members(procedure)
        if members:
            return members
        found = self.dht.cached(procedure)
        return found if not found else self._outsiders(found)

    async def discover(self, procedure: str) -> list[bytes]:
        members = self._members(procedure)
        if members:
            return members
        found = await self.dht.discover(procedure)
        return self._outsiders(found) if found else found

    def local_changed(self, procedure: str, served: bool) -> None:
        self.dht.local_changed(procedure, served)
        self.cluster.set_local_procedures(set(self.local.procedures()))

    def forget(self, node_id: bytes) -> None:
        self.dht.forget(node_id)   # cluster members leave the views by membership

    def returned(self, node_id: bytes) -> None:
        self.dht.returned(node_id)

    def _members(self, procedure: str) -> list[bytes]:
        # a member whose dial failed is skipped during its backoff (the cluster may not
        # know yet)
        reach = self.host.reach
        return [n for n in self.cluster.providers(procedure) if not reach.backing_off(n)]

    def _outsiders(self, nodes: list[bytes]) -> list[bytes]:
        synced = self.cluster.synced()
        return [n for n in nodes if n not in synced]
