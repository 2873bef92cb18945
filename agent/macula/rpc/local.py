"""Procedures this node's clients registered (sans-IO): who serves what here, bounded
per client. Shared by the RPC service (which calls them) and the provider sources (which
advertise them to the cluster and the DHT)."""

from __future__ import annotations

from typing import Sequence


class LocalProcedures:
    def __init__(self, max_per_client: int = 256) -> None:
        self.max_per_client = max_per_client
        self._providers: dict[str, list[bytes]] = {}   # procedure -> client node IDs
        self._by_client: dict[bytes, set[str]] = {}

    def has(self, client: bytes, procedure: str) -> bool:
        return procedure in self._by_client.get(client, ())

    def register(self, client: bytes, procedure: str) -> bool:
        """Add ``client`` as a provider; False when it holds its maximum already."""
        procs = self._by_client.setdefault(client, set())
        if procedure in procs:
            return True
        if len(procs) >= self.max_per_client:
            if not procs:
                del self._by_client[client]
            return False
        procs.add(procedure)
        self._providers.setdefault(procedure, []).append(client)
        return True

    def unregister(self, client: bytes, procedure: str) -> bool:
        """Remove one registration; True when ``procedure`` has no provider here now."""
        procs = self._by_client.get(client)
        if not procs or procedure not in procs:
            return False
        procs.discard(procedure)
        if not procs:
            del self._by_client[client]
        providers = self._providers.get(procedure, [])
        if client in providers:
            providers.remove(client)
        if providers:
            return False
        self._providers.pop(procedure, None)
        return True

    def drop_client(self, client: bytes) -> list[str]:
        """A client went away: the procedures nobody here serves any more."""
        return [p for p in sorted(self._by_client.get(client, ())) if self.unregister(client, p)]

    def providers(self, procedure: str) -> Sequence[bytes]:
        return self._providers.get(procedure, ())

    def procedures(self) -> list[str]:
        return sorted(self._providers)
